"""LightGBM ranking baseline on the same encoded features as the torch models.

Features come from the one transform: the 9 numeric columns (NaN where missing, which LightGBM routes on its
own) plus categorical codes for user, movie, the 5 user genres and the 3 movie genres. The liked-movie ids
are left out: they only matter relative to the candidate movie, which split-by-value trees cannot express.
Trained on train with early stopping on valid (AUC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from starling.errors import StarlingError

CATEGORICAL_BLOCKS = ("user", "movie", "user_genres", "movie_genres")


@dataclass(frozen=True)
class LightGBMConfig:
    learning_rate: float = 0.05
    num_leaves: int = 63
    min_data_in_leaf: int = 50
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    seed: int = 0
    num_threads: int = 2


def feature_matrix(encoded: dict[str, np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """float64 [n, features] from an encoded batch, and the column positions of the categorical features."""
    numeric = encoded["numeric"].astype(np.float64)
    numeric[encoded["numeric_missing"] > 0] = np.nan
    blocks = [numeric] + [
        encoded[name].reshape(numeric.shape[0], -1).astype(np.float64) for name in CATEGORICAL_BLOCKS
    ]
    matrix = np.hstack(blocks)
    return matrix, list(range(numeric.shape[1], matrix.shape[1]))


def train_lightgbm(
    train: dict[str, np.ndarray], valid: dict[str, np.ndarray], config: LightGBMConfig = LightGBMConfig()
):
    """Fit a binary LightGBM on ``train`` (with "label"), early-stopped on ``valid`` AUC; returns the Booster."""
    import lightgbm as lgb

    for name, batch in (("train", train), ("valid", valid)):
        if "label" not in batch:
            raise StarlingError(f"LightGBM baseline: the {name} batch has no label")
    x_train, categorical = feature_matrix(train)
    x_valid, _ = feature_matrix(valid)
    train_set = lgb.Dataset(x_train, train["label"], categorical_feature=categorical, free_raw_data=False)
    valid_set = lgb.Dataset(x_valid, valid["label"], reference=train_set, categorical_feature=categorical)
    params = {
        "objective": "binary",
        "metric": "auc",
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "seed": config.seed,
        "deterministic": True,
        "num_threads": config.num_threads,
        "verbose": -1,
    }
    return lgb.train(
        params,
        train_set,
        num_boost_round=config.max_rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
    )


def predict_lightgbm(booster, encoded: dict[str, np.ndarray]) -> np.ndarray:
    """Probabilities of the positive class for an encoded batch."""
    matrix, _ = feature_matrix(encoded)
    return booster.predict(matrix, num_iteration=booster.best_iteration)
