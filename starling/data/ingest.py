"""``starling data ingest SOURCE --out WORKDIR``: any MovieLens source into the canonical parquet contract.

SOURCE is a MovieLens directory (any official layout), a dataset name (``ml-latest-small``, ``ml-1m``...: a
local copy, else downloaded and checksum-verified), or ``synthetic[:N]``. Everything is read and checked before
anything is written, and each file is written atomically, so a failed ingest leaves no half-written file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from starling.data.canonical import (
    OPTIONAL_TABLES,
    canonical_path,
    to_canonical,
    write_parquet_atomic,
)
from starling.data.datasets import resolve_dataset
from starling.data.movielens import load_source
from starling.data.synthetic import generate_synthetic, parse_synthetic_source
from starling.data.validation import check_on_bad, describe_counts
from starling.errors import StarlingError
from starling.progress import progress


@dataclass
class IngestReport:
    """What an ingest produced and what it dropped."""

    source: str
    layout: str  # "csv", "dat", "100k" or "synthetic"
    out: Path
    n_ratings: int
    n_users: int
    n_movies: int  # the catalog (movies.parquet), rated or not
    n_rated_movies: int
    first_rating: datetime | None
    last_rating: datetime | None
    n_links: int | None = None
    n_tags: int | None = None
    source_dir: Path | None = None
    encodings: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> kind -> rows dropped
    seconds: float = 0.0

    @property
    def n_skipped(self) -> int:
        return sum(sum(kinds.values()) for kinds in self.skipped.values())

    def summary(self) -> str:
        where = f" ({self.source_dir})" if self.source_dir else ""
        lines = [
            f"ingested {self.source}{where}, layout {self.layout}, into {self.out} in {self.seconds:.1f}s",
            f"  ratings: {self.n_ratings:,} by {self.n_users:,} users on {self.n_rated_movies:,} movies",
            f"  movies:  {self.n_movies:,} in the catalog",
        ]
        if self.first_rating is not None and self.last_rating is not None:
            lines.append(
                f"  time:    {self.first_rating:%Y-%m-%d %H:%M:%S} .. {self.last_rating:%Y-%m-%d %H:%M:%S} UTC"
            )
        if self.n_links is not None:
            lines.append(f"  links:   {self.n_links:,}")
        if self.n_tags is not None:
            lines.append(f"  tags:    {self.n_tags:,}")
        latin1 = sorted(name for name, encoding in self.encodings.items() if encoding != "utf-8")
        if latin1:
            lines.append(f"  decoded as latin-1: {', '.join(latin1)}")
        if not self.skipped:
            lines.append("  skipped: none")
        for file_name, counts in sorted(self.skipped.items()):
            total = sum(counts.values())
            lines.append(
                f"  {file_name}: skipped {total:,} row{'s' if total != 1 else ''}: {describe_counts(counts)}"
            )
        return "\n".join(lines)


def ingest(source: str, out: Path, on_bad: str = "error") -> IngestReport:
    """Ingest ``source`` into canonical parquet files in ``out``; see the module docstring."""
    policy = check_on_bad(on_bad)
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StarlingError(f"--out {out} exists and is not a directory")
    n_ratings = parse_synthetic_source(source)
    if n_ratings is not None:
        with progress("ingest (synthetic)", unit="ratings") as step:
            stats = generate_synthetic(n_ratings, out)
            step.update(stats.n_ratings, users=stats.n_users, movies=stats.n_movies)
        _remove_stale_tables(out, present=())
        return IngestReport(
            source=source,
            layout="synthetic",
            out=out,
            n_ratings=stats.n_ratings,
            n_users=stats.n_users,
            n_movies=stats.n_movies,
            n_rated_movies=stats.n_rated_movies,
            first_rating=stats.first_rating,
            last_rating=stats.last_rating,
            seconds=time.perf_counter() - started,
        )

    directory = resolve_source(source)
    with progress("ingest", unit="rows") as step:
        loaded = load_source(directory, policy)
        out.mkdir(parents=True, exist_ok=True)
        for table, frame in loaded.tables.items():
            write_parquet_atomic(to_canonical(frame, table), canonical_path(out, table))
            step.update(frame.height, **{table: frame.height})
        _remove_stale_tables(out, present=tuple(loaded.tables))

    ratings = loaded.tables["ratings"]
    return IngestReport(
        source=source,
        layout=loaded.layout.name,
        out=out,
        n_ratings=ratings.height,
        n_users=ratings["user_id"].n_unique(),
        n_movies=loaded.tables["movies"].height,
        n_rated_movies=ratings["movie_id"].n_unique(),
        first_rating=ratings["event_timestamp"].min(),  # type: ignore[arg-type]
        last_rating=ratings["event_timestamp"].max(),  # type: ignore[arg-type]
        n_links=loaded.tables["links"].height if "links" in loaded.tables else None,
        n_tags=loaded.tables["tags"].height if "tags" in loaded.tables else None,
        source_dir=directory,
        encodings=loaded.encodings,
        skipped=loaded.skipped,
        seconds=time.perf_counter() - started,
    )


def resolve_source(source: str) -> Path:
    """A directory path as given, else a dataset name resolved to a local or downloaded copy."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise StarlingError(
            f"{source} is a file; SOURCE must be a MovieLens directory, a dataset name or synthetic[:N]"
        )
    if "/" in source or source.startswith("."):
        raise StarlingError(f"{source}: no such directory")
    return resolve_dataset(source)


def _remove_stale_tables(out: Path, present: tuple[str, ...]) -> None:
    """Drop optional tables left by an earlier ingest of another source, so the workdir is consistent."""
    for table in OPTIONAL_TABLES:
        if table not in present:
            canonical_path(out, table).unlink(missing_ok=True)
