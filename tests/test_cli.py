"""The CLI's own behaviour: stack bookkeeping for `down`/`status` without WORKDIR, friendly errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from starling import local
from starling.cli import cli


def test_down_without_a_workdir_finds_the_stacks_this_user_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    assert local.running_stacks() == []
    assert "no services were running" in CliRunner().invoke(cli, ["down"]).output
    alive, gone = tmp_path / "alive", tmp_path / "gone"
    for workdir, pid in ((alive, os.getpid()), (gone, 2**22 + 12345)):  # this process stands in for a service
        (workdir / "run").mkdir(parents=True)
        state = [{"name": "recommend", "pid": pid, "port": 1, "metrics_port": 2, "log": "x"}]
        (workdir / "run" / "services.json").write_text(json.dumps(state))
        local._record_stack(workdir, running=True)
    assert local.running_stacks() == [alive], "a stack whose processes are gone is dropped"
    local._record_stack(alive, running=False)
    assert local.running_stacks() == []


def test_a_stack_that_is_down_gets_a_hint_not_a_grpc_error(free_port) -> None:
    target = f"127.0.0.1:{free_port()}"
    for command in (["recommend", "1", "--target", target], ["similar", "1", "--json", "--target", target]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2
        assert f"nothing listens on {target} — run `starling up WORKDIR`" in result.output


def _run(args: list[str], env: dict[str, str], stderr_tty: bool = False) -> tuple[int, str]:
    """Run the real CLI in a subprocess; stderr to a pipe, or to a pseudo-terminal when ``stderr_tty``."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    command = [sys.executable, "-m", "starling", *args]
    if not stderr_tty:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal has a width
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=follower) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        return process.wait(timeout=300), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_long_steps_report_progress_one_line_each_off_a_terminal_and_a_bar_on_one(tmp_path: Path) -> None:
    from conftest import ML_LATEST_SMALL

    env = {**os.environ, "STARLING_PROGRESS": "1"}
    code, stderr = _run(
        ["data", "ingest", str(ML_LATEST_SMALL), "--out", str(tmp_path), "--on-bad", "skip"], env
    )
    assert code == 0, stderr
    ingest = [line for line in stderr.splitlines() if line.startswith("ingest: ")]
    assert len(ingest) == 1 and " rows in " in ingest[0] and "rows/s" in ingest[0], stderr
    assert "ratings 100,836" in ingest[0] and "movies 9,742" in ingest[0]
    assert "\r" not in stderr, "no bar redraws in a log"

    code, stderr = _run(["features", "build", str(tmp_path)], env)
    assert code == 0, stderr
    build = [line for line in stderr.splitlines() if line.startswith("features build: ")]
    assert (
        len(build) == 1
        and build[0].startswith("features build: 5/5 stages in ")
        and "ratings_per_s" in build[0]
    )

    code, stderr = _run(["features", "build", str(tmp_path)], {**env, "STARLING_PROGRESS": "0"})
    assert code == 0 and "features build: " not in stderr

    code, terminal = _run(["features", "build", str(tmp_path)], env, stderr_tty=True)
    assert code == 0 and "features build:" in terminal and "stages/s]" in terminal, terminal[-2000:]


def test_bench_serve_compare_needs_a_bench_report(tmp_path: Path) -> None:
    bad = tmp_path / "baseline.json"
    bad.write_text("not json")
    result = CliRunner().invoke(cli, ["bench", "serve", "--workdir", str(tmp_path), "--compare", str(bad)])
    assert result.exit_code != 0 and "not a `bench serve` JSON report" in result.output, result.output


def test_features_wait_returns_once_this_revisions_features_are_there(tmp_path: Path) -> None:
    import threading
    import time

    spec = tmp_path / "features" / "feature_spec.json"
    late = CliRunner().invoke(cli, ["features", "wait", str(tmp_path), "--timeout", "0.3"])
    assert late.exit_code == 2 and "no features built after 0" in late.output, late.output
    spec.parent.mkdir()
    spec.write_text("{}")
    stale = CliRunner().invoke(
        cli, ["features", "wait", str(tmp_path), "--since", str(time.time() + 60), "--timeout", "0.3"]
    )
    assert stale.exit_code == 2, "features older than --since do not count"
    since = time.time()
    threading.Timer(0.5, lambda: spec.write_text("{}")).start()  # a build lands while it waits
    fresh = CliRunner().invoke(
        cli, ["features", "wait", str(tmp_path), "--since", str(since - 0.01), "--timeout", "10"]
    )
    assert fresh.exit_code == 0 and "features ready" in fresh.output, fresh.output


def test_a_service_whose_port_was_taken_starts_the_stack_again_on_other_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """free_port's port may be taken before the service binds it; up_on_free_ports then picks new ports."""
    from starling.config import Settings

    taken = tmp_path / "recall.log"
    taken.write_text("RuntimeError: Failed to bind to address 127.0.0.1:39127; set GRPC_VERBOSITY=debug\n")
    crashed = tmp_path / "ranker.log"
    crashed.write_text("ValueError: models/current has no ranker\n")
    assert isinstance(
        local.start_failure(local.ServiceProcess("recall", 1, 39127, 40127, str(taken), 1)), local.PortTaken
    )
    failure = local.start_failure(local.ServiceProcess("ranker", 1, 8500, 0, str(crashed), 1))
    assert not isinstance(failure, local.PortTaken) and "has no ranker" in str(failure)

    tried: list[int] = []

    def up(workdir: Path, timeout_s: float, settings: Settings) -> None:
        tried.append(settings.recall_port)
        if len(tried) == 1:
            raise local.start_failure(
                local.ServiceProcess("recall", 1, settings.recall_port, 0, str(taken), 1)
            )

    monkeypatch.setattr(local, "up", up)
    started = local.up_on_free_ports(tmp_path, Settings(workdir=tmp_path, recall_timeout_ms=5000))
    assert len(tried) == 2 and started.recall_port == tried[1] and started.recall_timeout_ms == 5000
    monkeypatch.setattr(
        local,
        "up",
        lambda *a, **k: (_ for _ in ()).throw(
            local.start_failure(local.ServiceProcess("ranker", 1, 8500, 0, str(crashed), 1))
        ),
    )
    with pytest.raises(local.StarlingError, match="has no ranker"):
        local.up_on_free_ports(tmp_path, Settings(workdir=tmp_path))
