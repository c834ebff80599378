"""The chart's dashboard and alerts against a real Prometheus scraping the real services.

`starling up` starts the stack on free ports (as tests/test_serving.py does), unsupervised
(`supervise=False`): a killed service stays down, as a crashed pod with no replica left. A real Prometheus
(Debian's `prometheus` package, installed with apt-get when missing) scrapes every /metrics endpoint each
second under the job and namespace labels prometheus-operator gives in the cluster (a ServiceMonitor target's
job is its Service's name, `starling-recommend`; a PodMonitor target's job is `starling/starling-ranker`), plus
a stand-in kube-state-metrics serving a fixed page of Job series. It loads the PrometheusRule rendered by real
helm with the production values, rate windows of 30s and `for` durations of 1s, and evaluates it.

- Before any load: the fallback and feedback counters are exported at 0 (their panels show 0, not
  "No data"), and only the ranker exports the feature freshness gauge.
- Load runs for ~16 s: good Recommend calls, a few bad ones (INVALID_ARGUMENT, for the error panels), web
  gateway requests (a few 400s) and, half-way, rerank is killed (for the fallback panels). Then every
  expression is evaluated through /api/v1/query: the dashboard's panel targets, taken from the rendered
  ConfigMap, with Grafana's variables substituted the way Grafana would (`$namespace` -> starling,
  `$__rate_interval` -> 30s), and every alert's measurement. An alert expr is `<measurement> <op>
  <threshold>` and is legitimately empty while the service is healthy, so the test evaluates the expr with the
  trailing comparison removed (for the down alerts `absent(up{...}) or max by (...) (up{...})`);
  `promtool check rules` checks the full rules. Each must evaluate without error and return a non-empty,
  non-NaN result. The panel results are written to <tmp>/dashboard-snapshot.json and printed as a table.
- The training alert picks exactly the chart's failed Jobs from the kube-state-metrics page.
- rerank, killed during the load, fires StarlingServiceDown (up == 0) and StarlingDependencyDown; once its
  target is gone from service discovery (its pods deleted), the absent() branch keeps the alert firing.
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
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from starling.auth import authorized_channel, client_token
from starling.config import REPO_ROOT, Settings
from starling.local import read_state
from starling.v1 import recommend_pb2, recommend_pb2_grpc

pytestmark = pytest.mark.slow

CHART = REPO_ROOT / "charts" / "starling"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
NAMESPACE = "starling"
RATE_WINDOW = "30s"
FOR = "1s"  # the rules' `for` in the test: an alert fires within seconds of its condition
LOAD_SECONDS = 16.0
EXPERIMENT = "ranker-vs-random"  # the A/B test the stack runs, for the dashboard's experiment row
STACK = ("recommend", "candidates", "recall", "rerank", "ranker", "web")
FALLBACK_STAGES = {"candidates", "recall", "ranker", "rerank", "features"}
# A trailing comparison against a number: "<measurement> > 0.25".
THRESHOLD = re.compile(r"^(?P<measurement>.*?)\s*(>|<|>=|<=|==|!=)\s*[-+0-9.eE]+\s*$", re.DOTALL)


# ------------------------------------------------------------------------------------------------ helpers
def job_of(name: str) -> str:
    """The job label prometheus-operator gives: the Service name for the ServiceMonitor's services, and
    "<namespace>/<PodMonitor name>" for the ranker's PodMonitor."""
    return f"{NAMESPACE}/starling-ranker" if name == "ranker" else f"starling-{name}"


def rendered_monitoring(helm: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(Grafana dashboard, PrometheusRule groups) as the production values render them, rate window 30s and
    `for` 1s; the chart's ServiceMonitor and PodMonitor are checked to give the jobs :func:`job_of` names."""
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
            "--set",
            f"monitoring.rules.for={FOR}",
            "--set",
            f"monitoring.rules.downFor={FOR}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    manifests = [m for m in yaml.safe_load_all(done.stdout) if m]
    dashboard_map = next(m for m in manifests if m["metadata"]["name"] == "starling-dashboard")
    rules = next(m for m in manifests if m["kind"] == "PrometheusRule")
    (pod_monitor,) = [m for m in manifests if m["kind"] == "PodMonitor"]
    assert job_of("ranker") == f"{NAMESPACE}/{pod_monitor['metadata']['name']}"
    services = {m["metadata"]["name"] for m in manifests if m["kind"] == "Service"}
    assert {job_of(name) for name in STACK if name != "ranker"} <= services
    return json.loads(dashboard_map["data"]["starling.json"]), rules["spec"]["groups"]


def rules_of(groups: list[dict[str, Any]], alert: str) -> list[dict[str, Any]]:
    found = [rule for group in groups for rule in group["rules"] if rule["alert"] == alert]
    assert found, f"no alert {alert} in the rendered rules"
    return found


def grafana_substitute(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", RATE_WINDOW)
        .replace("$namespace", NAMESPACE)
        .replace("$experiment", EXPERIMENT)
    )


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
    # Unsupervised: a killed service stays down (the supervisor would restart it within seconds).
    experiments = workdir / "experiments.yaml"
    arms = [
        {"name": "model", "share": 50},
        {"name": "random", "share": 50, "overrides": {"ranker": "random"}},
    ]
    experiments.write_text(
        yaml.safe_dump({"experiments": [{"name": EXPERIMENT, "layer": "ranking", "salt": "p", "arms": arms}]})
    )
    with running_stack(workdir, supervise=False, experiments=experiments) as settings:
        yield settings


@pytest.fixture(scope="module")
def rendered(helm: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return rendered_monitoring(helm)


def metrics_targets(settings: Settings) -> dict[str, int]:
    """Service -> /metrics port: gRPC port + 1000, the ranker's KServe REST port, the gateway's HTTP port."""
    ports = {
        name: getattr(settings, f"{name}_port") + 1000 for name in STACK if name not in ("ranker", "web")
    }
    return {**ports, "ranker": settings.ranker_http_port, "web": settings.web_port}


# A page as kube-state-metrics serves it for the Jobs of a namespace (job_name/namespace labels, Failed condition
# only for Jobs that have one). Expected to alert: the one-shot Job of revision 1 and the newest retrain Job.
# Not: an older failed retrain Job (a newer one has started since), other Jobs, other namespaces.
KUBE_STATE_METRICS = """\
# HELP kube_job_failed The job has failed its execution.
# TYPE kube_job_failed gauge
kube_job_failed{namespace="starling",job_name="starling-train-r1",condition="true"} 1
kube_job_failed{namespace="starling",job_name="starling-train-r1",condition="false"} 0
kube_job_failed{namespace="starling",job_name="starling-train-r1",condition="unknown"} 0
kube_job_failed{namespace="starling",job_name="starling-retrain-29000000",condition="true"} 1
kube_job_failed{namespace="starling",job_name="starling-retrain-29001440",condition="true"} 1
kube_job_failed{namespace="starling",job_name="nightly-backup-29001440",condition="true"} 1
kube_job_failed{namespace="other",job_name="starling-retrain-29001440",condition="true"} 1
# HELP kube_job_status_start_time StartTime represents time when the job was acknowledged by the Job Manager.
# TYPE kube_job_status_start_time gauge
kube_job_status_start_time{namespace="starling",job_name="starling-train-r1"} 1.74e+09
kube_job_status_start_time{namespace="starling",job_name="starling-retrain-28998560"} 1.7399136e+09
kube_job_status_start_time{namespace="starling",job_name="starling-retrain-29000000"} 1.74e+09
kube_job_status_start_time{namespace="starling",job_name="starling-retrain-29001440"} 1.7400864e+09
kube_job_status_start_time{namespace="starling",job_name="nightly-backup-29001440"} 1.7400864e+09
kube_job_status_start_time{namespace="other",job_name="starling-retrain-29001440"} 1.7400864e+09
# HELP kube_job_status_succeeded The number of pods which reached Phase Succeeded.
# TYPE kube_job_status_succeeded gauge
kube_job_status_succeeded{namespace="starling",job_name="starling-retrain-28998560"} 1
"""
FAILED_TRAINING_JOBS = {"starling-train-r1", "starling-retrain-29001440"}


@pytest.fixture(scope="module")
def kube_state_metrics() -> Iterator[int]:
    """A stand-in for kube-state-metrics: serves KUBE_STATE_METRICS at /metrics; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = KUBE_STATE_METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class Prometheus:
    """A running Prometheus: its base URL, and the file-SD files of its service jobs."""

    def __init__(self, url: str, targets_dir: Path) -> None:
        self.url = url
        self.targets_dir = targets_dir

    def write_targets(self, name: str, targets: list[dict[str, Any]]) -> None:
        path = self.targets_dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(path)  # atomic: Prometheus never reads half a file

    def remove_target(self, name: str) -> None:
        """As if every pod of ``name`` were deleted: its target leaves service discovery."""
        self.write_targets(name, [])


def service_targets(name: str, port: int) -> list[dict[str, Any]]:
    """File-SD entry with the target labels prometheus-operator gives (namespace; service for a ServiceMonitor)."""
    labels = {"namespace": NAMESPACE}
    if name != "ranker":
        labels["service"] = job_of(name)
    return [{"targets": [f"127.0.0.1:{port}"], "labels": labels}]


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str,
    stack: Settings,
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
    kube_state_metrics: int,
    tmp_path_factory: pytest.TempPathFactory,
    free_port: Callable[[], int],
) -> Iterator[Prometheus]:
    """A Prometheus scraping the stack every second and evaluating the chart's rules every second."""
    home = tmp_path_factory.mktemp("prometheus")
    (home / "rules.yaml").write_text(yaml.safe_dump({"groups": rendered[1]}))
    targets_dir = home / "targets"
    targets_dir.mkdir()
    handle = Prometheus("", targets_dir)
    for name, port in metrics_targets(stack).items():
        handle.write_targets(name, service_targets(name, port))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(home / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": job_of(name),
                "file_sd_configs": [{"files": [str(targets_dir / f"{name}.json")], "refresh_interval": "1s"}],
            }
            for name in STACK
        ]
        + [
            {
                "job_name": "kube-state-metrics",
                "honor_labels": True,  # keep the namespace label of the objects, as kube-prometheus-stack does
                "static_configs": [{"targets": [f"127.0.0.1:{kube_state_metrics}"]}],
            }
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
    handle.url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (home / "prometheus.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{handle.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready after 60 s"
            time.sleep(0.2)
        yield handle
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


def series(url: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector ``expr`` returns (asserting it evaluates)."""
    result = query(url, expr)
    assert result.get("status") == "success", f"{expr}: {result.get('error')}"
    return result["data"]["result"]


def active_alerts(url: str) -> list[dict[str, Any]]:
    """Prometheus's pending and firing alerts (labels, state)."""
    with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=10) as response:
        return json.loads(response.read())["data"]["alerts"]


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Polls ``check`` until it returns something truthy; fails with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.25)


def firing(url: str, alertname: str, **labels: str) -> list[dict[str, Any]]:
    return [
        alert
        for alert in active_alerts(url)
        if alert["labels"]["alertname"] == alertname
        and alert["state"] == "firing"
        and all(alert["labels"].get(k) == v for k, v in labels.items())
    ]


def _kill(workdir: Path, name: str) -> None:
    """SIGKILL one service (as if its pod died)."""
    process = next(p for p in read_state(workdir) if p.name == name)
    os.kill(process.pid, signal.SIGKILL)


def run_load(settings: Settings, workdir: Path) -> dict[str, int]:
    """~LOAD_SECONDS of Recommend calls from 3 threads and web gateway requests from one; a few bad calls;
    rerank killed half-way."""
    stop = threading.Event()
    counts = {"ok": 0, "bad": 0, "failed": 0, "web_ok": 0, "web_bad": 0, "web_failed": 0}
    lock = threading.Lock()

    def client(offset: int) -> None:
        target = f"127.0.0.1:{settings.recommend_port}"
        with authorized_channel(target, client_token(settings)) as channel:
            stub = recommend_pb2_grpc.RecommendServiceStub(channel)
            n = 0
            while not stop.is_set():
                n += 1
                k = 0 if n % 10 == 0 else 10  # every 10th call is invalid (k must be 1..500)
                user_id = (offset * 97 + n) % 610 + 1
                try:
                    served = stub.Recommend(recommend_pb2.RecommendRequest(user_id=user_id, k=k), timeout=10)
                    if n % 3 == 0:  # a watch of the second item, naming its list (the experiment row)
                        event = recommend_pb2.FeedbackEvent(
                            user_id=user_id,
                            movie_id=served.items[1].movie_id,
                            kind=recommend_pb2.FEEDBACK_KIND_WATCH,
                            request_id=served.request_id,
                        )
                        stub.RecordFeedback(recommend_pb2.RecordFeedbackRequest(events=[event]), timeout=10)
                    outcome = "ok"
                except grpc.RpcError as exc:
                    outcome = "bad" if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else "failed"
                with lock:
                    counts[outcome] += 1

    def web_client() -> None:
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        n = 0
        while not stop.is_set():
            n += 1
            user = "abc" if n % 10 == 0 else str(n * 7 % 610 + 1)  # every 10th is a bad id (400)
            url = f"http://127.0.0.1:{settings.web_port}/api/users/{user}/recommendations?k=10"
            try:
                with no_proxy.open(url, timeout=10) as reply:
                    reply.read()
                outcome = "web_ok"
            except urllib.error.HTTPError as exc:
                outcome = "web_bad" if exc.code == 400 else "web_failed"
            except OSError:
                outcome = "web_failed"
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(3)]
    threads.append(threading.Thread(target=web_client, daemon=True))
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


@pytest.fixture(scope="module")
def before_load(prometheus: Prometheus) -> dict[str, list[dict[str, Any]]]:
    """Series scraped once every target is up, before any request: counters, freshness, the panels of counters."""
    url = prometheus.url
    for name in STACK:
        wait_for(
            lambda name=name: [s for s in series(url, f'up{{job="{job_of(name)}"}}') if s["value"][1] == "1"],
            60,
            f"prometheus to scrape {name}",
        )
    recommend = job_of("recommend")
    # two scrapes of recommend's counters, so that rate() over them has two points
    wait_for(
        lambda: series(
            url, f'count_over_time(starling_stage_fallbacks_total{{job="{recommend}"}}[30s]) >= 2'
        ),
        30,
        "two scrapes of recommend's fallback counters",
    )
    return {
        "fallbacks": series(url, f'starling_stage_fallbacks_total{{job="{recommend}"}}'),
        "feedback": series(url, f'starling_feedback_events_total{{job="{recommend}"}}'),
        "freshness": series(url, "starling_feature_materialized_timestamp_seconds"),
    }


@pytest.fixture(scope="module")
def loaded(
    before_load: dict[str, Any], prometheus: Prometheus, stack: Settings, workdir: Path
) -> dict[str, int]:
    """The load has run (rerank was killed half-way and stays down)."""
    return run_load(stack, workdir)


def test_counters_are_exported_at_zero_before_any_load(
    before_load: dict[str, list[dict[str, Any]]],
    prometheus: Prometheus,
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    fallbacks = before_load["fallbacks"]
    assert {s["metric"]["stage"] for s in fallbacks} == FALLBACK_STAGES
    assert all(float(s["value"][1]) == 0 for s in fallbacks), fallbacks
    feedback = {s["metric"]["outcome"]: float(s["value"][1]) for s in before_load["feedback"]}
    assert feedback == {"accepted": 0, "duplicate": 0, "rejected": 0}
    # the freshness gauge comes from the ranker alone (the process that loads the features), and is set
    freshness = before_load["freshness"]
    assert [s["metric"]["job"] for s in freshness] == [job_of("ranker")], freshness
    assert float(freshness[0]["value"][1]) > 1e9
    # the counter panels show 0 before the first event, not "No data"
    dashboard, _ = rendered
    for panel in dashboard["panels"]:
        if panel["title"] in ("Fallbacks by stage", "Feedback events by outcome"):
            result = series(prometheus.url, grafana_substitute(panel["targets"][0]["expr"]))
            assert result and all(float(s["value"][1]) == 0 for s in result), (panel["title"], result)


def test_every_dashboard_and_alert_expression_returns_data(
    prometheus: Prometheus,
    loaded: dict[str, int],
    tmp_path: Path,
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    dashboard, rule_groups = rendered
    counts = loaded

    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule_groups}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with the prometheus package"
    checked = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    assert counts["ok"] > 30 and counts["bad"] > 0, counts
    assert counts["web_ok"] > 10 and counts["web_bad"] > 0, counts

    expressions: list[tuple[str, str]] = []  # (what, PromQL)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):  # a row has none
            expressions.append(
                (f"panel {panel['title']} [{target['legendFormat']}]", grafana_substitute(target["expr"]))
            )
    for group in rule_groups:
        for rule in group["rules"]:
            name = rule["alert"] + (f" {rule['labels']['service']}" if "service" in rule["labels"] else "")
            expressions.append((f"alert {name} (measurement)", measurement(rule["expr"])))

    snapshot, failures = [], []
    for what, expr in expressions:
        result = query(prometheus.url, expr)
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
    # starling_build_info's own label survives the `service` target label a ServiceMonitor adds (rerank, killed,
    # is no longer there)
    builds = next(s for s in snapshot if s["what"].startswith("panel Builds running"))
    components = {s["metric"].get("component") for s in builds["result"]["result"]}
    assert components >= {"recommend", "candidates", "recall", "ranker"}, components
    # KServe's own predict histogram, on the ranker's REST /metrics, labelled with the model's name
    predictions = series(prometheus.url, f'request_predict_seconds_count{{job="{job_of("ranker")}"}}')
    assert [s["metric"]["model_name"] for s in predictions] == ["starling-ranker"], predictions
    assert float(predictions[0]["value"][1]) > 0
    fallbacks = next(s for s in snapshot if s["what"].startswith("panel Fallbacks by stage"))
    falling_back = {s["metric"]["stage"] for s in fallbacks["result"]["result"] if float(s["value"][1]) > 0}
    assert falling_back == {"rerank"}, fallbacks["result"]["result"]


def test_every_alert_links_its_runbook_section(rendered: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    base = values["monitoring"]["runbookBaseUrl"]
    assert base.endswith("/docs/runbook.md")
    # GitHub's anchors: the heading in lower case (alert names have no spaces or punctuation)
    anchors = {
        line[3:].strip().lower() for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")
    }
    for group in rendered[1]:
        for rule in group["rules"]:
            annotations = rule["annotations"]
            assert annotations["summary"] and annotations["description"], rule["alert"]
            assert annotations["runbook_url"] == f"{base}#{rule['alert'].lower()}", rule["alert"]
            assert rule["alert"].lower() in anchors, f"docs/runbook.md has no section ## {rule['alert']}"


def test_training_failure_alert_picks_the_charts_failed_jobs(
    prometheus: Prometheus, rendered: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    (rule,) = rules_of(rendered[1], "StarlingTrainingJobFailed")
    url = prometheus.url
    wait_for(
        lambda: series(url, 'kube_job_failed{job="kube-state-metrics"}'), 30, "a kube-state-metrics scrape"
    )
    assert {s["metric"]["job_name"] for s in series(url, rule["expr"])} == FAILED_TRAINING_JOBS
    alerts = wait_for(
        lambda: (
            len(firing(url, "StarlingTrainingJobFailed")) == len(FAILED_TRAINING_JOBS)
            and firing(url, "StarlingTrainingJobFailed")
        ),
        30,
        "StarlingTrainingJobFailed to fire",
    )
    assert {a["labels"]["job_name"] for a in alerts} == FAILED_TRAINING_JOBS
    assert all(a["labels"]["namespace"] == NAMESPACE for a in alerts)


def test_down_alerts_fire_when_a_service_is_stopped(
    prometheus: Prometheus,
    loaded: dict[str, int],
    stack: Settings,
    workdir: Path,
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    """rerank was killed during the load and, unsupervised, stays down: first its target answers no scrape
    (up == 0), then it leaves service discovery (absent); StarlingServiceDown fires throughout."""
    url = prometheus.url
    rules = {rule["labels"]["service"]: rule for rule in rules_of(rendered[1], "StarlingServiceDown")}
    assert set(rules) == {"recommend", "candidates", "recall", "rerank", "web"}
    (ranker_rule,) = rules_of(rendered[1], "StarlingRankerDown")
    rules["ranker"] = ranker_rule
    rerank = next(p for p in read_state(workdir) if p.name == "rerank")
    with pytest.raises(ProcessLookupError):
        os.kill(rerank.pid, 0)

    # 1. the process is gone, its target is still discovered: up == 0
    assert [s["value"][1] for s in series(url, f'up{{job="{job_of("rerank")}"}}')] == ["0"]
    down = series(url, rules["rerank"]["expr"])
    assert [s["metric"] for s in down] == [{"namespace": NAMESPACE, "job": job_of("rerank")}]
    for name, rule in rules.items():
        if name != "rerank":  # (a scrape may time out on a busy machine: a moment later it answers)
            wait_for(lambda rule=rule: series(url, rule["expr"]) == [], 10, f"{name}'s down expr to be empty")
    alert = wait_for(lambda: firing(url, "StarlingServiceDown", service="rerank"), 30, "StarlingServiceDown")
    assert alert[0]["labels"]["severity"] == "warning" and alert[0]["labels"]["job"] == job_of("rerank")
    wait_for(lambda: firing(url, "StarlingDependencyDown", stage="rerank"), 30, "StarlingDependencyDown")

    # 2. its pods are deleted: the target leaves service discovery, up{} is absent, absent() takes over
    prometheus.remove_target("rerank")
    wait_for(lambda: not series(url, f'up{{job="{job_of("rerank")}"}}'), 30, "rerank's target to disappear")
    absent = series(url, f'absent(up{{namespace="{NAMESPACE}", job="{job_of("rerank")}"}})')
    assert [s["metric"] for s in absent] == [{"namespace": NAMESPACE, "job": job_of("rerank")}]
    assert [s["metric"] for s in series(url, rules["rerank"]["expr"])] == [absent[0]["metric"]]
    time.sleep(2.5)  # two evaluations: the alert, same labels, keeps firing
    assert firing(url, "StarlingServiceDown", service="rerank")

    def others_firing() -> list[dict[str, str]]:
        return [
            a["labels"]
            for a in active_alerts(url)
            if a["labels"]["alertname"] in ("StarlingServiceDown", "StarlingRankerDown")
            and a["labels"].get("service") != "rerank"
            and a["state"] == "firing"
        ]

    wait_for(lambda: not others_firing(), 10, "no down alert for the services still running")
