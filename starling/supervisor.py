"""The supervisor `starling up` leaves running: it starts every service and restarts any that exits.

``python -m starling.supervisor WORKDIR`` (started detached by :func:`starling.local.up`, with the services'
environment). A service that exits is started again after a backoff: 0.2 s, doubling up to 10 s, back to
0.2 s once it has lived 30 s. ``WORKDIR/run/services.json`` always holds the current pids, restart counts
and last exit codes (what `starling status` shows); every restart is a JSON line in
``WORKDIR/run/logs/supervisor.log``. On SIGTERM it stops the services (SIGTERM, then SIGKILL after the
grace period) and exits. With ``STARLING_SUPERVISE=0`` it only watches.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from starling.config import REPO_ROOT, get_settings
from starling.local import SERVICES, ServiceProcess, metrics_port_of, port_of, run_dir

FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 10.0
HEALTHY_LIFETIME_S = 30.0
TICK_S = 0.1

log = logging.getLogger("starling.supervisor")


@dataclass
class Child:
    name: str
    port: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    last_exit: int | None = None
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None  # when it exited: the time to start it again

    def start(self, env: dict[str, str]) -> None:
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}.server"],
                env=env,
                cwd=REPO_ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    def record(self) -> ServiceProcess:
        return ServiceProcess(
            self.name,
            self.process.pid if self.process else 0,
            self.port,
            self.metrics_port,
            str(self.log_path),
            restarts=self.restarts,
            last_exit=self.last_exit,
        )


def write_state(workdir: Path, children: list[Child]) -> None:
    path = run_dir(workdir) / "services.json"
    temporary = path.with_name(".services.json.tmp")
    temporary.write_text(json.dumps([asdict(c.record()) for c in children], indent=2))
    os.replace(temporary, path)


def supervise(workdir: Path) -> None:
    settings = get_settings()
    logs = run_dir(workdir) / "logs"
    env = dict(os.environ)
    children = [
        Child(name, port_of(settings, name), metrics_port_of(settings, name), logs / f"{name}.log")
        for name in SERVICES
    ]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.start(env)
    write_state(workdir, children)

    while not stopping:
        changed = False
        now = time.monotonic()
        for child in children:
            if child.restart_at is None:
                code = child.process.poll()
                if code is None:
                    continue
                lived = now - child.started_at
                child.last_exit = code
                child.backoff_s = FIRST_BACKOFF_S if lived >= HEALTHY_LIFETIME_S else child.backoff_s
                child.restart_at = now + child.backoff_s if settings.supervise else float("inf")
                log.warning(
                    "service exited",
                    extra={"child": child.name, "exit_code": code, "lived_s": round(lived, 1),
                           "restart_in_s": child.backoff_s if settings.supervise else None},
                )  # fmt: skip
                changed = True
            elif now >= child.restart_at:
                child.start(env)
                child.restarts += 1
                child.restart_at = None
                child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)
                log.warning(
                    "service restarted",
                    extra={"child": child.name, "pid": child.process.pid, "restarts": child.restarts},
                )
                changed = True
        if changed:
            write_state(workdir, children)
        time.sleep(TICK_S)

    for child in children:
        if child.process and child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + settings.shutdown_grace_s + 5
    while time.monotonic() < deadline and any(c.process and c.process.poll() is None for c in children):
        time.sleep(TICK_S)
    for child in children:
        if child.process and child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
    log.info("stopped every service")


def main() -> None:
    from services.common.jsonlog import configure_logging

    configure_logging("supervisor")
    supervise(Path(sys.argv[1]).resolve())


if __name__ == "__main__":
    main()
