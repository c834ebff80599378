"""Row-level validation of source files: every bad row is either reported (``--on-bad error``) or dropped and
counted (``--on-bad skip``); nothing is dropped silently.

A :class:`RowChecker` holds the still-good rows of one file (with their 1-based physical ``line`` numbers) and
the problems found so far. Each :meth:`RowChecker.reject` call moves the rows matching a condition out of the
good rows into the problems, so every bad row is counted once, under its first problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from starling.errors import StarlingError

OnBad = Literal["error", "skip"]
ON_BAD_CHOICES: tuple[str, ...] = ("error", "skip")
PROBLEM_SCHEMA = {"line": pl.Int64, "kind": pl.String, "message": pl.String}


class BadDataError(StarlingError):
    """A source file holds bad rows; the message names the file, the first bad line and the problem."""

    def __init__(self, file_name: str, line: int, message: str, counts: dict[str, int]) -> None:
        self.file_name = file_name
        self.line = line
        self.counts = counts
        total = sum(counts.values())
        text = f"{file_name} line {line}: {message}"
        if total > 1:
            text += f" (and {total - 1} more bad rows in {file_name}; {describe_counts(counts)})"
        text += "; rerun with --on-bad skip to drop bad rows"
        super().__init__(text)


def describe_counts(counts: dict[str, int]) -> str:
    """``{"unknown movie": 2, "rating out of range": 1}`` -> ``"1 rating out of range, 2 unknown movie"``."""
    return ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))


def check_on_bad(on_bad: str) -> OnBad:
    if on_bad not in ON_BAD_CHOICES:
        raise StarlingError(f"--on-bad must be one of {', '.join(ON_BAD_CHOICES)}, not {on_bad!r}")
    return on_bad  # type: ignore[return-value]


@dataclass
class RowChecker:
    """The good rows of one source file (column ``line`` = 1-based line in the file) and its bad rows."""

    file_name: str
    rows: pl.DataFrame
    problems: list[pl.DataFrame] = field(default_factory=list)

    def reject(self, condition: pl.Expr, kind: str, message: pl.Expr | str) -> None:
        """Move the rows where ``condition`` holds (null counts as false) into the problems."""
        condition = condition.fill_null(False)
        flagged = self.rows.filter(condition)
        if flagged.height == 0:
            return
        message_expr = pl.lit(message) if isinstance(message, str) else message
        self.problems.append(
            flagged.select(
                pl.col("line").cast(pl.Int64),
                pl.lit(kind).alias("kind"),
                message_expr.cast(pl.String).alias("message"),
            )
        )
        self.rows = self.rows.filter(~condition)

    def reject_lines(self, lines: pl.Series, kind: str, message: pl.Expr | str) -> None:
        """Reject the rows whose line number is in ``lines``."""
        self.reject(pl.col("line").is_in(lines.implode()), kind, message)

    def problem_frame(self) -> pl.DataFrame:
        if not self.problems:
            return pl.DataFrame(schema=PROBLEM_SCHEMA)
        return pl.concat(self.problems).sort("line")

    def counts(self) -> dict[str, int]:
        frame = self.problem_frame()
        return dict(frame.group_by("kind").len().iter_rows())

    def enforce(self, on_bad: OnBad) -> dict[str, int]:
        """In error mode raise :class:`BadDataError` for the first bad line; return the counts by kind."""
        counts = self.counts()
        if counts and on_bad == "error":
            first = self.problem_frame().row(0, named=True)
            raise BadDataError(self.file_name, first["line"], first["message"], counts)
        return counts


def quoted(column: str | pl.Expr, max_chars: int = 40) -> pl.Expr:
    """A value for an error message: ``'abc'``, shortened when long, ``<missing>`` when null."""
    expr = pl.col(column) if isinstance(column, str) else column
    short = (
        pl.when(expr.str.len_chars() > max_chars)
        .then(expr.str.slice(0, max_chars) + pl.lit("..."))
        .otherwise(expr)
    )
    return (pl.lit("'") + short + pl.lit("'")).fill_null("<missing>")
