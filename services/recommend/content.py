"""Text vectors for catalog upserts: UpsertMovie encodes the new movie's text (title, year, genres) with the
language model of starling/content.py and writes the vector into the catalog event, so every recall replica
places the movie by it (services/recall/state.py, new_movie_vectors) without loading the model itself.

The model is loaded in a background thread when the service starts; an upsert that arrives before it is ready
waits for it (at most ``wait_s``), and one that finds no model (not installed, failed to load) is stored
without a vector: recall then places the movie by its genres alone.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import polars as pl

from starling.content import TextEncoder, movie_texts

log = logging.getLogger("starling.recommend.content")


class UpsertEncoder:
    def __init__(self, wait_s: float = 60.0, cache: Path | None = None) -> None:
        self.wait_s = wait_s
        self._cache = cache
        self._encoder: TextEncoder | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()  # one encode at a time: the model is not re-entrant on every device
        threading.Thread(target=self._load, name="text-encoder", daemon=True).start()

    def _load(self) -> None:
        try:
            import torch

            # One short text per upsert: a second intra-op thread gains little and competes with the other
            # services, which all follow the same upsert at the same moment.
            torch.set_num_threads(1)
            self._encoder = TextEncoder(device="cpu", cache=self._cache)
            self._encoder.encode(["warm up"])  # the first forward pass pays for allocations
            log.info("text encoder ready", extra={"package_version": self._encoder.info.package_version})
        except Exception as exc:
            log.warning("text encoder unavailable: upserts are placed by genres", extra={"error": str(exc)})
        finally:
            self._ready.set()

    def vectors(self, movies: pl.DataFrame) -> np.ndarray | None:
        """float32 [movies, 384] for ``movies`` (movie_id, title, release_year, genres); None without a model."""
        if not self._ready.wait(self.wait_s) or self._encoder is None:
            return None
        texts = movie_texts(movies)["text"].to_list()
        with self._lock:
            return self._encoder.encode(texts)


def with_content(movies: pl.DataFrame, encoder: UpsertEncoder | None) -> pl.DataFrame:
    """``movies`` with the ``content`` column of the movies stream (null rows when there is no encoder)."""
    vectors = encoder.vectors(movies) if encoder is not None else None
    if vectors is None:
        return movies.with_columns(content=pl.lit(None, pl.List(pl.Float32)))
    return movies.with_columns(content=pl.Series(vectors).cast(pl.List(pl.Float32)))
