"""Columnar reading of delimited text files into string columns that keep each row's physical line number.

Files are split into lines with numpy and handed to polars as one string column, so the line number of every row
is exact (blank lines, CRLF, quoted commas and bad rows included) and every structural problem (invalid UTF-8,
wrong field count, malformed quoting) becomes a bad row of a :class:`~starling.data.validation.RowChecker`.
A header that does not match is fatal: then the whole file is not what we think it is.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from starling.data.validation import RowChecker
from starling.errors import StarlingError

Encoding = Literal["utf-8", "auto"]
UTF8_BOM = b"\xef\xbb\xbf"
SEPARATOR_STAND_IN = "\x1f"  # replaces a multi-character separator such as "::"
# One CSV field after its comma (lines get a leading comma): quoted ("" escapes a quote), unquoted, or empty.
QUOTED_FIELD_PATTERN = r',(?:"(?:[^"]|"")*"|[^,"][^,]*)?'


@dataclass(frozen=True)
class TableFormat:
    """How a source file is laid out."""

    columns: tuple[str, ...]  # names in file order; for files with a header, the exact header names
    separator: str  # "," or "\t" or "|" or "::"
    header: bool
    quoting: bool = False  # CSV double-quote quoting (ml-latest movies.csv, tags.csv)
    encoding: Encoding = "utf-8"  # "auto": UTF-8 when the file is valid UTF-8, else latin-1


def read_table(path: Path, table_format: TableFormat) -> tuple[RowChecker, str]:
    """Read ``path`` into a RowChecker of string columns named ``table_format.columns`` plus ``line``.

    Returns the checker (structural problems already rejected) and the encoding that was used.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StarlingError(f"cannot read {path}: {exc.strerror or exc}") from exc
    raw = raw.removeprefix(UTF8_BOM)
    separator = table_format.separator
    if len(separator) > 1:
        if SEPARATOR_STAND_IN.encode() in raw:
            raise StarlingError(
                f"{path.name}: holds the control character \\x1f, cannot split on {separator!r}"
            )
        raw = raw.replace(separator.encode(), SEPARATOR_STAND_IN.encode())
        separator = SEPARATOR_STAND_IN

    bad_offsets = invalid_utf8_offsets(raw, limit=1 if table_format.encoding == "auto" else None)
    encoding = "utf-8"
    bad_utf8_lines = np.empty(0, dtype=np.int64)
    if bad_offsets.size and table_format.encoding == "auto":
        raw, encoding = raw.decode("latin-1").encode("utf-8"), "latin-1"
    elif bad_offsets.size:
        newlines = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == ord("\n"))
        bad_utf8_lines = np.unique(np.searchsorted(newlines, bad_offsets)) + 1
        raw = raw.decode("utf-8", errors="replace").encode("utf-8")

    lines = split_lines(raw)
    rows = pl.DataFrame({"line": np.arange(1, lines.len() + 1, dtype=np.int64), "text": lines})
    if table_format.header:
        rows = _check_header(path.name, rows, table_format, separator)
    checker = RowChecker(path.name, rows)
    if bad_utf8_lines.size:
        checker.reject_lines(pl.Series(bad_utf8_lines), "invalid UTF-8", "invalid UTF-8 byte sequence")
    _split_fields(checker, table_format.columns, separator, table_format.quoting)
    return checker, encoding


def invalid_utf8_offsets(raw: bytes, limit: int | None = None) -> np.ndarray:
    """Byte offsets of the invalid UTF-8 sequences in ``raw`` (at most ``limit``); one C-speed pass overall."""
    offsets: list[int] = []
    if raw.isascii():
        return np.empty(0, dtype=np.int64)
    view = memoryview(raw)
    position = 0
    while limit is None or len(offsets) < limit:  # one iteration per invalid sequence, not per row
        try:
            codecs.utf_8_decode(view[position:], "strict", True)
            break
        except UnicodeDecodeError as exc:
            offsets.append(position + exc.start)
            position += exc.end
    return np.asarray(offsets, dtype=np.int64)


def split_lines(raw: bytes) -> pl.Series:
    """The lines of ``raw`` (valid UTF-8) without their ``\\n`` / ``\\r\\n`` endings, zero-copy into arrow."""
    newlines = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == ord("\n"))
    offsets = np.concatenate(([0], newlines + 1)).astype(np.int64)
    if offsets[-1] != len(raw):  # last line without a final newline
        offsets = np.append(offsets, len(raw))
    array = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(raw))
    series = pl.Series("text", array) if len(offsets) > 1 else pl.Series("text", [], dtype=pl.String)
    return series.str.strip_suffix("\n").str.strip_suffix("\r")


def _check_header(
    file_name: str, rows: pl.DataFrame, table_format: TableFormat, separator: str
) -> pl.DataFrame:
    if rows.height == 0:
        raise StarlingError(
            f"{file_name}: the file is empty; expected a header {','.join(table_format.columns)}"
        )
    header = [name.strip().strip('"') for name in rows["text"][0].split(separator)]
    expected = list(table_format.columns)
    if header != expected:
        missing = [name for name in expected if name not in header]
        extra = [name for name in header if name not in expected]
        details = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"extra {', '.join(extra)}" if extra else "",
                "columns out of order" if not missing and not extra else "",
            )
            if part
        )
        raise StarlingError(
            f"{file_name} line 1: header is {separator.join(header)!r}, expected {','.join(expected)!r} ({details})"
        )
    return rows.slice(1)


def _split_fields(checker: RowChecker, columns: tuple[str, ...], separator: str, quoting: bool) -> None:
    """Replace the ``text`` column by one string column per field, rejecting rows that do not split right."""
    expected = len(columns)
    checker.reject(pl.col("text") == "", "wrong field count", f"blank line, expected {expected} fields")
    if quoting:
        checker.rows = checker.rows.with_columns(
            (pl.lit(",") + pl.col("text")).str.extract_all(QUOTED_FIELD_PATTERN).alias("fields")
        )
        matched_bytes = pl.col("fields").list.eval(pl.element().str.len_bytes()).list.sum()
        checker.reject(
            matched_bytes != pl.col("text").str.len_bytes() + 1,
            "malformed quoting",
            "malformed quoting (a quote inside an unquoted field, or a quoted field not closed on this line)",
        )
        field_count = pl.col("fields").list.len()
    else:
        field_count = pl.col("text").str.count_matches(separator, literal=True) + 1
    checker.reject(
        field_count != expected,
        "wrong field count",
        pl.format("expected {} fields, found {}", pl.lit(expected), field_count),
    )
    if quoting:
        values = [
            _unquote(pl.col("fields").list.get(i).str.strip_prefix(",")).alias(c)
            for i, c in enumerate(columns)
        ]
        checker.rows = checker.rows.select("line", *values)
    else:
        checker.rows = (
            checker.rows.select("line", pl.col("text").str.splitn(separator, expected).alias("fields"))
            .unnest("fields")
            .rename({f"field_{i}": name for i, name in enumerate(columns)})
        )


def _unquote(field: pl.Expr) -> pl.Expr:
    is_quoted = field.str.starts_with('"')
    inner = field.str.slice(1, field.str.len_chars() - 2).str.replace_all('""', '"', literal=True)
    return pl.when(is_quoted).then(inner).otherwise(field)
