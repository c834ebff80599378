"""Quality on data whose tastes are known: generated MovieLens-shaped data (planted genre and latent tastes,
Zipf popularity, release dates and recency of attention). The served pipeline, evaluated through its offline
replay, must find what warm users go on to like better than a tuned EASE: recall@50 >= 1.2 x EASE's."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import copy_workdir

pytestmark = pytest.mark.slow


def test_pipeline_beats_tuned_ease_on_planted_tastes(synthetic_trained: Path, tmp_path: Path) -> None:
    from training.evaluate import evaluate

    workdir = copy_workdir(synthetic_trained, tmp_path / "workdir")
    metrics = evaluate(workdir, leave_last_out_protocol=False)
    warm = metrics["warm"]
    assert warm["pipeline"]["users"] >= 15, "enough warm users for the comparison to mean something"
    goal = metrics["goals"]["warm_recall@50_vs_ease"]
    assert goal["pipeline"] == warm["pipeline"]["recall@50"] and goal["ease"] == warm["ease"]["recall@50"]
    assert goal["ratio"] >= 1.2, goal
    for baseline in ("ease", "implicit_als", "recent_popularity"):
        assert warm["pipeline"]["ndcg@10"] > warm[baseline]["ndcg@10"], (baseline, warm)
