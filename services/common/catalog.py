"""The movie catalog as columnar arrays, shared by every service (loaded once per process).

Lookups are vectorized: ids map to row positions through an :class:`IdIndex` of the sorted id array.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from services.common.id_index import IdIndex
from starling.errors import StarlingError


@dataclass(frozen=True)
class Catalog:
    movie_ids: np.ndarray  # int64, sorted ascending
    titles: np.ndarray  # object (str)
    release_years: np.ndarray  # int32, 0 = unknown
    genre_names: tuple[str, ...]
    genre_matrix: np.ndarray  # bool [movies, genres]
    primary_genre: np.ndarray  # int32 index into genre_names, -1 = none
    rating_counts: np.ndarray  # int64: ratings seen in the data (popularity)
    avg_ratings: np.ndarray  # float32: mean rating in the data, NaN when unrated
    frame: pl.DataFrame  # movie_id, title, release_year, genres: the source rows, sorted by movie_id

    def __len__(self) -> int:
        return len(self.movie_ids)

    @cached_property
    def id_index(self) -> IdIndex:
        return IdIndex(self.movie_ids)

    def positions(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Row positions of ``ids``; -1 where an id is not in the catalog."""
        return self.id_index.positions(ids)

    def genre_mask(self, genres: list[str] | tuple[str, ...]) -> np.ndarray:
        """Movies having at least one of ``genres`` (all movies when ``genres`` is empty)."""
        if not genres:
            return np.ones(len(self), dtype=bool)
        unknown = sorted(set(genres) - set(self.genre_names))
        if unknown:
            raise ValueError(f"unknown genre(s) {unknown}; known: {', '.join(self.genre_names)}")
        columns = [self.genre_names.index(g) for g in genres]
        return self.genre_matrix[:, columns].any(axis=1)

    def genres_of(self, position: int) -> list[str]:
        return [self.genre_names[g] for g in np.flatnonzero(self.genre_matrix[position])]

    def upserted(self, movies: pl.DataFrame) -> Catalog:
        """A new catalog with ``movies`` (movie_id, title, release_year, genres) added or replaced.

        Genres must be among this catalog's genres; rating statistics of existing movies are kept.
        """
        movies = movies.select(self.frame.columns).cast(self.frame.schema)
        movies = movies.unique("movie_id", keep="last", maintain_order=True)
        added = Catalog.from_frames(movies, genre_names=self.genre_names)
        old = self.positions(added.movie_ids)
        found = old >= 0
        safe = np.where(found, old, 0)
        keep = np.ones(len(self), dtype=bool)
        keep[old[found]] = False  # replaced rows: the upsert's version wins
        order = np.argsort(np.concatenate([self.movie_ids[keep], added.movie_ids]), kind="stable")

        def merged(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
            return np.concatenate([mine[keep], theirs])[order]

        return Catalog(
            movie_ids=merged(self.movie_ids, added.movie_ids),
            titles=merged(self.titles, added.titles),
            release_years=merged(self.release_years, added.release_years),
            genre_names=self.genre_names,
            genre_matrix=merged(self.genre_matrix, added.genre_matrix),
            primary_genre=merged(self.primary_genre, added.primary_genre),
            rating_counts=merged(self.rating_counts, np.where(found, self.rating_counts[safe], 0)),
            avg_ratings=merged(self.avg_ratings, np.where(found, self.avg_ratings[safe], np.nan)).astype(
                np.float32
            ),
            frame=pl.concat([self.frame.filter(pl.Series(keep)), added.frame]).sort("movie_id"),
        )

    @classmethod
    def from_frames(
        cls,
        movies: pl.DataFrame,
        ratings: pl.DataFrame | None = None,
        genre_names: tuple[str, ...] | None = None,
    ) -> Catalog:
        movies = movies.select("movie_id", "title", "release_year", "genres").sort("movie_id")
        if genre_names is None:
            genre_names = tuple(sorted(movies["genres"].explode().drop_nulls().unique().to_list()))
        exploded = movies.select(pl.int_range(pl.len()).alias("row"), "genres").explode("genres").drop_nulls()
        matrix = np.zeros((movies.height, len(genre_names)), dtype=bool)
        genre_index = {name: i for i, name in enumerate(genre_names)}
        if exploded.height:
            cols = exploded["genres"].replace_strict(genre_index, return_dtype=pl.Int32).to_numpy()
            matrix[exploded["row"].to_numpy(), cols] = True
        first = movies["genres"].list.first().replace_strict(genre_index, default=-1, return_dtype=pl.Int32)
        counts = np.zeros(movies.height, dtype=np.int64)
        averages = np.full(movies.height, np.nan, dtype=np.float32)
        if ratings is not None and ratings.height:
            aggregations = [pl.len().alias("count")]
            if "rating" in ratings.columns:
                aggregations.append(pl.col("rating").mean().alias("mean"))
            per_movie = ratings.group_by("movie_id").agg(aggregations)
            joined = movies.select("movie_id").join(
                per_movie, on="movie_id", how="left", maintain_order="left"
            )
            counts = joined["count"].fill_null(0).to_numpy().astype(np.int64)
            if "mean" in joined.columns:
                averages = joined["mean"].fill_null(np.nan).to_numpy().astype(np.float32)
        return cls(
            movie_ids=movies["movie_id"].to_numpy().astype(np.int64),
            titles=np.asarray(movies["title"].to_list(), dtype=object),
            release_years=movies["release_year"].fill_null(0).to_numpy().astype(np.int32),
            genre_names=genre_names,
            genre_matrix=matrix,
            primary_genre=first.fill_null(-1).to_numpy().astype(np.int32),
            rating_counts=counts,
            avg_ratings=averages,
            frame=movies,
        )

    @classmethod
    def from_workdir(cls, workdir: Path) -> Catalog:
        movies_path, ratings_path = workdir / "movies.parquet", workdir / "ratings.parquet"
        if not movies_path.is_file():
            raise StarlingError(
                f"{movies_path} not found: run `starling data ingest SOURCE --out {workdir}` first"
            )
        ratings = (
            pl.read_parquet(ratings_path, columns=["movie_id", "rating"]) if ratings_path.is_file() else None
        )
        return cls.from_frames(pl.read_parquet(movies_path), ratings)
