"""Training data: samples.parquet split into train / valid / test, encoded once with the feature spec's
transform (the same one serving uses) and held as whole-split tensors that the loop slices batches from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from starling.errors import StarlingError
from starling.features.spec import FeatureSpec
from training.models.base import FEATURE_KEYS, SpecLike, bucket_table_sizes

SPLITS = ("train", "valid", "test")

#: Encoded key -> (dtype, trailing shape) as the transform contract states.
ENCODED_LAYOUT: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "user": (np.dtype(np.int64), ()),
    "movie": (np.dtype(np.int64), ()),
    "user_genres": (np.dtype(np.int64), (5,)),
    "movie_genres": (np.dtype(np.int64), (3,)),
    "liked_movies": (np.dtype(np.int64), (5,)),
    "numeric": (np.dtype(np.float32), (9,)),
    "numeric_missing": (np.dtype(np.float32), (9,)),
    "numeric_buckets": (np.dtype(np.int64), (9,)),
}


class TrainingDataError(StarlingError):
    """samples.parquet / feature_spec.json are missing or do not hold what training needs."""


@dataclass
class EncodedSplit:
    """One split as tensors: the model's input features, the labels, and the raw ids (for baselines)."""

    name: str
    features: dict[str, torch.Tensor]
    labels: torch.Tensor  # float32 [n]
    user_ids: np.ndarray  # int64 [n], raw ids
    movie_ids: np.ndarray  # int64 [n], raw ids

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> EncodedSplit:
        features = {key: value.to(device) for key, value in self.features.items()}
        return EncodedSplit(self.name, features, self.labels.to(device), self.user_ids, self.movie_ids)


@dataclass
class TrainingData:
    spec: FeatureSpec
    splits: dict[str, EncodedSplit]
    samples_path: Path | None = None
    spec_path: Path | None = None

    def row_counts(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}


def check_encoded(encoded: Mapping[str, np.ndarray], spec: SpecLike, where: str) -> None:
    """Refuse encoded arrays whose keys, dtypes, shapes or index ranges differ from the contract."""
    missing = [key for key in FEATURE_KEYS if key not in encoded]
    if missing:
        raise TrainingDataError(f"{where}: encoded features lack {missing}")
    n_rows = len(encoded["user"])
    for key, (dtype, trailing) in ENCODED_LAYOUT.items():
        array = encoded[key]
        if array.dtype != dtype or array.shape != (n_rows, *trailing):
            raise TrainingDataError(
                f"{where}: encoded {key!r} is {array.dtype}{list(array.shape)}, "
                f"expected {dtype}{[n_rows, *trailing]}"
            )
    vocab_of = {"user": "user", "movie": "movie", "liked_movies": "movie"}
    vocab_of |= {"user_genres": "genre", "movie_genres": "genre"}
    limits = {key: spec.vocab_size(vocab) for key, vocab in vocab_of.items()}
    limits["numeric_buckets"] = np.array(bucket_table_sizes(spec))
    for key, limit in limits.items():
        bad = (encoded[key] < 0) | (encoded[key] >= limit)
        if bad.any():
            row = int(np.flatnonzero(bad.reshape(n_rows, -1).any(axis=1))[0])
            raise TrainingDataError(
                f"{where}: encoded {key!r} has indices outside its table (row {row}: {encoded[key][row]}, "
                f"table size {limit})"
            )
    for key in ("numeric", "numeric_missing"):
        not_finite = ~np.isfinite(encoded[key])
        if not_finite.any():
            row = int(np.flatnonzero(not_finite.reshape(n_rows, -1).any(axis=1))[0])
            raise TrainingDataError(
                f"{where}: encoded {key!r} is not finite at row {row}: {encoded[key][row]}"
            )


def encode_split(name: str, samples: pl.DataFrame, spec: FeatureSpec, where: str) -> EncodedSplit:
    """Transform one split's samples (which must carry a label) into an :class:`EncodedSplit`."""
    from starling.features.transform import transform

    encoded = transform(samples, spec)
    check_encoded(encoded, spec, f"{where} ({name} split)")
    if "label" not in encoded:
        raise TrainingDataError(f"{where} ({name} split): the transform returned no label")
    features = {
        key: torch.from_numpy(np.require(encoded[key], requirements=["C", "W"])) for key in FEATURE_KEYS
    }
    labels = torch.from_numpy(np.require(encoded["label"], np.float32, ["C", "W"]))
    user_ids = samples["user_id"].to_numpy().astype(np.int64)
    movie_ids = samples["movie_id"].to_numpy().astype(np.int64)
    return EncodedSplit(name, features, labels, user_ids, movie_ids)


def load_training_data(workdir: Path) -> TrainingData:
    """Read WORKDIR/features/{samples.parquet, feature_spec.json} and encode every split once."""
    features_dir = Path(workdir) / "features"
    samples_path = features_dir / "samples.parquet"
    spec_path = features_dir / "feature_spec.json"
    if not samples_path.is_file():
        raise TrainingDataError(f"{samples_path}: not found (run `starling features build {workdir}` first)")
    spec = FeatureSpec.load(spec_path)
    try:
        samples = pl.read_parquet(samples_path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise TrainingDataError(f"{samples_path}: not a readable parquet file ({exc})") from exc
    return TrainingData(spec, split_samples(samples, spec, str(samples_path)), samples_path, spec_path)


def split_samples(samples: pl.DataFrame, spec: FeatureSpec, where: str) -> dict[str, EncodedSplit]:
    """Check the split and label columns, then encode each split; train and valid must not be empty."""
    missing = [name for name in ("user_id", "movie_id", "label", "split") if name not in samples.columns]
    if missing:
        raise TrainingDataError(f"{where}: lacks columns {missing}")
    for column in ("label", "split"):
        nulls = samples[column].is_null()
        if nulls.any():
            raise TrainingDataError(f"{where}: row {int(nulls.arg_true()[0])} has a null {column}")
    unknown = ~samples["split"].is_in(SPLITS)
    if unknown.any():
        row = int(unknown.arg_true()[0])
        raise TrainingDataError(
            f"{where}: row {row} has split {samples['split'][row]!r}; expected one of {list(SPLITS)}"
        )
    not_binary = ~samples["label"].is_in([0, 1])
    if not_binary.any():
        row = int(not_binary.arg_true()[0])
        raise TrainingDataError(f"{where}: row {row} has label {samples['label'][row]!r}; expected 0 or 1")
    splits: dict[str, EncodedSplit] = {}
    for name in SPLITS:
        part = samples.filter(pl.col("split") == name)
        if part.height == 0 and name != "test":
            raise TrainingDataError(
                f"{where}: the {name} split is empty; training needs train and valid rows"
            )
        splits[name] = encode_split(name, part, spec, where)
    return splits
