"""`starling evaluate`: clear errors on missing inputs, the report's sections and table, and a run through the
CLI on synthetic data whose numbers must be consistent with the replayed pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from starling.cli import cli
from starling.errors import StarlingError
from training.evaluate import BASELINES, METRICS, SEGMENTS, evaluate, format_table


def test_missing_features_say_which_command_to_run(tmp_path: Path) -> None:
    with pytest.raises(StarlingError, match="starling features build"):
        evaluate(tmp_path)


def test_missing_catalog_says_to_ingest_first(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.mkdir()
    (features / "split.json").write_text("{}")
    with pytest.raises(StarlingError, match="starling data ingest"):
        evaluate(tmp_path)


def test_missing_artifact_says_to_train_first(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.mkdir()
    (features / "split.json").write_text("{}")
    pl.DataFrame({"movie_id": [1]}).write_parquet(tmp_path / "movies.parquet")
    with pytest.raises(StarlingError, match="starling train"):
        evaluate(tmp_path)


def _segment(ndcg: dict[str, float], users: int) -> dict[str, dict[str, float]]:
    return {
        name: {**dict.fromkeys(METRICS, value), "ndcg@10": value, "users": users}
        for name, value in ndcg.items()
    }


def test_format_table_shows_segments_intervals_coverage_stages_and_goals() -> None:
    metrics = {
        "protocol": "time",
        "cutoffs": {"valid": "2016-01-01", "test": "2017-01-01"},
        "artifact": {"serving_model": "rank_mlp", "version": "v"},
        "all": _segment({"pipeline": 0.40, "recent_popularity": 0.37, "popularity": 0.29}, 10),
        "warm": _segment({"pipeline": 0.30, "recent_popularity": 0.22, "popularity": 0.10}, 4),
        "cold": _segment({"pipeline": 0.45, "recent_popularity": 0.45, "popularity": 0.40}, 6),
        "intervals": {
            "recent_popularity": {s: {"difference": 0.03, "low": 0.01, "high": 0.05} for s in SEGMENTS},
        },
        "coverage": {"all": {"ease": 0.1, "union": 0.5}, "warm": {"ease": 0.2, "union": 0.5}, "candidates_per_user": 500},
        "stages": {s: {"recall_order": 0.2, "ranker_order": 0.3, "served": 0.3, "ranker_auc": 0.7} for s in ("all", "warm")},
        "goals": {
            "all": {"metric": "ndcg@10 (all users)", "pipeline": 0.40, "best_baseline": "recent_popularity", "best_baseline_value": 0.37, "ratio": 1.081, "target_ratio": 1.05, "interval_low": 0.01, "met": True},
            "warm": {"metric": "ndcg@10 (warm users)", "pipeline": 0.30, "best_baseline": "recent_popularity", "best_baseline_value": 0.22, "ratio": 1.364, "target_ratio": 1.2, "met": True},
        },
    }  # fmt: skip
    text = format_table(metrics)
    lines = text.splitlines()
    assert lines[0].startswith("protocol: time") and "serving model rank_mlp" in lines[0]
    warm = lines.index("warm users (4)")
    assert lines[warm + 2].split()[0] == "pipeline", "best first"
    assert "+0.0300 [+0.0100, +0.0500]" in text
    assert "x1.081 (goal x1.05, interval low +0.0100 > 0): met" in text


@pytest.mark.slow
def test_evaluate_through_the_cli_on_synthetic_data(synthetic_features: Path, tmp_path: Path) -> None:
    from conftest import copy_workdir

    from training.artifacts import load_artifact, resolve_artifact

    workdir = copy_workdir(synthetic_features, tmp_path / "workdir")
    runner = CliRunner()
    trained = runner.invoke(
        cli, ["train", str(workdir), "--windows", "3", "--step-days", "120", "--epochs", "3"]
    )
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(cli, ["evaluate", str(workdir), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {
        "all",
        "warm",
        "cold",
        "coverage",
        "intervals",
        "stages",
        "goals",
        "tuning",
        "leave_last_out",
    } <= set(metrics)
    methods = {"pipeline", *BASELINES}
    for segment in SEGMENTS:
        assert set(metrics[segment]) == methods
        for name, row in metrics[segment].items():
            assert 0.0 <= row["ndcg@10"] <= 1.0 and row["recall@50"] >= row["recall@10"], (segment, name)
    users = {s: metrics[s]["pipeline"]["users"] for s in SEGMENTS}
    assert users["all"] == users["warm"] + users["cold"] > 0
    # all users = the user-weighted mean of warm and cold
    for name in methods:
        mixed = (
            metrics["warm"][name]["ndcg@10"] * users["warm"]
            + metrics["cold"][name]["ndcg@10"] * users["cold"]
        ) / users["all"]
        assert metrics["all"][name]["ndcg@10"] == pytest.approx(mixed)
    # personalised baselines share the tuned recent popularity for cold users
    cold = {
        name: metrics["cold"][name]["ndcg@10"]
        for name in ("recent_popularity", "ease", "implicit_als", "item_knn")
    }
    assert len(set(cold.values())) == 1
    for name, segments in metrics["intervals"].items():
        assert name in BASELINES
        for interval in segments.values():
            if not math.isnan(interval["difference"]):
                assert interval["low"] <= interval["difference"] <= interval["high"]
    expected_difference = metrics["all"]["pipeline"]["ndcg@10"] - metrics["all"]["ease"]["ndcg@10"]
    assert metrics["intervals"]["ease"]["all"]["difference"] == pytest.approx(expected_difference)
    assert metrics["coverage"]["all"]["union"] >= max(
        v for k, v in metrics["coverage"]["all"].items() if k != "union"
    )
    assert metrics["stages"]["all"]["served"] == pytest.approx(metrics["all"]["pipeline"]["ndcg@10"])
    for name in BASELINES:
        grid = metrics["tuning"][name]["grid"]
        assert metrics["tuning"][name]["valid_ndcg@10"] == max(point["valid_ndcg@10"] for point in grid)
    assert metrics["goals"]["all"]["best_baseline"] in BASELINES and "met" in metrics["goals"]["warm"]
    assert metrics["leave_last_out"]["all"]["pipeline"]["users"] > 0
    artifact = load_artifact(resolve_artifact(workdir))
    assert metrics["artifact"]["version"] == artifact.version
    written = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert written["all"] == metrics["all"]
    table = runner.invoke(cli, ["evaluate", str(workdir)])
    assert table.exit_code == 0 and "warm users" in table.output and "goals" in table.output
    picture = workdir / "reports" / "evaluation.png"
    assert str(picture) in table.output and picture.read_bytes()[:4] == b"\x89PNG"
    assert np.isfinite(metrics["stages"]["warm"]["ranker_auc"])
