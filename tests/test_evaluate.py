"""`starling evaluate`: clear errors on missing inputs, the table, and an end-to-end run on ml-latest-small."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from starling.errors import StarlingError
from training.evaluate import RANKING_COLUMNS, RETRIEVAL_COLUMNS, evaluate, format_table, platt_fit


def test_missing_features_say_which_command_to_run(tmp_path: Path) -> None:
    with pytest.raises(StarlingError, match="starling features build"):
        evaluate(tmp_path)


def test_missing_catalog_says_to_ingest_first(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.mkdir()
    pl.DataFrame({"user_id": [1]}).write_parquet(features / "samples.parquet")
    (features / "split.json").write_text("{}")
    with pytest.raises(StarlingError, match="starling data ingest"):
        evaluate(tmp_path)


def test_missing_artifact_says_to_train_first(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.mkdir()
    pl.DataFrame({"user_id": [1]}).write_parquet(features / "samples.parquet")
    (features / "split.json").write_text("{}")
    pl.DataFrame({"movie_id": [1]}).write_parquet(tmp_path / "movies.parquet")
    with pytest.raises(StarlingError, match="starling train"):
        evaluate(tmp_path)


def test_platt_fit_recovers_a_logistic_relationship() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 20_000)
    y = (rng.random(x.size) < 1 / (1 + np.exp(-(0.8 * x - 2.0)))).astype(np.float64)
    a, b = platt_fit(x, y)
    assert a == pytest.approx(0.8, abs=0.05) and b == pytest.approx(-2.0, abs=0.1)


def test_format_table_sorts_best_first_and_aligns_columns() -> None:
    metrics = {
        "ranking": {
            "popularity": {"auc": 0.6, "pr_auc": 0.7, "logloss": 0.66},
            "din": {"auc": 0.8, "pr_auc": 0.85, "logloss": 0.5},
        },
        "retrieval": {
            "popularity": dict.fromkeys(RETRIEVAL_COLUMNS, 0.05),
            "pipeline": dict.fromkeys(RETRIEVAL_COLUMNS, 0.1),
        },
        "split": {
            "kind": "time",
            "test_cutoff": "2017-01-01T00:00:00+00:00",
            "counts": {"train": 8, "test": 1},
        },
    }
    lines = format_table(metrics).splitlines()
    assert lines[0] == "split: time, test from 2017-01-01T00:00:00+00:00, train 8, test 1"
    din = next(i for i, line in enumerate(lines) if line.startswith("din"))
    popularity = next(i for i, line in enumerate(lines) if line.startswith("popularity"))
    assert din < popularity  # higher AUC first
    assert lines[din].split() == ["din", "0.8000", "0.8500", "0.5000"]
    pipeline = next(i for i, line in enumerate(lines) if line.startswith("pipeline"))
    assert len({len(lines[i]) for i in (din, popularity)}) == 1 and pipeline > popularity


@pytest.mark.slow
def test_evaluate_end_to_end_on_ml_latest_small(ml_small_features: Path) -> None:
    from training.train import train_command

    train_command(ml_small_features, "embedding_mlp", epochs=2, publish=True)
    metrics = evaluate(ml_small_features)
    assert set(metrics) == {"ranking", "retrieval", "split"}
    assert {"embedding_mlp", "lightgbm", "popularity"} <= set(metrics["ranking"])
    assert set(metrics["retrieval"]) == {"item2vec", "two_tower", "pipeline", "popularity", "implicit_als"}
    for section, columns in (("ranking", RANKING_COLUMNS), ("retrieval", RETRIEVAL_COLUMNS)):
        for name, values in metrics[section].items():
            assert set(values) == set(columns), name
            for column in columns:
                value = values[column]
                assert not math.isnan(value), (name, column)
                assert column == "logloss" or 0.0 <= value <= 1.0, (name, column, value)
    assert metrics["ranking"]["embedding_mlp"]["auc"] > 0.5
    assert metrics["retrieval"]["pipeline"]["recall@50"] >= metrics["retrieval"]["pipeline"]["recall@10"]
    assert metrics["split"]["counts"]["test"] > 0
    written = json.loads((ml_small_features / "reports" / "metrics.json").read_text())
    assert written == metrics
