"""The durable event log: appends, followers, compaction into segments (crash-safe), verify, the CLI."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from starling import events
from starling.cli import cli

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _event(i: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [i],
            "movie_id": [i % 7 + 1],
            "rating": [float(i % 10) / 2 + 0.5],
            "event_timestamp": [T0 + dt.timedelta(minutes=i)],
            "kind": ["rating"],
        },
        schema_overrides=events.SCHEMAS[events.RATING_STREAM],
    )


def _write(workdir: Path, indices: range) -> list[Path]:
    return [events.append(workdir, events.RATING_STREAM, _event(i)) for i in indices]


def test_compaction_keeps_every_event_once_and_followers_do_not_reapply(tmp_path: Path) -> None:
    _write(tmp_path, range(40))
    follower = events.EventFollower(tmp_path, events.RATING_STREAM)
    assert follower.poll()["user_id"].to_list() == list(range(40))
    _write(tmp_path, range(40, 50))  # not seen by the follower yet
    before = events.read_all(tmp_path, events.RATING_STREAM)

    segment = events.compact(tmp_path, events.RATING_STREAM, min_age_s=0)
    directory = events.stream_dir(tmp_path, events.RATING_STREAM)
    assert segment is not None and [f.name for f in directory.glob("[0-9]*.parquet")] == [segment.name]
    assert events.read_all(tmp_path, events.RATING_STREAM).equals(before)
    assert follower.poll()["user_id"].to_list() == list(range(40, 50)), "only what it had not applied"
    assert follower.poll() is None
    fresh = events.EventFollower(tmp_path, events.RATING_STREAM)  # a restarted process reads it all
    assert fresh.poll()["user_id"].to_list() == list(range(50))
    assert events.EventFollower(tmp_path, events.RATING_STREAM, start_at_end=True).poll() is None


def test_a_crash_mid_compaction_or_two_compactions_never_duplicate(tmp_path: Path) -> None:
    files = _write(tmp_path, range(10))
    backup = tmp_path / "backup"
    backup.mkdir()
    for f in files[:4]:
        shutil.copy(f, backup / f.name)
    events.compact(tmp_path, events.RATING_STREAM, min_age_s=0)
    directory = events.stream_dir(tmp_path, events.RATING_STREAM)
    for f in backup.iterdir():  # as if the compactor died after writing its segment, before deleting these
        shutil.copy(f, directory / f.name)
    assert events.read_all(tmp_path, events.RATING_STREAM)["user_id"].to_list() == list(range(10))
    _write(tmp_path, range(10, 12))
    for f in backup.iterdir():  # a second compactor that read the old files too (overlapping segments)
        shutil.copy(f, directory / f.name)
    events.compact(tmp_path, events.RATING_STREAM, min_age_s=0, max_segments=100)
    assert events.read_all(tmp_path, events.RATING_STREAM)["user_id"].to_list() == list(range(12))

    for _ in range(3):  # segments fold into one once there are max_segments
        _write(tmp_path, range(100, 102))
        events.compact(tmp_path, events.RATING_STREAM, min_age_s=0, max_segments=100)
    events.compact(tmp_path, events.RATING_STREAM, min_age_s=0, max_segments=2)
    assert len(list(directory.glob("*.segment.parquet"))) == 1
    assert events.read_all(tmp_path, events.RATING_STREAM).height == 18
    report = events.verify(tmp_path, events.RATING_STREAM)
    assert report["problems"] == [] and report["events"] == 18 and report["segments"] == 1


def test_recent_files_stay_single_and_the_cli_reports(tmp_path: Path) -> None:
    _write(tmp_path, range(5))
    assert events.compact(tmp_path, events.RATING_STREAM) is None, "files younger than a minute stay"
    result = CliRunner().invoke(cli, ["events", "compact", str(tmp_path), "--min-age", "0"])
    assert (
        result.exit_code == 0
        and "ratings: 0" in result.output
        and "movies: nothing to compact" in result.output
    )
    verified = CliRunner().invoke(cli, ["events", "verify", str(tmp_path)])
    assert verified.exit_code == 0 and '"events": 5' in verified.output
    directory = events.stream_dir(tmp_path, events.RATING_STREAM)
    (directory / "99999999999999999999-1-000000.parquet").write_bytes(b"not parquet")
    broken = CliRunner().invoke(cli, ["events", "verify", str(tmp_path)])
    assert broken.exit_code == 2 and "unreadable" in broken.output


def test_files_written_before_request_id_existed_read_as_null(tmp_path: Path) -> None:
    """The ratings stream gained request_id: a file without it still reads, verifies, compacts and follows."""
    directory = events.stream_dir(tmp_path, events.RATING_STREAM)
    directory.mkdir(parents=True)
    _event(1).write_parquet(directory / "00000000000000000001-1-000000.parquet")
    follower = events.EventFollower(tmp_path, events.RATING_STREAM)
    with_id = _event(2).with_columns(request_id=pl.lit("abc123"))
    events.append(tmp_path, events.RATING_STREAM, with_id)
    events.append(tmp_path, events.RATING_STREAM, _event(3))  # a caller without it
    read = events.read_all(tmp_path, events.RATING_STREAM)
    assert read["request_id"].to_list() == [None, "abc123", None]
    assert read.schema == pl.Schema(events.SCHEMAS[events.RATING_STREAM])
    assert events.verify(tmp_path, events.RATING_STREAM)["problems"] == []
    followed = follower.poll()
    assert followed is not None and followed["request_id"].to_list() == [None, "abc123", None]
    assert events.compact(tmp_path, events.RATING_STREAM, min_age_s=0) is not None
    assert events.read_all(tmp_path, events.RATING_STREAM)["request_id"].to_list() == [None, "abc123", None]


def test_a_reader_lists_again_when_a_compaction_removed_a_listed_file(tmp_path: Path, monkeypatch) -> None:
    """The race a compaction can win: files listed, then folded into a segment and deleted before the reader
    reads them. The reader (read_all, a follower's poll) lists again and gets every event once."""
    _write(tmp_path, range(4))
    directory = events.stream_dir(tmp_path, events.RATING_STREAM)
    stale = events._log_files(directory)
    follower = events.EventFollower(tmp_path, events.RATING_STREAM)
    assert events.compact(tmp_path, events.RATING_STREAM, min_age_s=0) is not None
    listings = iter([stale, stale])
    real = events._log_files
    monkeypatch.setattr(events, "_log_files", lambda d: next(listings, None) or real(d))
    assert events.read_all(tmp_path, events.RATING_STREAM)["user_id"].to_list() == [0, 1, 2, 3]
    followed = follower.poll()
    assert followed is not None and followed["user_id"].to_list() == [0, 1, 2, 3]
