"""`starling up` / `starling down`: every service as a local process on the embedded defaults.

State lives in WORKDIR/run: services.json (pids, ports) and logs/<service>.log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from starling.auth import ensure_local_key
from starling.config import REPO_ROOT, Settings, get_settings
from starling.errors import StarlingError
from starling.v1 import recommend_pb2

# Start order: stages first, then the orchestrator, then the web gateway in front of it.
SERVICES = ("candidates", "recall", "rerank", "ranker", "recommend", "web")


@dataclass
class ServiceProcess:
    name: str
    pid: int
    port: int
    metrics_port: int
    log: str
    restarts: int = 0  # by the supervisor since `starling up`
    last_exit: int | None = None  # exit code of the last exit (negative: killed by that signal)


def run_dir(workdir: Path) -> Path:
    return workdir / "run"


def stacks_file() -> Path:
    """Where this user's running stacks are recorded, so `starling down` / `status` need no WORKDIR."""
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    return Path(base) / "starling" / "stacks.json"


def running_stacks() -> list[Path]:
    """Workdirs whose `starling up` is still running (stale entries dropped)."""
    path = stacks_file()
    try:
        recorded = [Path(w) for w in json.loads(path.read_text())]
    except (OSError, ValueError):
        return []
    return [w for w in recorded if any(_alive(p.pid) for p in read_state(w))]


def _record_stack(workdir: Path, running: bool) -> None:
    stacks = [w for w in running_stacks() if w != workdir] + ([workdir] if running else [])
    path = stacks_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([str(w) for w in stacks]))


def port_of(settings: Settings, name: str) -> int:
    return settings.ranker_grpc_port if name == "ranker" else getattr(settings, f"{name}_port")


def metrics_port_of(settings: Settings, name: str) -> int:
    if name == "web":  # the gateway serves /metrics on its own HTTP port
        return settings.web_port
    return settings.ranker_http_port if name == "ranker" else port_of(settings, name) + 1000


def copy_workdir(source: Path, target: Path) -> Path:
    """Copy a workdir without its running-service state (run/) or vector store file (a second stack's own)."""
    import shutil

    shutil.copytree(
        source,
        target,
        dirs_exist_ok=True,
        symlinks=True,
        ignore=shutil.ignore_patterns("run", "milvus.db", ".milvus.db.lock"),
    )
    return target


def free_port(metrics_neighbour: bool = False) -> int:
    """A TCP port that was free a moment ago (another process may take it before it is bound); with
    ``metrics_neighbour``, port + 1000 (where a gRPC service serves /metrics) was free too."""
    import socket

    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not metrics_neighbour:
            return port
        if port + 1000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
        return port


def free_stack_ports() -> dict[str, int]:
    """Settings overrides that put every service of a stack on ports free a moment ago (a second stack beside
    the default one: the tests, ``starling bench upsert``)."""
    ports = {f"{name}_port": free_port(True) for name in ("recommend", "candidates", "recall", "rerank")}
    ports["admin_port"] = free_port()
    ports.update({f"{name}_port": free_port() for name in ("ranker_grpc", "ranker_http", "web")})
    return ports


class PortTaken(StarlingError):
    """A service exited during start-up because its port was taken (see :func:`up_on_free_ports`)."""


# What a service's log says when its port is taken (lower case).
_BIND_FAILURES = (
    "could not bind",  # ours (services/common/server.py, the ranker)
    "failed to bind",  # grpc's own
    "address already in use",  # the OS's: the metrics endpoint, aiohttp's web gateway
    "error while attempting to bind",  # uvicorn's (KServe's REST port)
)


def start_failure(process: ServiceProcess) -> StarlingError:
    """The error for ``process`` having exited during start-up, with its log's tail: :class:`PortTaken`
    when the log says its port was taken."""
    tail = Path(process.log).read_text(errors="replace")[-2000:]
    failure = PortTaken if any(text in tail.lower() for text in _BIND_FAILURES) else StarlingError
    return failure(f"{process.name} exited during start-up; see {process.log}:\n{tail}")


def up_on_free_ports(
    workdir: Path, settings: Settings, timeout_s: float = 180.0, attempts: int = 3
) -> Settings:
    """:func:`up` a second stack on free ports and return its settings. A port found free can be taken by
    another process before the service binds it; the stack is then started again on other ports."""
    for attempt in range(1, attempts + 1):
        ported = settings.model_copy(update=free_stack_ports())
        try:
            up(workdir, timeout_s=timeout_s, settings=ported)
            return ported
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def service_environment(workdir: Path, settings: Settings) -> dict[str, str]:
    """The child processes' environment: this one plus every setting, so the services share ``settings``."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"STARLING_{name.upper()}"] = str(value)
    env.update(
        {
            "STARLING_WORKDIR": str(workdir.resolve()),
            "STARLING_CANDIDATES_TARGET": settings.candidates_target
            or f"127.0.0.1:{settings.candidates_port}",
            "STARLING_RECALL_TARGET": settings.recall_target or f"127.0.0.1:{settings.recall_port}",
            "STARLING_RERANK_TARGET": settings.rerank_target or f"127.0.0.1:{settings.rerank_port}",
            "STARLING_RANKER_TARGET": settings.ranker_target or f"127.0.0.1:{settings.ranker_grpc_port}",
            "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    return env


RECOMMEND_SERVICE = recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name


def is_healthy(name: str, port: int, timeout: float = 1.0, service: str = "") -> bool:
    """Standard gRPC health (of ``service``; "" = the process) for our services; the v2 ServerReady RPC for
    the KServe ranker; GET /healthz for the web gateway."""
    if name == "web":
        try:
            no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with no_proxy.open(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as reply:
                return reply.status == 200
        except OSError:
            return False
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            if name == "ranker":
                from kserve.protocol.grpc import grpc_predict_v2_pb2 as v2
                from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

                return (
                    GRPCInferenceServiceStub(channel)
                    .ServerReady(v2.ServerReadyRequest(), timeout=timeout)
                    .ready
                )
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def read_state(workdir: Path) -> list[ServiceProcess]:
    path = run_dir(workdir) / "services.json"
    if not path.is_file():
        return []
    return [ServiceProcess(**entry) for entry in json.loads(path.read_text())]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (reaping it first if it is our own exited child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(workdir: Path, timeout_s: float = 180.0, settings: Settings | None = None) -> list[ServiceProcess]:
    """Start every service, wait until all report healthy, and return (they keep running)."""
    settings = settings or get_settings()
    workdir = workdir.resolve()
    for required, command in [
        ("movies.parquet", "starling data ingest"),
        ("features/feature_spec.json", "starling features build"),
        ("models/current", "starling train"),
    ]:
        if not (workdir / required).exists():
            raise StarlingError(f"{workdir / required} not found: run `{command}` first (or `make demo`)")
    running = [p for p in read_state(workdir) if _alive(p.pid)]
    marker = run_dir(workdir) / "supervisor.json"
    if marker.is_file() and _alive(int(json.loads(marker.read_text())["pid"])):
        raise StarlingError(f"services already supervised from {workdir}; run `starling down` first")
    if running:
        raise StarlingError(
            f"services already running from {workdir} (pids {[p.pid for p in running]}); "
            "run `starling down` first"
        )
    logs = run_dir(workdir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ensure_local_key(settings.model_copy(update={"workdir": workdir}))  # writes need it; see starling/auth.py
    env = service_environment(workdir, settings)
    for name in (*SERVICES, "admin"):  # before starting anything, so a refusal leaves nothing behind
        port = settings.admin_port if name == "admin" else port_of(settings, name)
        if is_healthy(name, port, timeout=0.3):
            raise StarlingError(
                f"port {port} already serves something: stop it or set STARLING_{name.upper()}_PORT"
            )
    with (logs / "supervisor.log").open("ab") as log_file:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "starling.supervisor", str(workdir)],
            env=env,
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (run_dir(workdir) / "supervisor.json").write_text(json.dumps({"pid": supervisor.pid}))

    deadline = time.monotonic() + timeout_s
    waiting = set(SERVICES)
    started: list[ServiceProcess] = []
    while waiting and time.monotonic() < deadline:
        if supervisor.poll() is not None:
            down(workdir)
            raise StarlingError(f"the supervisor exited during start-up; see {logs / 'supervisor.log'}")
        started = read_state(workdir)
        for process in started:
            if process.restarts or process.last_exit is not None:  # crashed while starting: stop, show why
                down(workdir)
                raise start_failure(process)
            if process.name in waiting and is_healthy(process.name, process.port):
                waiting.discard(process.name)
        time.sleep(0.2)
    if waiting:
        down(workdir)
        raise StarlingError(f"{sorted(waiting)} not healthy after {timeout_s:.0f} s; logs in {logs}")
    # Ready as a whole once recommend itself reaches every stage (its dependency health, see
    # services/recommend/dependencies.py): the first request is then served undegraded.
    while not is_healthy("recommend", settings.recommend_port, service=RECOMMEND_SERVICE):
        if time.monotonic() > deadline:
            down(workdir)
            raise StarlingError(
                f"recommend does not reach every stage after {timeout_s:.0f} s; logs in {logs}"
            )
        time.sleep(0.1)
    _record_stack(workdir, running=True)
    return started


def start_replica(workdir: Path, name: str, settings: Settings, log_path: Path) -> subprocess.Popen:
    """One more process of service ``name`` beside a running stack, on the ports ``settings`` give it (e.g. a
    second recommend replica: its own recommend_port and admin_port, the stack's stage targets); not
    supervised, not in services.json: the caller stops it. Healthy when :func:`wait_healthy` says so."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{name}.server"],
            env=service_environment(workdir.resolve(), settings),
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(
    name: str, port: int, timeout_s: float, service: str = "", process: subprocess.Popen | None = None
) -> None:
    """Wait until the service on ``port`` reports healthy (``service``: "" = the process, or e.g.
    RECOMMEND_SERVICE for recommend reaching every stage); StarlingError on timeout or when ``process``
    exits first."""
    deadline = time.monotonic() + timeout_s
    while not is_healthy(name, port, timeout=0.5, service=service):
        if process is not None and process.poll() is not None:
            raise StarlingError(f"{name} on port {port} exited with {process.returncode} while starting")
        if time.monotonic() > deadline:
            raise StarlingError(f"{name} on port {port} not healthy after {timeout_s:.0f} s")
        time.sleep(0.1)


def down(workdir: Path, grace_s: float = 10.0) -> list[str]:
    """Stop the supervisor and the services started from ``workdir`` (SIGTERM, then SIGKILL after
    ``grace_s``)."""
    workdir = workdir.resolve()
    names = [p.name for p in read_state(workdir) if _alive(p.pid)]
    marker = run_dir(workdir) / "supervisor.json"
    if marker.is_file():
        supervisor = int(json.loads(marker.read_text())["pid"])
        if _alive(supervisor):
            os.kill(supervisor, signal.SIGTERM)  # it stops its services first
            deadline = time.monotonic() + grace_s + 5
            while time.monotonic() < deadline and _alive(supervisor):
                time.sleep(0.1)
            if _alive(supervisor):
                os.killpg(supervisor, signal.SIGKILL)
        marker.unlink()
    processes = [p for p in read_state(workdir) if _alive(p.pid)]  # whatever outlived it
    for process in processes:
        os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p.pid) for p in processes):
        time.sleep(0.1)
    for process in processes:
        if _alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    state = run_dir(workdir) / "services.json"
    if state.exists():
        state.unlink()
    _record_stack(workdir, running=False)
    return names or [p.name for p in processes]


def status(workdir: Path) -> list[dict[str, object]]:
    """Each service of ``workdir``'s `starling up`: pid, running, healthy, restarts, last exit code."""
    rows = []
    for process in read_state(workdir.resolve()):
        alive = _alive(process.pid)
        rows.append(
            {
                **asdict(process),
                "running": alive,
                "healthy": alive and is_healthy(process.name, process.port, timeout=0.5),
            }
        )
    return rows
