"""What every ranking model shares: its hyperparameters, the input layer over the encoded batch, an MLP.

The encoded batch is the dict produced by ``starling.features.transform.transform`` turned into tensors:
``user`` [n], ``movie`` [n], ``user_genres`` [n,5], ``movie_genres`` [n,3], ``liked_movies`` [n,5] (vocabulary
indices, 0 = unknown / none), ``numeric`` and ``numeric_missing`` [n,9] float32, ``numeric_buckets`` [n,9].
Every model maps it to logits [n].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import torch
from torch import nn

from starling.errors import StarlingError

Batch = Mapping[str, torch.Tensor]

#: Keys of the encoded batch a model reads (``label`` is read by the loop, not the model).
FEATURE_KEYS = (
    "user",
    "movie",
    "user_genres",
    "movie_genres",
    "liked_movies",
    "numeric",
    "numeric_missing",
    "numeric_buckets",
)


def model_inputs(model: nn.Module) -> tuple[str, ...]:
    """The keys of the encoded batch ``model`` reads: its class's ``encoded_inputs`` (a model over a few keys
    says so, and serving encodes only those), else every one of :data:`FEATURE_KEYS`."""
    keys = getattr(type(model), "encoded_inputs", FEATURE_KEYS)
    return tuple(keys)


#: z-scores are clipped to this range so that a heavy-tailed count seen at serving cannot blow up the MLP.
NUMERIC_CLIP = 8.0


class SpecLike(Protocol):
    """The part of ``starling.features.spec.FeatureSpec`` that sizes a model."""

    numeric_stats: Mapping[str, Mapping[str, Any]]

    @property
    def numeric_fields(self) -> tuple[str, ...]: ...

    def all_numeric_stats(self) -> Mapping[str, Mapping[str, Any]]: ...

    def vocab_size(self, name: str) -> int: ...


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one ranking model and its training run (stored in ``<model>/config.json``)."""

    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (128, 128)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 4096
    max_epochs: int = 10
    patience: int = 2
    #: Share of training rows whose user / movie id is replaced by the unknown index 0, so that the unknown
    #: embedding is learned and users or movies unseen in train (a time split has many) get a sensible vector.
    id_dropout: float = 0.1
    seed: int = 0
    #: Independently initialised copies whose logits are averaged at inference (models that support it).
    ensemble: int = 1

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["hidden_units"] = list(self.hidden_units)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise StarlingError(f"model config has unknown hyperparameters {unknown}; known: {sorted(known)}")
        values = dict(values)
        if "hidden_units" in values:
            values["hidden_units"] = tuple(int(units) for units in values["hidden_units"])
        return cls(**values)


def numeric_field_names(spec: SpecLike) -> list[str]:
    """The numeric columns in the order of ``numeric`` / ``numeric_buckets`` (``spec.numeric_fields``)."""
    stats = spec.all_numeric_stats()
    missing = [name for name in spec.numeric_fields if name not in stats]
    if missing:
        raise StarlingError(f"feature spec has no numeric statistics for {missing}")
    return list(spec.numeric_fields)


def bucket_table_sizes(spec: SpecLike) -> list[int]:
    """Rows of each numeric field's bucket table: 0 (null) plus buckets 1..len(quantile boundaries)+1."""
    stats = spec.all_numeric_stats()
    return [len(stats[name]["quantiles"]) + 2 for name in numeric_field_names(spec)]


def mlp(in_features: int, hidden_units: Sequence[int], out_features: int | None = 1) -> nn.Sequential:
    """Linear+ReLU layers of ``hidden_units``, then a final linear layer to ``out_features`` (if given)."""
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden_units:
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def embedding_table(rows: int, dim: int, padding_idx: int | None = None, std: float = 0.05) -> nn.Embedding:
    table = nn.Embedding(rows, dim, padding_idx=padding_idx)
    nn.init.normal_(table.weight, std=std)
    if padding_idx is not None:
        with torch.no_grad():
            table.weight[padding_idx].zero_()
    return table


@dataclass
class EmbeddedFields:
    """The batch after the input layer; every tensor has the batch as its first dimension."""

    user: torch.Tensor  # [n, d]
    movie: torch.Tensor  # [n, d] (the candidate)
    user_genres: torch.Tensor  # [n, 5, d], zero vectors for null
    movie_genres: torch.Tensor  # [n, 3, d], zero vectors for null
    buckets: torch.Tensor  # [n, 9, d]
    liked_movies: torch.Tensor  # [n, 5, d]
    liked_mask: torch.Tensor  # [n, 5] bool, False where there is no liked movie
    dense: torch.Tensor  # [n, 18]: clipped z-scores and missing flags

    def liked_mean(self) -> torch.Tensor:
        """Mean embedding of the user's liked movies (zero when there are none): [n, d]."""
        mask = self.liked_mask.unsqueeze(-1).to(self.liked_movies.dtype)
        return (self.liked_movies * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def stacked(self, with_liked_mean: bool = True) -> torch.Tensor:
        """All field embeddings as [n, fields, d] (for factorization machines)."""
        parts = [self.user.unsqueeze(1), self.movie.unsqueeze(1), self.user_genres, self.movie_genres]
        parts.append(self.buckets)
        if with_liked_mean:
            parts.append(self.liked_mean().unsqueeze(1))
        return torch.cat(parts, dim=1)

    def flat(self, with_liked_mean: bool = True) -> torch.Tensor:
        """Every field embedding and the dense features concatenated: [n, InputLayer.flat_dim(...)]."""
        return torch.cat([self.stacked(with_liked_mean).flatten(1), self.dense], dim=1)


class InputLayer(nn.Module):
    """Embeddings of ids, genres (one table shared by user and movie genre fields) and numeric buckets.

    Index 0 of the user and movie tables is the learned unknown embedding; genre index 0 (null) is a fixed
    zero vector. Each numeric field has its own slice of one bucket table (0 = null is a learned bucket).
    With ``ids_only`` only the user and movie tables exist (for id-based models such as NeuMF).
    """

    def __init__(self, spec: SpecLike, config: ModelConfig, ids_only: bool = False) -> None:
        super().__init__()
        dim = config.embedding_dim
        self.embedding_dim = dim
        self.id_dropout = config.id_dropout
        self.user = embedding_table(spec.vocab_size("user"), dim)
        self.movie = embedding_table(spec.vocab_size("movie"), dim)
        if ids_only:  # models that read only the ids (NeuMF) use ids(), user and movie
            return
        self.genre = embedding_table(spec.vocab_size("genre"), dim, padding_idx=0)
        sizes = bucket_table_sizes(spec)
        self.n_numeric = len(sizes)
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("bucket_offsets", offsets, persistent=False)
        self.bucket = embedding_table(sum(sizes), dim)

    def flat_dim(self, with_liked_mean: bool = True) -> int:
        n_fields = 2 + 5 + 3 + self.n_numeric + int(with_liked_mean)
        return n_fields * self.embedding_dim + 2 * self.n_numeric

    def ids(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """User and movie indices; in training mode a random ``id_dropout`` share is replaced by unknown (0)."""
        user, movie = batch["user"], batch["movie"]
        if self.training and self.id_dropout > 0:
            user = user.masked_fill(torch.rand(user.shape, device=user.device) < self.id_dropout, 0)
            movie = movie.masked_fill(torch.rand(movie.shape, device=movie.device) < self.id_dropout, 0)
        return user, movie

    def forward(self, batch: Batch) -> EmbeddedFields:
        user, movie = self.ids(batch)
        liked = batch["liked_movies"]
        numeric = batch["numeric"].clamp(-NUMERIC_CLIP, NUMERIC_CLIP)
        return EmbeddedFields(
            user=self.user(user),
            movie=self.movie(movie),
            user_genres=self.genre(batch["user_genres"]),
            movie_genres=self.genre(batch["movie_genres"]),
            buckets=self.bucket(batch["numeric_buckets"] + self.bucket_offsets),
            liked_movies=self.movie(liked),
            liked_mask=liked > 0,
            dense=torch.cat([numeric, batch["numeric_missing"]], dim=1),
        )


class FirstOrderTerms(nn.Module):
    """A linear model over the sparse one-hots (ids, genres, buckets) and the dense features: logits [n].

    Each one-hot weight is an embedding of dimension 1, so a row's term is the sum of its looked-up weights.
    """

    def __init__(self, spec: SpecLike) -> None:
        super().__init__()
        self.user = embedding_table(spec.vocab_size("user"), 1, std=0.0)
        self.movie = embedding_table(spec.vocab_size("movie"), 1, std=0.0)
        self.user_genre = embedding_table(spec.vocab_size("genre"), 1, padding_idx=0, std=0.0)
        self.movie_genre = embedding_table(spec.vocab_size("genre"), 1, padding_idx=0, std=0.0)
        sizes = bucket_table_sizes(spec)
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("bucket_offsets", offsets, persistent=False)
        self.bucket = embedding_table(sum(sizes), 1, std=0.0)
        self.dense = nn.Linear(2 * len(sizes), 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        numeric = batch["numeric"].clamp(-NUMERIC_CLIP, NUMERIC_CLIP)
        dense = torch.cat([numeric, batch["numeric_missing"]], dim=1)
        return (
            self.user(batch["user"]).squeeze(-1)
            + self.movie(batch["movie"]).squeeze(-1)
            + self.user_genre(batch["user_genres"]).sum((1, 2))
            + self.movie_genre(batch["movie_genres"]).sum((1, 2))
            + self.bucket(batch["numeric_buckets"] + self.bucket_offsets).sum((1, 2))
            + self.dense(dense).squeeze(-1)
        )
