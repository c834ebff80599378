"""The offline pipeline on generated data (the demo's fallback when MovieLens is unavailable):
ingest synthetic -> features -> train -> evaluate, through the CLI as a user runs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from starling.cli import cli


@pytest.mark.slow
def test_cli_pipeline_on_synthetic_data(tmp_path: Path) -> None:
    workdir = str(tmp_path / "syn")
    runner = CliRunner()
    for args in (
        ["data", "ingest", "synthetic:30000", "--out", workdir],
        ["features", "build", workdir],
        ["train", workdir, "--model", "embedding_mlp", "--epochs", "3"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, f"{args}: {result.output}"
    assert "published as current" in result.output

    result = runner.invoke(cli, ["evaluate", workdir, "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert {"embedding_mlp", "lightgbm", "popularity"} <= set(metrics["ranking"])
    assert {"item2vec", "two_tower", "pipeline", "popularity", "implicit_als"} <= set(metrics["retrieval"])
    values = [
        v for group in ("ranking", "retrieval") for row in metrics[group].values() for v in row.values()
    ]
    assert all(math.isfinite(v) for v in values)
    # the planted taste structure is learnable: the model ranks test samples better than chance and popularity
    ranking = metrics["ranking"]
    assert ranking["embedding_mlp"]["auc"] > max(0.55, ranking["popularity"]["auc"])
