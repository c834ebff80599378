"""`starling data ingest`: each MovieLens layout, the real ml-latest-small, and every kind of bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from starling.cli import cli
from starling.data.canonical import SCHEMAS
from starling.data.fixtures import (
    EXPECTED_MOVIES,
    RATINGS_CSV,
    write_100k_layout,
    write_csv_layout,
    write_dat_layout,
)
from starling.data.ingest import ingest
from starling.data.movielens import split_title_year
from starling.data.validation import BadDataError
from starling.errors import StarlingError


def read(workdir: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(workdir / f"{table}.parquet")


def assert_canonical(workdir: Path, tables: tuple[str, ...]) -> None:
    for table in tables:
        assert pq.read_schema(workdir / f"{table}.parquet").remove_metadata() == SCHEMAS[table], table
    ratings = read(workdir, "ratings")
    assert ratings.equals(ratings.sort("event_timestamp", "user_id", "movie_id"))


# ------------------------------------------------------------------------------------------------- layouts
def test_csv_layout(tmp_path: Path) -> None:
    source = write_csv_layout(tmp_path / "src")
    report = ingest(str(source), tmp_path / "out")

    assert_canonical(tmp_path / "out", ("ratings", "movies", "links", "tags"))
    movies = read(tmp_path / "out", "movies")
    assert {row[0]: row[1:] for row in movies.iter_rows()} == EXPECTED_MOVIES
    ratings = read(tmp_path / "out", "ratings")
    assert ratings.row(0) == (2, 1, 5.0, datetime.fromtimestamp(964980000, UTC))
    assert ratings.height == len(RATINGS_CSV.splitlines()) - 1
    links = read(tmp_path / "out", "links")
    assert links.rows() == [(1, "0114709", 862), (2, "0113497", None)]
    assert read(tmp_path / "out", "tags")["tag"].to_list() == ["funny, clever", "anime"]
    assert (report.n_ratings, report.n_users, report.n_movies, report.n_rated_movies) == (6, 3, 8, 5)
    assert report.skipped == {}
    assert "skipped: none" in report.summary()


def test_dat_layout_decodes_latin1(tmp_path: Path) -> None:
    report = ingest(str(write_dat_layout(tmp_path / "src")), tmp_path / "out")

    assert_canonical(tmp_path / "out", ("ratings", "movies", "tags"))
    movies = read(tmp_path / "out", "movies")
    assert movies.rows() == [
        (1, "Toy Story", 1995, ["Animation", "Children", "Comedy"]),
        (2, "Misérables, Les", 1995, ["Drama", "War"]),
        (3, "Babylon 5", None, ["Sci-Fi"]),
    ]
    assert read(tmp_path / "out", "ratings")["rating"].to_list() == [5.0, 4.0, 3.0]
    assert report.encodings["movies.dat"] == "latin-1"
    assert "decoded as latin-1: movies.dat" in report.summary()
    assert not (tmp_path / "out" / "links.parquet").exists()


def test_100k_layout(tmp_path: Path) -> None:
    ingest(str(write_100k_layout(tmp_path / "src")), tmp_path / "out")

    assert_canonical(tmp_path / "out", ("ratings", "movies"))
    movies = read(tmp_path / "out", "movies")
    assert movies.rows() == [
        (1, "Toy Story", 1995, ["Animation", "Children", "Comedy"]),
        (2, "Misérables, Les", 1995, ["Drama"]),
        (267, "unknown", None, []),
        (300, "Air Force One", 1997, ["Action"]),  # no year in the title: from the release date
    ]
    assert read(tmp_path / "out", "ratings").sort("user_id")["user_id"].to_list() == [22, 186, 196]


def test_a_new_ingest_removes_tables_the_new_source_lacks(tmp_path: Path) -> None:
    ingest(str(write_csv_layout(tmp_path / "csv")), tmp_path / "out")
    ingest(str(write_100k_layout(tmp_path / "100k")), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["movies.parquet", "ratings.parquet"]


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Toy Story (1995)", ("Toy Story", 1995)),
        ("Babylon 5", ("Babylon 5", None)),
        ("(500) Days of Summer (2009)", ("(500) Days of Summer", 2009)),
        ("From Dusk Till Dawn 2 (1999) ", ("From Dusk Till Dawn 2", 1999)),
        ("Seven (a.k.a. Se7en) (1995)", ("Seven (a.k.a. Se7en)", 1995)),
        ("Some Series (2007-)", ("Some Series", 2007)),
        ("Fawlty Towers (1975-1979)", ("Fawlty Towers", 1975)),
        ("Death Note (2006–2007)", ("Death Note", 2006)),
        ("1984 (1956)", ("1984", 1956)),
        ("(1995)", ("(1995)", None)),
    ],
)
def test_split_title_year(title: str, expected: tuple[str, int | None]) -> None:
    title_expr, year_expr = split_title_year(pl.col("t"))
    assert pl.DataFrame({"t": [title]}).select(title_expr, year_expr.alias("y")).row(0) == expected


def test_real_ml_latest_small(ml_small_dir: Path, tmp_path: Path) -> None:
    # The shared copy carries one planted bad row (a rating of an unknown movie); skip drops only that.
    report = ingest(str(ml_small_dir), tmp_path, on_bad="skip")

    assert_canonical(tmp_path, ("ratings", "movies", "links", "tags"))
    ratings, movies = read(tmp_path, "ratings"), read(tmp_path, "movies")
    assert (ratings.height, movies.height) == (100_836, 9_742)
    assert (report.n_users, report.n_links) == (610, 9_742)
    assert ratings.null_count().row(0) == (0, 0, 0, 0)
    assert ratings.select(pl.struct("user_id", "movie_id").is_duplicated().sum()).item() == 0
    assert set(ratings["movie_id"].unique()) <= set(movies["movie_id"])
    assert set(report.skipped) <= {"ratings.csv"}
    assert set(report.skipped.get("ratings.csv", {})) <= {"unknown movie"}
    toy_story = movies.filter(pl.col("movie_id") == 1).row(0)
    assert toy_story[1:3] == ("Toy Story", 1995)


# ---------------------------------------------------------------------------------------------- bad input
def replace_line(path: Path, line: int, text: str | bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = text if isinstance(text, bytes) else text.encode()
    path.write_bytes(b"\n".join(lines))


def append_line(path: Path, text: str | bytes) -> None:
    with path.open("ab") as handle:
        handle.write(text if isinstance(text, bytes) else text.encode())
        handle.write(b"\n")


# (file, appended row, expected message after "<file> ", kind). The fixture's ratings.csv has 7 lines, movies.csv
# 9, tags.csv and links.csv 3, so the appended row is line 8, 10, 4 and 4.
BAD_ROWS = [
    ("ratings.csv", "1,5,4.0,964982703,extra", "line 8: expected 4 fields, found 5", "wrong field count"),
    ("ratings.csv", "1,5,4.0", "line 8: expected 4 fields, found 3", "wrong field count"),
    ("ratings.csv", "", "line 8: blank line, expected 4 fields", "wrong field count"),
    ("ratings.csv", "abc,5,4.0,964982703", "line 8: user id 'abc' is not a positive integer", "bad id"),
    ("ratings.csv", "1,5.5,4.0,964982703", "line 8: movie id '5.5' is not a positive integer", "bad id"),
    ("ratings.csv", "1,5,7.0,964982703", "line 8: rating 7.0 outside 0.5..5", "rating out of range"),
    ("ratings.csv", "1,5,0,964982703", "line 8: rating 0 outside 0.5..5", "rating out of range"),
    ("ratings.csv", "1,5,good,964982703", "line 8: rating 'good' is not a number", "bad rating"),
    (
        "ratings.csv",
        "1,5,3.3,964982703",
        "line 8: rating 3.3 is not a multiple of 0.5",
        "rating not a multiple of 0.5",
    ),
    ("ratings.csv", "1,5,3.0,yesterday", "line 8: timestamp 'yesterday' is not an integer", "bad timestamp"),
    ("ratings.csv", "1,5,3.0,-5", "line 8: timestamp -5 is negative", "bad timestamp"),
    ("ratings.csv", "1,999,3.0,964982703", "line 8: movie id 999 is not in movies.csv", "unknown movie"),
    (
        "ratings.csv",
        "1,2,3.0,964982999",
        "line 8: user 1 rated movie 2 again (first at line 3)",
        "duplicate rating",
    ),
    ("ratings.csv", b"1,5,3.0,96498\xff2703", "line 8: invalid UTF-8", "invalid UTF-8"),
    ("movies.csv", "9,Café (1990),Drama".encode("latin-1"), "line 10: invalid UTF-8", "invalid UTF-8"),
    (
        "movies.csv",
        "2,Another Two (1990),Drama",
        "line 10: movie id 2 again (first at line 3)",
        "duplicate movie id",
    ),
    ("movies.csv", '9,"Unclosed (1990),Drama', "line 10: malformed quoting", "malformed quoting"),
    ("movies.csv", "x9,Film (1990),Drama", "line 10: movie id 'x9' is not a positive integer", "bad id"),
    ("movies.csv", "9,Film (1990),", "line 10: empty genres", "missing genres"),
    ("tags.csv", "3,999,sad,1445714996", "line 4: movie id 999 is not in movies.csv", "unknown movie"),
    ("links.csv", "3,tt123,1", "line 4: imdb id 'tt123' is not digits", "bad id"),
]

BAD_ROW_IDS = [f"{file_name}:{message.split(': ', 1)[1]}" for file_name, _, message, _ in BAD_ROWS]


def make_bad_source(tmp_path: Path, file_name: str, bad_row: str | bytes) -> Path:
    source = write_csv_layout(tmp_path / "src")
    append_line(source / file_name, bad_row)
    return source


@pytest.mark.parametrize(("file_name", "bad_row", "message", "kind"), BAD_ROWS, ids=BAD_ROW_IDS)
def test_bad_row_is_an_error_naming_file_line_and_problem(
    tmp_path: Path, file_name: str, bad_row: str | bytes, message: str, kind: str
) -> None:
    source = make_bad_source(tmp_path, file_name, bad_row)
    with pytest.raises(BadDataError) as raised:
        ingest(str(source), tmp_path / "out")
    assert str(raised.value).startswith(f"{file_name} {message}")
    assert raised.value.counts == {kind: 1}
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("file_name", "bad_row", "message", "kind"), BAD_ROWS, ids=BAD_ROW_IDS)
def test_bad_row_is_dropped_and_counted_with_skip(
    tmp_path: Path, file_name: str, bad_row: str | bytes, message: str, kind: str
) -> None:
    source = make_bad_source(tmp_path, file_name, bad_row)
    report = ingest(str(source), tmp_path / "out", on_bad="skip")

    assert report.skipped == {file_name: {kind: 1}}
    assert f"{file_name}: skipped 1 row: 1 {kind}" in report.summary()
    clean = {"ratings.csv": 6, "movies.csv": 8, "tags.csv": 2, "links.csv": 2}[file_name]
    table = {"ratings.csv": "ratings", "movies.csv": "movies", "tags.csv": "tags", "links.csv": "links"}[
        file_name
    ]
    assert read(tmp_path / "out", table).height == clean


def test_first_of_many_bad_rows_is_reported_with_the_count(tmp_path: Path) -> None:
    source = write_csv_layout(tmp_path / "src")
    for row in ("1,5,9.0,964982703", "1,999,3.0,964982703", "1,5,3.0,-1", "2,8,6.0,964982703"):
        append_line(source / "ratings.csv", row)
    with pytest.raises(BadDataError, match=r"^ratings\.csv line 8: rating 9\.0 outside 0\.5\.\.5") as raised:
        ingest(str(source), tmp_path / "out")
    assert (
        "(and 3 more bad rows in ratings.csv; 1 bad timestamp, 2 rating out of range, 1 unknown movie)"
        in str(raised.value)
    )


def test_duplicates_keep_the_first_occurrence(tmp_path: Path) -> None:
    source = write_csv_layout(tmp_path / "src")
    append_line(source / "ratings.csv", "1,1,1.0,964982999")  # user 1 rated movie 1 with 4.0 on line 2
    ingest(str(source), tmp_path / "out", on_bad="skip")
    ratings = read(tmp_path / "out", "ratings")
    assert ratings.filter((pl.col("user_id") == 1) & (pl.col("movie_id") == 1))["rating"].to_list() == [4.0]


def test_skipping_a_bad_movie_also_drops_and_counts_its_ratings(tmp_path: Path) -> None:
    source = write_csv_layout(tmp_path / "src")
    replace_line(
        source / "movies.csv", 6, "5x,Seven (a.k.a. Se7en) (1995),Mystery|Thriller"
    )  # movie 5 is rated once
    report = ingest(str(source), tmp_path / "out", on_bad="skip")
    assert report.skipped == {"movies.csv": {"bad id": 1}, "ratings.csv": {"unknown movie": 1}}
    assert report.n_ratings == 5


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("userId,movieId,rating", "missing timestamp"),
        ("userId,movieId,rating,timestamp,comment", "extra comment"),
        ("movieId,userId,rating,timestamp", "columns out of order"),
    ],
)
@pytest.mark.parametrize("on_bad", ["error", "skip"])
def test_wrong_header_is_always_an_error(tmp_path: Path, header: str, problem: str, on_bad: str) -> None:
    source = write_csv_layout(tmp_path / "src")
    replace_line(source / "ratings.csv", 1, header)
    with pytest.raises(StarlingError, match=rf"^ratings\.csv line 1: header is .*\({problem}\)"):
        ingest(str(source), tmp_path / "out", on_bad=on_bad)


def test_bad_genre_flag_in_100k(tmp_path: Path) -> None:
    source = write_100k_layout(tmp_path / "src")
    append_line(source / "u.item", "301|Bad Flags (1997)|01-Jan-1997||url|" + "|".join(["0"] * 18 + ["2"]))
    with pytest.raises(BadDataError, match=r"^u\.item line 5: genre flag for Western is '2', not 0 or 1"):
        ingest(str(source), tmp_path / "out")
    assert ingest(str(source), tmp_path / "out", on_bad="skip").skipped == {"u.item": {"bad genre flag": 1}}


def test_failed_ingest_leaves_earlier_files_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest(str(write_csv_layout(tmp_path / "good")), out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    bad = write_csv_layout(tmp_path / "bad")
    append_line(bad / "ratings.csv", "1,5,70,964982703")
    with pytest.raises(BadDataError):
        ingest(str(bad), out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_unknown_source_and_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(
        StarlingError, match=r"is not a MovieLens directory: expected csv: ratings\.csv \+ movies\.csv"
    ):
        ingest(str(tmp_path / "empty"), tmp_path / "out")
    with pytest.raises(StarlingError, match="not a directory, a MovieLens dataset name"):
        ingest("no-such-thing", tmp_path / "out")
    with pytest.raises(StarlingError, match="--on-bad must be one of error, skip"):
        ingest(str(tmp_path / "empty"), tmp_path / "out", on_bad="ignore")


def test_cli_prints_report_and_errors(tmp_path: Path) -> None:
    source = write_csv_layout(tmp_path / "src")
    runner = CliRunner()
    ok = runner.invoke(cli, ["data", "ingest", str(source), "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert "ratings: 6 by 3 users on 5 movies" in ok.output

    append_line(source / "ratings.csv", "1,5,7.0,964982703")
    failed = runner.invoke(cli, ["data", "ingest", str(source), "--out", str(tmp_path / "out")])
    assert failed.exit_code == 2
    assert "error: ratings.csv line 8: rating 7.0 outside 0.5..5" in failed.output
    skipped = runner.invoke(
        cli, ["data", "ingest", str(source), "--out", str(tmp_path / "o2"), "--on-bad", "skip"]
    )
    assert "ratings.csv: skipped 1 row: 1 rating out of range" in skipped.output
