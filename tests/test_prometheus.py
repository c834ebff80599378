"""Every PromQL expression of the chart returns data from a real Prometheus scraping the real services.

`starling up` starts the stack on free ports (as tests/test_serving.py does); a real Prometheus (Debian's
`prometheus` package, installed with apt-get when missing) scrapes every /metrics endpoint each second, with
the labels the ServiceMonitor/PodMonitor would give (namespace="starling"). Load runs for ~16 s: good
Recommend calls, a few bad ones (INVALID_ARGUMENT, for the error panels) and, half-way, rerank is killed (for
the fallback panels). Then every expression is evaluated through /api/v1/query:

- the dashboard's panel targets, taken from the rendered ConfigMap, with Grafana's variables substituted
  the way Grafana would: `$namespace` -> starling, `$__rate_interval` -> 30s;
- the PrometheusRule's alert exprs, rendered with `--set monitoring.rules.rateWindow=30s`. An alert expr is
  `<measurement> > <threshold>` and is legitimately empty while the service is healthy, so the test evaluates
  the measurement (the expr with the trailing comparison removed); `promtool check rules` checks the full rules.

Each must evaluate without error and return a non-empty result. The panel results are written to
<tmp>/dashboard-snapshot.json and printed as a table (panel -> value): the dashboard "as data".
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from starling.config import REPO_ROOT, Settings
from starling.local import read_state
from starling.v1 import recommend_pb2, recommend_pb2_grpc

pytestmark = pytest.mark.slow

CHART = REPO_ROOT / "charts" / "starling"
NAMESPACE = "starling"
RATE_WINDOW = "30s"
LOAD_SECONDS = 16.0
STACK = ("recommend", "candidates", "recall", "rerank", "ranker")
# A trailing comparison against a number: "<measurement> > 0.25".
THRESHOLD = re.compile(r"^(?P<measurement>.*?)\s*(>|<|>=|<=|==|!=)\s*[-+0-9.eE]+\s*$", re.DOTALL)


# ------------------------------------------------------------------------------------------------ helpers
def rendered_monitoring(helm: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(Grafana dashboard, PrometheusRule groups) as the production values render them, rate window 30s."""
    done = subprocess.run(
        [
            helm,
            "template",
            "starling",
            str(CHART),
            "--namespace",
            NAMESPACE,
            "-f",
            str(CHART / "ci" / "production-values.yaml"),
            "--set",
            f"monitoring.rules.rateWindow={RATE_WINDOW}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    manifests = [m for m in yaml.safe_load_all(done.stdout) if m]
    dashboard_map = next(m for m in manifests if m["metadata"]["name"] == "starling-dashboard")
    rules = next(m for m in manifests if m["kind"] == "PrometheusRule")
    return json.loads(dashboard_map["data"]["starling.json"]), rules["spec"]["groups"]


def grafana_substitute(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_WINDOW).replace("$namespace", NAMESPACE)


def measurement(expr: str) -> str:
    match = THRESHOLD.match(expr.strip())
    assert match, f"alert expr is not '<measurement> <op> <threshold>': {expr}"
    return match.group("measurement")


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """Debian's prometheus, installed with apt-get when missing (the tests run as root here)."""
    found = shutil.which("prometheus")
    if found:
        return found
    done = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = shutil.which("prometheus")
    assert found, f"prometheus is not installed and `apt-get install -y prometheus` failed:\n{done.stderr}"
    return found


@pytest.fixture(scope="module")
def workdir(ml_small_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the trained workdir: the stack writes run state and its vector store into it."""
    from conftest import copy_workdir

    return copy_workdir(ml_small_trained, tmp_path_factory.mktemp("prometheus_workdir"))


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[Settings]:
    from conftest import running_stack

    # running_stack's generous deadlines: fallbacks must come from the killed stage, not a busy machine.
    with running_stack(workdir) as settings:
        yield settings


def metrics_targets(settings: Settings) -> dict[str, int]:
    """Service -> /metrics port: gRPC port + 1000, and the ranker's KServe REST port."""
    ports = {name: getattr(settings, f"{name}_port") + 1000 for name in STACK if name != "ranker"}
    return {**ports, "ranker": settings.ranker_http_port}


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str,
    stack: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    free_port: Callable[[], int],
) -> Iterator[str]:
    """A Prometheus scraping the stack every second; yields its base URL."""
    home = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                # the job and namespace labels the ServiceMonitor/PodMonitor give in the cluster
                "job_name": f"starling-{name}",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": NAMESPACE, "service": name}}
                ],
            }
            for name, port in metrics_targets(stack).items()
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (home / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (home / "prometheus.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready after 60 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(url: str, expr: str) -> dict[str, Any]:
    params = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400 = a PromQL error, with the message in the body
        return json.loads(exc.read())


def _kill(workdir: Path, name: str) -> None:
    """SIGKILL one service (as if its pod died)."""
    process = next(p for p in read_state(workdir) if p.name == name)
    os.kill(process.pid, signal.SIGKILL)


def run_load(settings: Settings, workdir: Path) -> dict[str, int]:
    """~LOAD_SECONDS of Recommend calls from 3 threads; a few bad calls; rerank killed half-way."""
    stop = threading.Event()
    counts = {"ok": 0, "bad": 0, "failed": 0}
    lock = threading.Lock()

    def client(offset: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{settings.recommend_port}") as channel:
            stub = recommend_pb2_grpc.RecommendServiceStub(channel)
            n = 0
            while not stop.is_set():
                n += 1
                k = 0 if n % 10 == 0 else 10  # every 10th call is invalid (k must be 1..500)
                user_id = (offset * 97 + n) % 610 + 1
                try:
                    stub.Recommend(recommend_pb2.RecommendRequest(user_id=user_id, k=k), timeout=10)
                    outcome = "ok"
                except grpc.RpcError as exc:
                    outcome = "bad" if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else "failed"
                with lock:
                    counts[outcome] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(LOAD_SECONDS / 2)
    _kill(workdir, "rerank")
    time.sleep(LOAD_SECONDS / 2)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    time.sleep(2.5)  # two more scrapes, so the last calls are in Prometheus
    return counts


def _value(result: dict[str, Any]) -> str:
    """A short rendering of a query result: 'label=value' per series (first 4)."""
    series = result["data"]["result"]
    if result["data"]["resultType"] == "scalar":
        return f"{float(series[1]):.4g}"
    parts = []
    for item in series[:4]:
        labels = ",".join(f"{v}" for k, v in sorted(item["metric"].items()) if k not in ("__name__",))
        parts.append(f"{labels or 'value'}={float(item['value'][1]):.4g}")
    return "; ".join(parts) + (f" (+{len(series) - 4} more)" if len(series) > 4 else "")


# ------------------------------------------------------------------------------------------------- test
def test_every_dashboard_and_alert_expression_returns_data(
    prometheus: str, stack: Settings, workdir: Path, tmp_path: Path, helm: str
) -> None:
    dashboard, rule_groups = rendered_monitoring(helm)

    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule_groups}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with the prometheus package"
    checked = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    counts = run_load(stack, workdir)
    assert counts["ok"] > 30 and counts["bad"] > 0, counts

    expressions: list[tuple[str, str]] = []  # (what, PromQL)
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expressions.append(
                (f"panel {panel['title']} [{target['legendFormat']}]", grafana_substitute(target["expr"]))
            )
    for group in rule_groups:
        for rule in group["rules"]:
            expressions.append((f"alert {rule['alert']} (measurement)", measurement(rule["expr"])))

    snapshot, failures = [], []
    for what, expr in expressions:
        result = query(prometheus, expr)
        if result.get("status") != "success":
            failures.append(f"{what}: error {result.get('errorType')}: {result.get('error')}\n    {expr}")
            continue
        if not result["data"]["result"]:
            failures.append(f"{what}: no data\n    {expr}")
            continue
        if result["data"]["resultType"] == "vector" and any(
            math.isnan(float(series["value"][1])) for series in result["data"]["result"]
        ):
            failures.append(f"{what}: NaN (a ratio or quantile over no traffic)\n    {expr}")
        snapshot.append({"what": what, "expr": expr, "result": result["data"]})

    out = tmp_path / "dashboard-snapshot.json"
    out.write_text(json.dumps({"load": counts, "queries": snapshot}, indent=2))
    width = max(len(what) for what, _ in expressions)
    print(f"\ndashboard snapshot ({out}); load {counts}")
    for item in snapshot:
        print(f"  {item['what']:<{width}}  {_value({'data': item['result']})}")
    assert not failures, "\n".join(failures)
    fallbacks = next(s for s in snapshot if s["what"].startswith("panel Fallbacks by stage"))
    assert {series["metric"]["stage"] for series in fallbacks["result"]["result"]} == {"rerank"}
