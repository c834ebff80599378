"""CatalogService (served by the recommend process): movie details, users' ratings, and new movies.

UpsertMovie writes the movie's features to the online store, appends it durably to the catalog event log
(WORKDIR/events/movies, or the Redis bus: starling/eventbus.py) and updates this process's catalog;
candidates, recall (vector + Milvus), rerank and the ranker follow the log, so a new movie can be recalled and
ranked right away. A new movie's id comes from the event log's allocator (one Redis counter for every replica
on the bus).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import polars as pl

from services.common.catalog import Catalog
from services.common.errors import InvalidArgument, NotFound, check_id, check_k
from services.common.history import UserHistory
from services.recommend.browse import genres_by_ratings, popular_positions
from services.recommend.content import UpsertEncoder, with_content
from services.recommend.search import MAX_QUERY, MAX_RESULTS, folded_titles, search_positions
from starling import events
from starling.eventbus import EventLog, append_own, open_event_log
from starling.features.spec import MOVIE_GENRE_FIELDS
from starling.featurestore import MOVIE_VIEW
from starling.v1 import catalog_pb2, catalog_pb2_grpc

MAX_TITLE = 500
MAX_MOVIE_ID = 2**31 - 1  # explicit ids (MovieLens' are below 300,000)
AUTO_ID_CEILING = 2**62  # allocated ids stay far below int64's end
HIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co"}  # control, format (bidi, zero-width), surrogate, private use
MAX_GENRES = 10
FIRST_YEAR = 1870


def movie_message(catalog: Catalog, position: int) -> catalog_pb2.Movie:
    average = float(catalog.avg_ratings[position])
    return catalog_pb2.Movie(
        movie_id=int(catalog.movie_ids[position]),
        title=str(catalog.titles[position]),
        release_year=int(catalog.release_years[position]),
        genres=catalog.genres_of(position),
        rating_count=int(catalog.rating_counts[position]),
        avg_rating=0.0 if math.isnan(average) else average,
    )


def hidden_character(text: str) -> tuple[int, str] | None:
    """The first control, format (bidi overrides, zero-width), surrogate or private-use character, if any."""
    for position, character in enumerate(text):
        if unicodedata.category(character) in HIDDEN_CATEGORIES:
            return position, character
    return None


def largest_movie_id(catalog: Catalog) -> int:
    """The largest id at or below AUTO_ID_CEILING: an id stored above it (none can be upserted now) cannot
    stop allocation."""
    ids = catalog.movie_ids
    return int(ids[ids <= AUTO_ID_CEILING].max(initial=0))


def next_movie_id(catalog: Catalog) -> int:
    """One above :func:`largest_movie_id`."""
    return largest_movie_id(catalog) + 1


def checked_movie(
    movie: catalog_pb2.Movie,
    catalog: Catalog,
    this_year: int,
    allocate: Callable[[Catalog], int] = next_movie_id,
) -> pl.DataFrame:
    """The upsert as a one-row catalog frame, ``allocate`` giving the id when it is 0 (once the movie is
    valid); InvalidArgument says what is wrong."""
    check_id(movie.movie_id, "movie.movie_id")
    if movie.movie_id > MAX_MOVIE_ID:
        raise InvalidArgument(
            f"movie.movie_id must be at most {MAX_MOVIE_ID} (0 = allocate one), got {movie.movie_id}"
        )
    title = movie.title.strip()
    if not title or len(title) > MAX_TITLE:
        raise InvalidArgument(f"movie.title must be 1..{MAX_TITLE} characters, got {len(title)}")
    hidden = hidden_character(title)
    if hidden is not None:
        raise InvalidArgument(
            f"movie.title holds an invisible or control character U+{ord(hidden[1]):04X} "
            f"({unicodedata.name(hidden[1], 'unnamed')}) at position {hidden[0]}"
        )
    if movie.release_year and not FIRST_YEAR <= movie.release_year <= this_year + 5:
        raise InvalidArgument(
            f"movie.release_year {movie.release_year} outside {FIRST_YEAR}..{this_year + 5} (0 = unknown)"
        )
    genres = list(dict.fromkeys(movie.genres))
    unknown = sorted(set(genres) - set(catalog.genre_names))
    if unknown or len(genres) > MAX_GENRES:
        raise InvalidArgument(
            f"movie.genres {unknown or genres}: at most {MAX_GENRES} of {', '.join(catalog.genre_names)}"
        )
    movie_id = movie.movie_id or allocate(catalog)
    return pl.DataFrame(
        {
            "movie_id": [movie_id],
            "title": [title],
            "release_year": [movie.release_year or None],
            "genres": [genres],
        },
        schema={
            "movie_id": pl.Int64,
            "title": pl.String,
            "release_year": pl.Int32,
            "genres": pl.List(pl.String),
        },
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(
        self,
        catalog: Catalog,
        history: UserHistory,
        workdir: Path | None = None,
        store=None,
        on_catalog: Callable[[Catalog], None] | None = None,
        encoder: UpsertEncoder | None = None,
        event_log: EventLog | None = None,
    ) -> None:
        self.catalog = catalog
        self.encoder = encoder  # the text vector of an upserted movie (None: recall places it by genres)
        self.history = history
        self.workdir = workdir
        self.store = store
        self.on_catalog = on_catalog  # hands a new catalog to the other servicers of this process
        self.event_log = event_log or (open_event_log(workdir) if workdir else None)
        self.movie_events = self.event_log.follower(events.MOVIE_STREAM) if self.event_log else None
        self._search_index: tuple[Catalog, pl.Series] | None = None  # folded titles of self.catalog
        # One online-store call at a time: Feast's sqlite store shares one connection between threads, and
        # concurrent upserts on it fail ("no more rows available").
        self._store_lock = threading.Lock()

    def apply_movies(self, movies: pl.DataFrame) -> None:
        """Catalog upserts (own, or from the event log written by other replicas)."""
        self.catalog = self.catalog.upserted(movies)
        if self.on_catalog is not None:
            self.on_catalog(self.catalog)

    async def GetMovie(self, request: catalog_pb2.GetMovieRequest, context: grpc.aio.ServicerContext):
        movie_id = check_id(request.movie_id, "movie_id")
        position = int(self.catalog.positions([movie_id])[0])
        if position < 0:
            raise NotFound(f"movie_id {movie_id} is not in the catalog")
        return movie_message(self.catalog, position)

    async def ListUserRatings(
        self, request: catalog_pb2.ListUserRatingsRequest, context: grpc.aio.ServicerContext
    ):
        user_id = check_id(request.user_id, "user_id")
        limit = check_k(request.limit, "limit")
        if request.offset < 0:
            raise InvalidArgument(f"offset must be >= 0, got {request.offset}")
        movie_id = check_id(request.movie_id, "movie_id")
        movies, ratings, timestamps = self.history.latest(user_id)
        positions = self.catalog.positions(movies)
        keep = positions >= 0
        if movie_id:
            keep &= movies == movie_id
        positions, ratings, timestamps = positions[keep], ratings[keep], timestamps[keep]
        page = slice(request.offset, request.offset + limit)
        return catalog_pb2.ListUserRatingsResponse(
            ratings=[
                catalog_pb2.UserRating(
                    movie=movie_message(self.catalog, p), rating=float(r), time_unix_ms=int(t // 1000)
                )
                for p, r, t in zip(
                    positions[page].tolist(), ratings[page].tolist(), timestamps[page].tolist(), strict=True
                )
            ],
            total=len(positions),
        )

    async def ListPopularMovies(
        self, request: catalog_pb2.ListPopularMoviesRequest, context: grpc.aio.ServicerContext
    ):
        catalog = self.catalog
        if request.genre and request.genre not in catalog.genre_names:
            raise InvalidArgument(
                f"genre {request.genre!r} is unknown; known: {', '.join(catalog.genre_names)}"
            )
        limit = request.limit or 20
        if not 1 <= limit <= MAX_RESULTS:
            raise InvalidArgument(f"limit must be 1..{MAX_RESULTS}, got {request.limit}")
        if request.offset < 0:
            raise InvalidArgument(f"offset must be >= 0, got {request.offset}")
        positions, total = popular_positions(catalog, request.genre, request.offset, limit)
        return catalog_pb2.ListPopularMoviesResponse(
            movies=[movie_message(catalog, p) for p in positions.tolist()],
            total=total,
            genres=genres_by_ratings(catalog),
        )

    async def SearchMovies(self, request: catalog_pb2.SearchMoviesRequest, context: grpc.aio.ServicerContext):
        query = request.query.strip()
        if not 1 <= len(query) <= MAX_QUERY:
            raise InvalidArgument(f"query must be 1..{MAX_QUERY} characters, got {len(query)}")
        hidden = hidden_character(query)
        if hidden is not None:
            raise InvalidArgument(f"query holds a control or invisible character U+{ord(hidden[1]):04X}")
        limit = request.limit or 20
        if not 1 <= limit <= MAX_RESULTS:
            raise InvalidArgument(f"limit must be 1..{MAX_RESULTS}, got {request.limit}")
        if request.offset < 0:
            raise InvalidArgument(f"offset must be >= 0, got {request.offset}")
        catalog = self.catalog
        if self._search_index is None or self._search_index[0] is not catalog:
            self._search_index = (catalog, folded_titles(catalog.titles))
        positions, total = search_positions(
            self._search_index[1], catalog.rating_counts, query, request.offset, limit
        )
        return catalog_pb2.SearchMoviesResponse(
            movies=[movie_message(catalog, p) for p in positions.tolist()], total=total
        )

    async def UpsertMovie(self, request: catalog_pb2.UpsertMovieRequest, context: grpc.aio.ServicerContext):
        if self.workdir is None or self.store is None or self.movie_events is None:
            raise InvalidArgument("this catalog is read-only")
        frame = await asyncio.to_thread(  # the allocator may be a network call (the Redis bus)
            checked_movie, request.movie, self.catalog, dt.datetime.now(dt.UTC).year, self.allocate_movie_id
        )
        movie_id = int(frame["movie_id"][0])
        created = self.catalog.positions([movie_id])[0] < 0
        await asyncio.to_thread(self._persist, frame, created)
        self.apply_movies(frame)
        response = catalog_pb2.UpsertMovieResponse(created=bool(created))
        response.movie.CopyFrom(movie_message(self.catalog, int(self.catalog.positions([movie_id])[0])))
        return response

    def allocate_movie_id(self, catalog: Catalog) -> int:
        """The event log's next movie id: above every id in ``catalog`` and every id allocated before (by
        any replica, on the Redis bus)."""
        return self.event_log.next_id("movie_id", largest_movie_id(catalog))

    def _persist(self, frame: pl.DataFrame, created: bool) -> None:
        """Online features first (followers read them), then the durable catalog event."""
        event = with_content(frame, self.encoder)  # the text vector travels with the event to every recall
        movie_id = int(frame["movie_id"][0])
        genres = frame["genres"][0].to_list()
        position = int(self.catalog.positions([movie_id])[0])
        stddev = None
        if not created:  # keep the rating statistics the online store has for this movie
            refs = [f"{MOVIE_VIEW}:movie_rating_stddev"]
            with self._store_lock:
                stddev = self.store.get_online_features(
                    features=refs, entity_rows=[{"movie_id": movie_id}]
                ).to_dict()["movie_rating_stddev"][0]
        average = (
            None
            if created or np.isnan(self.catalog.avg_ratings[position])
            else float(self.catalog.avg_ratings[position])
        )
        row = pl.DataFrame(
            {
                "movie_id": [movie_id],
                "event_timestamp": [dt.datetime.now(dt.UTC)],
                "movie_release_year": frame["release_year"],
                **{
                    name: [genres[i] if i < len(genres) else None]
                    for i, name in enumerate(MOVIE_GENRE_FIELDS)
                },
                "movie_rating_count": [0 if created else int(self.catalog.rating_counts[position])],
                "movie_avg_rating": [average],
                "movie_rating_stddev": [stddev],
            },
            schema_overrides={
                "movie_avg_rating": pl.Float64,
                "movie_rating_stddev": pl.Float64,
                **{name: pl.String for name in MOVIE_GENRE_FIELDS},
            },
        )
        with self._store_lock:
            self.store.write_to_online_store(MOVIE_VIEW, row.to_pandas())
        append_own(self.event_log, self.movie_events, event)
