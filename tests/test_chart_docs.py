"""Chart polish (issue 11, point 6): the `helm test` hook, the generated chart README, the icon and
docs/deploy.md. The hook's script is rendered with a real Helm and then run for real against a small gRPC server
standing in for recommend."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from starling.config import REPO_ROOT
from starling.v1 import recommend_pb2, recommend_pb2_grpc

CHART = REPO_ROOT / "charts" / "starling"
SCRIPT = REPO_ROOT / "scripts" / "chart_readme.py"
DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"
NAMESPACE = "starling"

sys.path.insert(0, str(SCRIPT.parent))
import chart_readme  # noqa: E402

Manifest = dict[str, Any]


def render(helm: str, *args: str) -> list[Manifest]:
    done = subprocess.run(
        [helm, "template", "starling", str(CHART), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, values = expression["key"], expression.get("values", [])
        if expression["operator"] == "NotIn" and labels.get(key) in values:
            return False
        if expression["operator"] == "In" and labels.get(key) not in values:
            return False
    return True


def hooks_of(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]


@pytest.fixture(scope="module")
def default_render(helm: str) -> list[Manifest]:
    return render(helm)


@pytest.fixture(scope="module")
def test_pod(default_render: list[Manifest]) -> Manifest:
    pods = [m for m in hooks_of(default_render) if m["kind"] == "Pod"]
    assert len(pods) == 1, "the chart has one `helm test` pod"
    return pods[0]


def script_of(pod: Manifest) -> str:
    (container,) = pod["spec"]["containers"]
    assert container["command"][:2] == ["python", "-c"]
    return container["command"][2]


# ------------------------------------------------------------------------------------------ helm test hook
def test_helm_test_pod_renders_with_hook_target_and_security(
    default_render: list[Manifest], test_pod: Manifest
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    annotations = test_pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    spec = test_pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    services_image = values["image"]["services"]
    assert container["image"] == f"{services_image['repository']}:{services_image['tag']}"

    script = script_of(test_pod)
    port = values["services"]["recommend"]["port"]
    assert f'"starling-recommend.{NAMESPACE}.svc:{port}"' in script
    assert "STARLING_HELM_TEST_TARGET" in script
    assert "from grpc_health.v1 import health_pb2, health_pb2_grpc" in script
    assert "from starling.v1 import recommend_pb2, recommend_pb2_grpc" in script
    assert "RecommendRequest(user_id=1, k=5)" in script
    compile(script, "helm-test", "exec")

    # The same security settings as the services' Deployments.
    (recommend,) = find(default_render, "Deployment", "starling-recommend")
    recommend_pod = recommend["spec"]["template"]["spec"]
    assert spec["securityContext"] == recommend_pod["securityContext"]
    assert container["securityContext"] == recommend_pod["containers"][0]["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    for resource in ("cpu", "memory"):
        assert container["resources"]["requests"][resource] and container["resources"]["limits"][resource]


def test_helm_test_pod_can_reach_recommend(
    helm: str, default_render: list[Manifest], test_pod: Manifest
) -> None:
    """No policy of the release limits the test pod's egress, and recommend's ingress admits it: from anywhere
    by default, through the hook NetworkPolicy when networkPolicy.recommendFrom is set."""
    labels = test_pod["metadata"]["labels"]
    policies = find(default_render, "NetworkPolicy")
    assert policies and not [p for p in policies if matches(p["spec"]["podSelector"], labels)]
    assert not [m for m in hooks_of(default_render) if m["kind"] == "NetworkPolicy"]
    (recommend,) = find(default_render, "NetworkPolicy", "starling-recommend")
    assert "from" not in recommend["spec"]["ingress"][0], "recommend takes calls from anywhere by default"

    manifests = render(helm, "-f", str(CHART / "ci" / "production-values.yaml"))
    (pod,) = [m for m in hooks_of(manifests) if m["kind"] == "Pod"]
    labels = pod["metadata"]["labels"]
    (recommend,) = find(manifests, "NetworkPolicy", "starling-recommend")
    assert not any(
        matches(peer.get("podSelector", {}), labels) and "namespaceSelector" not in peer
        for peer in recommend["spec"]["ingress"][0]["from"]
    ), "production restricts recommend's callers"
    (extra,) = [m for m in hooks_of(manifests) if m["kind"] == "NetworkPolicy"]
    annotations = extra["metadata"]["annotations"]
    assert int(annotations["helm.sh/hook-weight"]) < int(
        pod["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert extra["spec"]["podSelector"] == recommend["spec"]["podSelector"]
    assert extra["spec"]["policyTypes"] == ["Ingress", "Egress"] and "egress" not in extra["spec"]
    (rule,) = extra["spec"]["ingress"]
    assert rule["ports"] == [{"port": 50051, "protocol": "TCP"}]
    assert [peer for peer in rule["from"] if matches(peer["podSelector"], labels)] == rule["from"]
    deployment_labels = find(manifests, "Deployment", "starling-web")[0]["spec"]["template"]["metadata"][
        "labels"
    ]
    assert not matches(rule["from"][0]["podSelector"], deployment_labels), "admits the test pod only"


def test_helm_test_pod_sends_the_chart_token_when_reads_need_a_key(helm: str, test_pod: Manifest) -> None:
    assert "env" not in test_pod["spec"]["containers"][0]
    manifests = render(helm, "--set", "auth.requireForReads=true")
    (pod,) = [m for m in hooks_of(manifests) if m["kind"] == "Pod"]
    (env,) = pod["spec"]["containers"][0]["env"]
    assert env["name"] == "STARLING_API_TOKEN"
    assert env["valueFrom"]["secretKeyRef"] == {"name": "starling-api-keys", "key": "api-token"}


class FakeRecommend(recommend_pb2_grpc.RecommendServiceServicer):
    def __init__(self, items: int) -> None:
        self.items = items
        self.requests: list[recommend_pb2.RecommendRequest] = []
        self.metadata: list[tuple[tuple[str, str], ...]] = []

    async def Recommend(
        self, request: recommend_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommend_pb2.RecommendResponse:
        self.requests.append(request)
        self.metadata.append(tuple(context.invocation_metadata() or ()))
        items = [recommend_pb2.RecommendedItem(movie_id=318 + i, title="x") for i in range(self.items)]
        return recommend_pb2.RecommendResponse(items=items, model_version="v-test")


async def run_against_server(
    script: str,
    items: int,
    serving: bool = True,
    env: dict[str, str] | None = None,
    with_recommend: bool = True,
) -> tuple[int, str, FakeRecommend]:
    """Run the helm test ``script`` against a local server answering health (``serving``) and, unless
    ``with_recommend`` is off, Recommend with ``items`` items; (exit code, output, the servicer)."""
    servicer = FakeRecommend(items)
    health_servicer = health.aio.HealthServicer()
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    await health_servicer.set("", status)
    server = grpc.aio.server()
    if with_recommend:
        recommend_pb2_grpc.add_RecommendServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            cwd=REPO_ROOT,
            env={"STARLING_HELM_TEST_TARGET": f"127.0.0.1:{port}", "PATH": "/usr/bin:/bin", **(env or {})},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        await server.stop(None)
    assert process.returncode is not None
    return process.returncode, output.decode(), servicer


def test_helm_test_script_passes_against_a_serving_recommend(test_pod: Manifest) -> None:
    code, output, servicer = asyncio.run(run_against_server(script_of(test_pod), items=1))
    assert code == 0, output
    assert "health: SERVING" in output and "1 items" in output
    assert [(r.user_id, r.k) for r in servicer.requests] == [(1, 5)]
    assert not any(key == "authorization" for md in servicer.metadata for key, _ in md)

    code, output, servicer = asyncio.run(
        run_against_server(script_of(test_pod), items=2, env={"STARLING_API_TOKEN": "stk_t"})
    )
    assert code == 0, output
    assert ("authorization", "Bearer stk_t") in servicer.metadata[0]


def test_helm_test_script_fails_without_items_or_health(test_pod: Manifest) -> None:
    code, output, _ = asyncio.run(run_against_server(script_of(test_pod), items=0))
    assert code != 0 and "no items" in output, output
    code, output, servicer = asyncio.run(run_against_server(script_of(test_pod), items=1, serving=False))
    assert code != 0 and "NOT_SERVING" in output, output
    assert not servicer.requests


def test_helm_test_script_fails_when_recommend_is_unreachable(test_pod: Manifest) -> None:
    """A server without RecommendService: the call errors (UNIMPLEMENTED) and the script exits non-zero."""
    code, output, _ = asyncio.run(run_against_server(script_of(test_pod), items=1, with_recommend=False))
    assert code != 0 and "UNIMPLEMENTED" in output, output


# ------------------------------------------------------------------------------------------- chart README
def leaf_paths(values: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leaf_paths(value, (*path, key))
    else:
        yield path


def test_chart_readme_is_fresh() -> None:
    committed = (CHART / "README.md").read_text(encoding="utf-8")
    assert chart_readme.generate(CHART) == committed, (
        "charts/starling/README.md is stale: run `.venv/bin/python scripts/chart_readme.py`"
    )


def test_chart_readme_documents_every_commented_key() -> None:
    values_text = (CHART / "values.yaml").read_text(encoding="utf-8")
    values = yaml.safe_load(values_text)
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \| `(.*)` \| (.*) \|$", readme, flags=re.MULTILINE)
    keys = [row[0] for row in rows]
    assert len(keys) == len(set(keys))
    assert len(keys) == len(re.findall(r"^\s*# --", values_text, flags=re.MULTILINE)), "one row per `# --`"
    for key in keys:
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} is not a key of values.yaml"
            node = node[part]
    documented = set(keys)
    for leaf in leaf_paths(values):
        prefixes = {".".join(leaf[:i]) for i in range(1, len(leaf) + 1)}
        assert prefixes & documented, f"{'.'.join(leaf)}: neither it nor a parent has a `# --` comment"
    by_key = {row[0]: row for row in rows}
    assert by_key["services.recommend.port"][1:3] == ("int", "50051")
    assert by_key["feast.redis.connectionString"][2] == '"starling-redis-master:6379"'
    # A multi-line comment is joined into one description.
    assert (
        "base64 -d" in by_key["auth.existingSecret"][3]
        and "api_keys.json" in by_key["auth.existingSecret"][3]
    )
    assert "docs/deploy.md" in readme and "helm install" in readme


def test_chart_readme_parser_follows_helm_docs_comments() -> None:
    text = (
        "# header without dashes\n"
        "a:\n"
        "  # -- first line\n"
        "  #    second line\n"
        "  b: 1\n"
        "  c: x\n"
        "  # -- a list\n"
        "  d:\n"
        "    - name: not-a-key\n"
        "      e: 2\n"
        "  # -- after the list\n"
        "  f: {g: true}\n"
        "# -- top\n"
        "h: 0.5\n"
    )
    entries = [(e.key, e.type, e.default, e.description) for e in chart_readme.parse(text)]
    assert entries == [
        ("a.b", "int", "1", "first line second line"),
        ("a.d", "list", '[{"name":"not-a-key","e":2}]', "a list"),
        ("a.f", "object", '{"g":true}', "after the list"),
        ("h", "float", "0.5", "top"),
    ]


def test_chart_readme_check_exits_1_when_stale(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    for name in ("values.yaml", "Chart.yaml"):
        shutil.copy(CHART / name, chart / name)

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--check", "--chart", str(chart)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert check().returncode == 1, "no README at all"
    written = subprocess.run(
        [sys.executable, str(SCRIPT), "--chart", str(chart)], capture_output=True, timeout=60
    )
    assert written.returncode == 0
    assert check().returncode == 0
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "# -- A new documented key.\nnewKey: 1\n")
    stale = check()
    assert stale.returncode == 1 and "stale" in stale.stderr
    assert (chart / "README.md").read_text() == (CHART / "README.md").read_text(), "--check writes nothing"


# ------------------------------------------------------------------------------------------------- icon
def test_chart_has_an_svg_icon() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    icon = chart["icon"]
    assert icon.startswith("https://") and icon.endswith("/charts/starling/icon.svg")
    owner_repo = chart["home"].removeprefix("https://github.com/")
    assert icon == f"https://raw.githubusercontent.com/{owner_repo}/main/charts/starling/icon.svg"
    root = ET.parse(CHART / "icon.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") and len(list(root.iter())) > 5
    assert (CHART / "icon.svg").stat().st_size < 10_000


# ------------------------------------------------------------------------------------------ docs/deploy.md
VALUES_PATH = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)+)(?:\s*[:=].*)?$")


def values_paths_in(markdown: str, top_level: set[str]) -> set[str]:
    """Dotted values paths the text names: inline code spans (`a.b.c`, `a.b: x`, `a.b=x`) and `--set a.b=`,
    those whose first part is a top-level key of values.yaml."""
    candidates = [
        m.group(1) for span in re.findall(r"`([^`\n]+)`", markdown) if (m := VALUES_PATH.match(span))
    ]
    candidates += re.findall(r"--set ([A-Za-z][\w.]*)=", markdown)
    return {path for path in candidates if path.split(".")[0] in top_level}


def missing_values_paths(markdown: str, values: dict[str, Any]) -> list[str]:
    missing = []
    for path in sorted(values_paths_in(markdown, set(values))):
        node: Any = values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(path)
                break
            node = node[part]
    return missing


def test_deploy_doc_names_only_real_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    assert len(values_paths_in(doc, set(values))) >= 40
    assert missing_values_paths(doc, values) == []
    # The check can fail.
    assert missing_values_paths("set `ranker.profil` and `milvus.url=x`", values) == [
        "milvus.url",
        "ranker.profil",
    ]


def test_deploy_doc_covers_the_deployment() -> None:
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    for needle in (
        "1.33",
        "KServe",
        "RawDeployment",
        "Serverless",
        "prometheus-operator",
        "kube-state-metrics",
        "starling-redis",
        "milvus.uri",
        "ReadWriteMany",
        "ReadWriteOnce",
        "helm install",
        "helm test",
        "skaffold run -p cpu",
        "skaffold run -p gpu",
        "skaffold dev",
        "ci/gpu-values.yaml",
        "auth.existingSecret",
        "starling auth create-key",
        "web.ingress",
        "helm upgrade",
        "helm rollback",
        "models/current",
        "--no-publish",
        "helm uninstall",
    ):
        assert needle in doc, needle
    for pointer in (CHART / "Chart.yaml", REPO_ROOT / "skaffold.yaml"):
        assert "docs/deploy.md" in pointer.read_text(), pointer
    profiles = {p["name"] for p in yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())["profiles"]}
    assert profiles == {"cpu", "gpu", "dev"}
