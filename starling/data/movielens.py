"""MovieLens source layouts (detected from the files present) and their parsing into canonical frames.

Layouts: ``csv`` (ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m), ``dat`` (ml-1m, ml-10m: ``::``-separated),
``100k`` (ml-100k: ``u.data`` + ``u.item``). Every check rejects rows through a RowChecker, so each bad row is
reported with its file and line, or dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from starling.data.readers import TableFormat, read_table
from starling.data.validation import OnBad, RowChecker, quoted
from starling.errors import StarlingError

NO_GENRES = "(no genres listed)"
GENRE_ALIASES = {"Children's": "Children"}  # ml-1m / ml-10m spell it like ml-100k
# ml-100k's u.item genre flag columns, in file order; "unknown" means no genre, "Children's" is "Children" elsewhere.
GENRES_100K = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
MAX_TIMESTAMP_S = 253_402_300_799  # 9999-12-31T23:59:59Z
MIN_RATING, MAX_RATING = 0.5, 5.0
# "Title (1995)", "Title (2007-)", "Title (2006–2007)": the title and the first year.
TITLE_YEAR_PATTERN = r"^(.*?)\s*\((\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)$"

RATING_COLUMNS = ("user_id", "movie_id", "rating", "timestamp")
TAG_COLUMNS = ("user_id", "movie_id", "tag", "timestamp")


@dataclass(frozen=True)
class SourceFile:
    name: str
    table_format: TableFormat


@dataclass(frozen=True)
class Layout:
    """Where a layout keeps each table; ``links`` and ``tags`` are optional."""

    name: str
    files: dict[str, SourceFile]


def _csv(columns: tuple[str, ...], quoting: bool = False) -> TableFormat:
    return TableFormat(columns=columns, separator=",", header=True, quoting=quoting)


def _dat(columns: tuple[str, ...]) -> TableFormat:
    return TableFormat(columns=columns, separator="::", header=False, encoding="auto")


LAYOUTS: dict[str, Layout] = {
    "csv": Layout(
        "csv",
        {
            "ratings": SourceFile("ratings.csv", _csv(("userId", "movieId", "rating", "timestamp"))),
            "movies": SourceFile("movies.csv", _csv(("movieId", "title", "genres"), quoting=True)),
            "links": SourceFile("links.csv", _csv(("movieId", "imdbId", "tmdbId"))),
            "tags": SourceFile("tags.csv", _csv(("userId", "movieId", "tag", "timestamp"), quoting=True)),
        },
    ),
    "dat": Layout(
        "dat",
        {
            "ratings": SourceFile("ratings.dat", _dat(RATING_COLUMNS)),
            "movies": SourceFile("movies.dat", _dat(("movie_id", "title", "genres"))),
            "tags": SourceFile("tags.dat", _dat(TAG_COLUMNS)),
        },
    ),
    "100k": Layout(
        "100k",
        {
            "ratings": SourceFile("u.data", TableFormat(RATING_COLUMNS, separator="\t", header=False)),
            "movies": SourceFile(
                "u.item",
                TableFormat(
                    ("movie_id", "title", "release_date", "video_release_date", "imdb_url", *GENRES_100K),
                    separator="|",
                    header=False,
                    encoding="auto",
                ),
            ),
        },
    ),
}
REQUIRED_TABLES = ("ratings", "movies")


def detect_layout(directory: Path) -> Layout:
    """The layout whose ratings and movies files are both in ``directory``."""
    if not directory.is_dir():
        raise StarlingError(f"{directory} is not a directory")
    for layout in LAYOUTS.values():
        if all((directory / layout.files[table].name).is_file() for table in REQUIRED_TABLES):
            return layout
    expected = "; ".join(
        f"{name}: {' + '.join(layout.files[t].name for t in REQUIRED_TABLES)}"
        for name, layout in LAYOUTS.items()
    )
    found = ", ".join(sorted(p.name for p in directory.iterdir())[:20]) or "nothing"
    raise StarlingError(f"{directory} is not a MovieLens directory: expected {expected}; found {found}")


# --------------------------------------------------------------------------------------------- field checks
SOURCE_COLUMN_NAMES = {"userId": "user_id", "movieId": "movie_id", "imdbId": "imdb_id", "tmdbId": "tmdb_id"}


def _rename_source_columns(checker: RowChecker) -> None:
    """CSV headers say userId / movieId; the rest of the code says user_id / movie_id."""
    checker.rows = checker.rows.rename(SOURCE_COLUMN_NAMES, strict=False)


def check_ids(checker: RowChecker, *columns: str) -> None:
    """Each id column must hold a positive integer; it becomes Int64."""
    for column in columns:
        as_int = pl.col(column).str.strip_chars().cast(pl.Int64, strict=False)
        what = column.replace("_", " ")
        checker.reject(
            as_int.is_null() | (as_int <= 0),
            "bad id",
            pl.lit(f"{what} ") + quoted(column) + pl.lit(" is not a positive integer"),
        )
        checker.rows = checker.rows.with_columns(as_int.alias(column))


def check_timestamp(checker: RowChecker) -> None:
    """``timestamp`` (seconds since 1970) must be an integer in 0..9999-12-31; it becomes ``event_timestamp``."""
    seconds = pl.col("timestamp").str.strip_chars().cast(pl.Int64, strict=False)
    checker.reject(
        seconds.is_null(),
        "bad timestamp",
        pl.lit("timestamp ")
        + quoted("timestamp")
        + pl.lit(" is not an integer number of seconds since 1970"),
    )
    checker.reject(seconds < 0, "bad timestamp", pl.format("timestamp {} is negative", pl.col("timestamp")))
    checker.reject(
        seconds > MAX_TIMESTAMP_S,
        "bad timestamp",
        pl.format("timestamp {} is after year 9999", pl.col("timestamp")),
    )
    checker.rows = checker.rows.with_columns(
        pl.from_epoch(seconds, "s").dt.replace_time_zone("UTC").alias("event_timestamp")
    ).drop("timestamp")


def check_known_movies(checker: RowChecker, movie_ids: pl.Series, movies_file: str) -> None:
    checker.reject(
        ~pl.col("movie_id").is_in(movie_ids.implode()),
        "unknown movie",
        pl.format("movie id {} is not in {}", pl.col("movie_id"), pl.lit(movies_file)),
    )


def check_unique(checker: RowChecker, keys: list[str], kind: str, what: pl.Expr) -> None:
    """Reject every repeat of ``keys`` after its first occurrence (by line)."""
    checker.rows = checker.rows.with_columns(pl.col("line").min().over(keys).alias("first_line"))
    checker.reject(
        pl.col("line") != pl.col("first_line"),
        kind,
        pl.format("{} again (first at line {})", what, pl.col("first_line")),
    )
    checker.rows = checker.rows.drop("first_line")


# -------------------------------------------------------------------------------------------------- tables
def parse_ratings(checker: RowChecker, movie_ids: pl.Series, movies_file: str) -> pl.DataFrame:
    """Canonical ratings (unsorted) from the still-good rows; rejects bad ones."""
    _rename_source_columns(checker)
    check_ids(checker, "user_id", "movie_id")
    rating = pl.col("rating").str.strip_chars().cast(pl.Float64, strict=False)
    checker.reject(
        rating.is_null() | rating.is_nan(),
        "bad rating",
        pl.lit("rating ") + quoted("rating") + pl.lit(" is not a number"),
    )
    checker.reject(
        ~rating.is_between(MIN_RATING, MAX_RATING),
        "rating out of range",
        pl.format("rating {} outside 0.5..5", pl.col("rating")),
    )
    checker.reject(
        (rating * 2).round() != rating * 2,
        "rating not a multiple of 0.5",
        pl.format("rating {} is not a multiple of 0.5", pl.col("rating")),
    )
    checker.rows = checker.rows.with_columns(rating.cast(pl.Float32))
    check_timestamp(checker)
    check_known_movies(checker, movie_ids, movies_file)
    check_unique(
        checker,
        ["user_id", "movie_id"],
        "duplicate rating",
        pl.format("user {} rated movie {}", pl.col("user_id"), pl.col("movie_id")),
    )
    return checker.rows.select("user_id", "movie_id", "rating", "event_timestamp")


def parse_movies(checker: RowChecker, layout: Layout) -> pl.DataFrame:
    """Canonical movies from the still-good rows: title without its year, release_year, genres as a list."""
    _rename_source_columns(checker)
    check_ids(checker, "movie_id")
    check_unique(checker, ["movie_id"], "duplicate movie id", pl.format("movie id {}", pl.col("movie_id")))
    checker.reject(pl.col("title").str.strip_chars() == "", "missing title", "empty title")
    title, year_from_title = split_title_year(pl.col("title"))
    if layout.name == "100k":
        genres = _check_genre_flags(checker)
        release_date = pl.col("release_date").str.strip_chars()
        parsed_date = release_date.str.to_date("%d-%b-%Y", strict=False)
        checker.reject(
            (release_date != "") & parsed_date.is_null(),
            "bad release date",
            pl.lit("release date ") + quoted("release_date") + pl.lit(" is not like 01-Jan-1995"),
        )
        year = year_from_title.fill_null(parsed_date.dt.year().cast(pl.Int32))
    else:
        checker.reject(
            pl.col("genres").str.strip_chars() == "",
            "missing genres",
            f"empty genres (MovieLens writes {NO_GENRES!r} for none)",
        )
        genres = parse_genres(pl.col("genres"))
        year = year_from_title
    return checker.rows.select(
        "movie_id", title.alias("title"), year.alias("release_year"), genres.alias("genres")
    )


def parse_links(checker: RowChecker, movie_ids: pl.Series, movies_file: str) -> pl.DataFrame:
    _rename_source_columns(checker)
    check_ids(checker, "movie_id")
    imdb = pl.col("imdb_id").str.strip_chars()
    checker.reject(
        ~imdb.str.contains(r"^\d*$"),
        "bad id",
        pl.lit("imdb id ") + quoted("imdb_id") + pl.lit(" is not digits"),
    )
    tmdb_text = pl.col("tmdb_id").str.strip_chars()
    tmdb = tmdb_text.cast(pl.Int64, strict=False)
    checker.reject(
        (tmdb_text != "") & tmdb.is_null(),
        "bad id",
        pl.lit("tmdb id ") + quoted("tmdb_id") + pl.lit(" is not an integer"),
    )
    check_known_movies(checker, movie_ids, movies_file)
    check_unique(checker, ["movie_id"], "duplicate movie id", pl.format("movie id {}", pl.col("movie_id")))
    return checker.rows.select(
        "movie_id",
        pl.when(imdb != "").then(imdb).alias("imdb_id"),
        tmdb.alias("tmdb_id"),
    )


def parse_tags(checker: RowChecker, movie_ids: pl.Series, movies_file: str) -> pl.DataFrame:
    _rename_source_columns(checker)
    check_ids(checker, "user_id", "movie_id")
    check_timestamp(checker)
    check_known_movies(checker, movie_ids, movies_file)
    return checker.rows.select("user_id", "movie_id", "tag", "event_timestamp")


# ------------------------------------------------------------------------------------------ title, genres
def split_title_year(title: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """``"Seven (a.k.a. Se7en) (1995) "`` -> (``"Seven (a.k.a. Se7en)"``, 1995); no year -> (title, null)."""
    stripped = title.str.strip_chars()
    parts = stripped.str.extract_groups(TITLE_YEAR_PATTERN)
    bare_title = parts.struct.field("1")
    year = parts.struct.field("2").cast(pl.Int32)
    has_title = bare_title.is_not_null() & (bare_title != "")
    return pl.when(has_title).then(bare_title).otherwise(stripped), pl.when(has_title).then(year)


def parse_genres(genres: pl.Expr) -> pl.Expr:
    """``"Action|Children's"`` -> ["Action", "Children"] (ml-1m's spelling); ``"(no genres listed)"`` -> []."""
    names = (
        genres.str.strip_chars()
        .str.split("|")
        .list.eval(pl.element().str.strip_chars().replace(GENRE_ALIASES))
    )
    return names.list.eval(pl.element().filter((pl.element() != NO_GENRES) & (pl.element() != "")))


def _check_genre_flags(checker: RowChecker) -> pl.Expr:
    """Validate ml-100k's 0/1 genre flags; returns the expression of the genres list."""
    for genre in GENRES_100K:  # a loop over the 19 columns
        checker.reject(
            ~pl.col(genre).str.strip_chars().is_in(["0", "1"]),
            "bad genre flag",
            pl.lit(f"genre flag for {genre} is ") + quoted(genre) + pl.lit(", not 0 or 1"),
        )
    flagged = [
        pl.when(pl.col(genre).str.strip_chars() == "1").then(pl.lit(genre))
        for genre in GENRES_100K
        if genre != "unknown"
    ]
    return pl.concat_list(flagged).list.drop_nulls()


# ------------------------------------------------------------------------------------------- whole source
@dataclass
class SourceTables:
    """A MovieLens directory read and checked: canonical frames, rows dropped per file and kind, encodings."""

    layout: Layout
    tables: dict[str, pl.DataFrame]
    skipped: dict[str, dict[str, int]]
    encodings: dict[str, str]


def load_source(directory: Path, on_bad: OnBad) -> SourceTables:
    """Read and check every table of the MovieLens ``directory`` (movies first: the others refer to it)."""
    layout = detect_layout(directory)
    tables: dict[str, pl.DataFrame] = {}
    skipped: dict[str, dict[str, int]] = {}
    encodings: dict[str, str] = {}
    movies_file = layout.files["movies"].name
    movie_ids = pl.Series("movie_id", [], dtype=pl.Int64)
    for table in ("movies", "ratings", "links", "tags"):
        source_file = layout.files.get(table)
        if source_file is None or not (directory / source_file.name).is_file():
            continue
        checker, encodings[source_file.name] = read_table(
            directory / source_file.name, source_file.table_format
        )
        if table == "movies":
            frame = parse_movies(checker, layout)
            movie_ids = frame["movie_id"]
        elif table == "ratings":
            frame = parse_ratings(checker, movie_ids, movies_file)
        elif table == "links":
            frame = parse_links(checker, movie_ids, movies_file)
        else:
            frame = parse_tags(checker, movie_ids, movies_file)
        counts = checker.enforce(on_bad)
        if counts:
            skipped[source_file.name] = counts
        tables[table] = frame
    for table in REQUIRED_TABLES:
        if tables[table].height == 0:
            raise StarlingError(f"{directory / layout.files[table].name}: no {table} left to ingest")
    return SourceTables(layout, tables, skipped, encodings)
