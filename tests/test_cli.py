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
