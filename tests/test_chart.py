"""The Helm chart charts/starling, checked with a real Helm binary (scripts/install-helm.sh installs a pinned one
when `helm` is not on PATH): lint and render for the default and the production values, every rendered object
validated (core kinds against the Kubernetes 1.33 OpenAPI schemas in strict mode, custom resources against
their CRDs from ../shared/schemas/crds), skaffold.yaml against the skaffold v4beta13 JSON schema, bad values
rejected by values.schema.json, and the properties the deployment relies on (security, probes, policies)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from starling.config import REPO_ROOT

CHART = REPO_ROOT / "charts" / "starling"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
VALUES_FILES = {
    "default": None,
    "production": PRODUCTION_VALUES,
    "dev": CHART / "ci" / "dev-values.yaml",
    "gpu": CHART / "ci" / "gpu-values.yaml",
}
SCHEMAS = REPO_ROOT.parent / "shared" / "schemas"
KUBERNETES_VERSION = "1.33.0"
NAMESPACE = "starling"
SERVICES = ("recommend", "candidates", "recall", "rerank")

Manifest = dict[str, Any]


# ------------------------------------------------------------------------------------------------ helpers
def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def dry_run_install(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`helm install --dry-run=client` of the chart as release "starling" (prints the NOTES)."""
    return run_helm(helm, "install", "starling", str(CHART), "-n", NAMESPACE, "--dry-run=client", *args)


def render(helm: str, values: Path | None = None, *sets: str) -> list[Manifest]:
    """`helm template` of the chart as release "starling" in namespace "starling"; returns the objects."""
    args = ["template", "starling", str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["-f", str(values)]
    for assignment in sets:
        args += ["--set", assignment]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[Manifest]]:
    return {name: render(helm, values) for name, values in VALUES_FILES.items()}


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload, the ranker's predictor included."""
    for m in manifests:
        spec = m.get("spec", {})
        if m["kind"] in ("Deployment", "Job"):
            yield m["metadata"]["name"], spec["template"]["spec"]
        elif m["kind"] == "CronJob":
            yield m["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]
        elif m["kind"] == "InferenceService":
            yield m["metadata"]["name"], spec["predictor"]
        elif m["kind"] == "PyTorchJob":
            for role, replica in spec["pytorchReplicaSpecs"].items():
                yield f"{m['metadata']['name']}/{role}", replica["template"]["spec"]


# ----------------------------------------------------------------------------------------- CRD validation
def strict_schema(schema: Any) -> Any:
    """An openAPIV3Schema made strict the way `kubectl --validate=strict` is: an object schema that lists its
    properties rejects unknown fields, unless the CRD preserves unknown fields there."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def load_crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> validator, for every CRD copy in ../shared/schemas/crds."""
    validators = {}
    for path in sorted((SCHEMAS / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = strict_schema(version["schema"]["openAPIV3Schema"])
                # metadata is validated by the API server itself, not by the CRD schema.
                schema["properties"]["metadata"] = {"type": "object"}
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


CRD_VALIDATORS = load_crd_validators()


def validation_errors(manifest: Manifest) -> list[str]:
    """Why ``manifest`` is not a valid object of its kind (empty when valid)."""
    key = (manifest["apiVersion"], manifest["kind"])
    where = f"{manifest['kind']}/{manifest['metadata']['name']}"
    if key in CRD_VALIDATORS:
        return [
            f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in CRD_VALIDATORS[key].iter_errors(manifest)
        ]
    if "." in manifest["apiVersion"].split("/")[0] and not manifest["apiVersion"].split("/")[0].endswith(
        ".k8s.io"
    ):
        return [f"{where}: no CRD schema for {manifest['apiVersion']} in {SCHEMAS / 'crds'}"]
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'/'.join(map(str, exc.absolute_path))}: {exc.message}"]
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


# ------------------------------------------------------------------------------------------------- tests
def test_helm_is_pinned_v4(helm: str) -> None:
    done = run_helm(helm, "version", "--short")
    assert done.returncode == 0 and done.stdout.startswith("v4."), done.stdout + done.stderr


@pytest.mark.parametrize("values", ["default", "production"])
def test_helm_lint(helm: str, values: str) -> None:
    args = ["lint", str(CHART), "--strict"]
    if VALUES_FILES[values] is not None:
        args += ["-f", str(VALUES_FILES[values])]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_every_rendered_object_validates(rendered: dict[str, list[Manifest]], values: str) -> None:
    manifests = rendered[values]
    errors = [error for manifest in manifests for error in validation_errors(manifest)]
    assert not errors, "\n".join(errors)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "InferenceService", "Job", "PersistentVolumeClaim"} <= kinds
    if values != "dev":  # dev turns the CronJob and the NetworkPolicies off
        assert {"CronJob", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    if values == "production":
        assert {
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
            "PodMonitor",
            "PrometheusRule",
            "Ingress",
        } <= kinds


def test_validation_catches_unknown_fields_and_bad_types(rendered: dict[str, list[Manifest]]) -> None:
    """The validators above can fail: strict mode rejects a misspelt field, in core kinds and in CRDs."""
    production = rendered["production"]
    deployment = copy.deepcopy(find(production, "Deployment", "starling-recommend")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert any("readinessProbes" in e for e in validation_errors(deployment))
    deployment = copy.deepcopy(find(production, "Deployment", "starling-recommend")[0])
    deployment["spec"]["replicas"] = "two"
    assert validation_errors(deployment)
    monitor = copy.deepcopy(find(production, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["scrapeIntervall"] = "1s"
    assert any("scrapeIntervall" in e for e in validation_errors(monitor))
    isvc = copy.deepcopy(find(production, "InferenceService")[0])
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    assert validation_errors(isvc)


def test_skaffold_yaml_matches_v4beta13_schema() -> None:
    schema = json.loads((SCHEMAS / "skaffold" / "v4beta13.json").read_text())
    config = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]
    assert not errors, "\n".join(errors)
    assert config["apiVersion"] == "skaffold/v4beta13"
    dockerfiles = {a["image"]: a["docker"]["dockerfile"] for a in config["build"]["artifacts"]}
    assert dockerfiles == {
        "starling-services": "docker/Dockerfile.services",
        "starling-ranker": "docker/Dockerfile.ranker",
    }
    assert all((REPO_ROOT / path).is_file() for path in dockerfiles.values())
    release = config["deploy"]["helm"]["releases"][0]
    assert (REPO_ROOT / release["chartPath"]).resolve() == CHART
    assert set(release["setValueTemplates"]) == {
        "image.services.repository",
        "image.services.tag",
        "image.ranker.repository",
        "image.ranker.tag",
    }
    assert {p["name"] for p in config["profiles"]} == {"cpu", "gpu", "dev"}
    for profile in config["profiles"]:
        for patch in profile.get("patches", []):
            if str(patch.get("value", "")).endswith(".yaml"):
                assert (REPO_ROOT / patch["value"]).is_file(), patch
    broken = copy.deepcopy(config)
    broken["deploy"]["helm"]["releases"][0]["chartPaht"] = "charts/starling"
    assert list(validator.iter_errors(broken)), "the schema must reject an unknown release field"


BAD_VALUES = [
    ({"services": {"recommend": {"replicas": -1}}}, "/services/recommend/replicas", "minimum"),
    ({"services": {"recall": {"port": "50053"}}}, "/services/recall/port", "want integer"),
    ({"ranker": {"profile": "tpu"}}, "/ranker/profile", "value must be one of"),
    ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed", ""),
    ({"image": {"services": {"repository": None}}}, "/image/services", "missing property 'repository'"),
    ({"monitoring": {"rules": {"errorRatio": 2}}}, "/monitoring/rules/errorRatio", "maximum"),
    ({"training": {"schedule": {"cron": "every day"}}}, "/training/schedule/cron", "does not match pattern"),
    ({"config": {"extraEnv": {"PATH": "/bin"}}}, "invalid propertyName 'PATH'", "^STARLING_"),
    (
        {"services": {"rerank": {"autoscaling": {"enabled": "yes"}}}},
        "/services/rerank/autoscaling",
        "boolean",
    ),
    (
        {"services": {"recommend": {"resources": {"limits": {"cpu": None}}}}},
        "/services/recommend/resources/limits",
        "missing property 'cpu'",
    ),
    ({"training": {"resources": {"requests": None}}}, "/training/resources", "missing property 'requests'"),
    ({"networkPolicy": {"dns": {"to": []}}}, "/networkPolicy/dns/to", "minItems"),
    (
        {"networkPolicy": {"extraEgress": {"recall": [{"ports": [{"port": 443}]}]}}},
        "/networkPolicy/extraEgress/recall/0",
        "missing property 'to'",
    ),
    ({"networkPolicy": {"redis": {"to": [{"podSelectr": {}}]}}}, "/networkPolicy/redis/to/0", "podSelectr"),
    ({"networkPolicy": {"webFrom": [{"podSelectr": {}}]}}, "/networkPolicy/webFrom/0", "podSelectr"),
    ({"web": {"enabled": "yes"}}, "/web/enabled", "want boolean"),
    ({"web": {"port": 0}}, "/web/port", "minimum"),
    ({"web": {"openSignIn": "false"}}, "/web/openSignIn", "want boolean"),
    (
        {"web": {"resources": {"limits": {"memory": None}}}},
        "/web/resources/limits",
        "missing property 'memory'",
    ),
    ({"web": {"ingress": {"hosts": ["https://movies.example.com"]}}}, "/web/ingress/hosts/0", "pattern"),
    ({"web": {"ingress": {"tls": {"secret": "tls"}}}}, "/web/ingress/tls", "additional properties 'secret'"),
    (
        {"web": {"ingress": {"paths": [{"path": "api", "pathType": "Prefix"}]}}},
        "/web/ingress/paths/0/path",
        "pattern",
    ),
    ({"web": {"allowedOrigins": ["example.com"]}}, "/web/allowedOrigins/0", "pattern"),
    (
        {"web": {"sessionSecret": {"existingSecret": "s", "key": None}}},
        "/web/sessionSecret",
        "missing property 'key'",
    ),
    ({"web": {"replica": 2}}, "additional properties 'replica' not allowed", ""),
]


@pytest.mark.parametrize(("values", "where", "why"), BAD_VALUES, ids=[w for _, w, _ in BAD_VALUES])
def test_schema_rejects_bad_values(helm: str, tmp_path: Path, values: dict, where: str, why: str) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    for command in (
        ["lint", str(CHART), "-f", str(bad)],
        ["template", "starling", str(CHART), "-f", str(bad)],
    ):
        done = run_helm(helm, *command)
        output = done.stdout + done.stderr
        assert done.returncode != 0, f"helm {command[0]} accepted {values}"
        assert where in output and why in output, output


def test_template_refuses_milvus_lite_with_several_recall_replicas(helm: str) -> None:
    done = run_helm(helm, "template", "starling", str(CHART), "--set", "services.recall.replicas=2")
    assert done.returncode != 0
    assert "milvus.uri is empty" in done.stderr and "one recall replica" in done.stderr
    render(helm, None, "services.recall.replicas=2", "milvus.uri=http://milvus:19530")


# ---------------------------------------------------------------------------------- what the chart promises
@pytest.mark.parametrize("values", ["default", "production"])
def test_pods_are_locked_down(rendered: dict[str, list[Manifest]], values: str) -> None:
    specs = dict(pod_specs(rendered[values]))
    assert len(specs) >= 8, sorted(specs)  # 4 services, web gateway, ranker, Job, CronJob
    assert "starling-web" in specs
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if v["name"] == "tmp" and "emptyDir" in v}
        assert tmp_volumes == {"tmp"}, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert context["seccompProfile"]["type"] == "RuntimeDefault", (name, container["name"])
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], (
                name,
                container["name"],
            )
            assert container["resources"].get("requests"), (name, container["name"])


def test_services_have_grpc_probes_ports_and_budgets(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["production"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name in SERVICES:
        deployment = find(manifests, "Deployment", f"starling-{name}")[0]
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        port = values["services"][name]["port"]
        assert container["command"] == ["python", "-m", f"services.{name}.server"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (name, probe)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["STARLING_METRICS_PORT"] == str(values["services"][name]["metricsPort"])
        service = find(manifests, "Service", f"starling-{name}")[0]
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
            "grpc": port,
            "metrics": values["services"][name]["metricsPort"],
        }
        hpa = find(manifests, "HorizontalPodAutoscaler", f"starling-{name}")[0]
        assert (
            hpa["apiVersion"] == "autoscaling/v2"
            and hpa["spec"]["scaleTargetRef"]["name"] == f"starling-{name}"
        )
        assert find(manifests, "PodDisruptionBudget", f"starling-{name}")
    config = find(manifests, "ConfigMap", "starling-config")[0]["data"]
    assert config["STARLING_CANDIDATES_TARGET"] == "starling-candidates.starling.svc:50052"
    assert config["STARLING_RANKER_TARGET"] == "starling-ranker-predictor.starling.svc:80"
    assert config["STARLING_ONLINE_STORE"] == "redis" and config["STARLING_MILVUS_URI"].startswith("http://")
    assert "STARLING_REDIS_CONNECTION_STRING" not in config, "the production password comes from a Secret"


def test_network_policies_expose_only_recommend_and_web(rendered: dict[str, list[Manifest]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in find(rendered["default"], "NetworkPolicy")}
    names = (*SERVICES, "web", "ranker", "training", "default-deny")
    assert set(policies) == {f"starling-{name}" for name in names}
    recommend_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "starling",
                                                      "app.kubernetes.io/instance": "starling",
                                                      "app.kubernetes.io/component": "recommend"}}}  # fmt: skip
    for name, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress", "Egress"], name
        if name in ("starling-default-deny", "starling-training"):
            assert "ingress" not in spec, f"{name} takes no traffic"
            continue
        serving_rule = spec["ingress"][0]
        if name in ("starling-recommend", "starling-web"):
            assert "from" not in serving_rule, f"{name} takes calls from anywhere by default"
        else:
            assert serving_rule["from"] == [recommend_pods], name
    production = {p["metadata"]["name"]: p["spec"] for p in find(rendered["production"], "NetworkPolicy")}
    assert len(production["starling-recommend"]["ingress"][0]["from"]) == 3, "recommendFrom + the web gateway"
    ingress_nginx = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    assert production["starling-web"]["ingress"][0]["from"] == [ingress_nginx]


def pod_labels(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    """Object name -> labels of its pods (KServe adds serving.kserve.io/inferenceservice to the ranker's)."""
    labels = {}
    for m in manifests:
        spec = m.get("spec", {})
        if m["kind"] in ("Deployment", "Job"):
            labels[m["metadata"]["name"]] = spec["template"]["metadata"]["labels"]
        elif m["kind"] == "CronJob":
            labels[m["metadata"]["name"]] = spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        elif m["kind"] == "InferenceService":
            isvc = {"serving.kserve.io/inferenceservice": m["metadata"]["name"]}
            labels[m["metadata"]["name"]] = {**spec["predictor"]["labels"], **isvc}
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches ``labels``."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def policies_of(manifests: list[Manifest], labels: dict[str, str]) -> list[dict[str, Any]]:
    """Specs of the release's NetworkPolicies that select a pod with ``labels`` (all in one namespace)."""
    return [p["spec"] for p in find(manifests, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]


def peer_selects(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicyPeer selects a pod of the release's namespace with ``labels``."""
    if "ipBlock" in peer:
        return False
    namespace = {"kubernetes.io/metadata.name": NAMESPACE}
    if "namespaceSelector" in peer and not selects(peer["namespaceSelector"], namespace):
        return False
    return selects(peer.get("podSelector", {}), labels)


def rule_ports(rule: dict[str, Any]) -> set[tuple[Any, str]] | None:
    """(port, protocol) pairs of a rule; None = every port."""
    if not rule.get("ports"):
        return None
    return {(p.get("port"), p.get("protocol", "TCP")) for p in rule["ports"]}


def common_ports(a: set | None, b: set | None) -> bool:
    return a is None or b is None or bool(a & b)


def allowed_ports(
    manifests: list[Manifest], direction: str, pod: dict[str, str], peer: dict[str, str]
) -> list[set | None]:
    """Port sets (None = every port) on which the policies selecting ``pod`` let it talk to ``peer`` in
    ``direction`` (Ingress or Egress); unrestricted when no policy selecting it has that policy type."""
    specs = [spec for spec in policies_of(manifests, pod) if direction in spec["policyTypes"]]
    if not specs:
        return [None]
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return [
        rule_ports(rule)
        for spec in specs
        for rule in spec.get(key, [])
        if not rule.get(peers) or any(peer_selects(p, peer) for p in rule[peers])
    ]


def release_edges(manifests: list[Manifest]) -> set[tuple[str, str]]:
    """(from, to) component pairs of the release that the policies let talk: the caller's policies allow the
    egress and the callee's allow the ingress, on a common port."""
    pods = {
        labels.get("app.kubernetes.io/component", name): labels
        for name, labels in pod_labels(manifests).items()
    }
    edges = set()
    for source, source_labels in pods.items():
        for target, target_labels in pods.items():
            out = allowed_ports(manifests, "Egress", source_labels, target_labels)
            into = allowed_ports(manifests, "Ingress", target_labels, source_labels)
            if source != target and any(common_ports(a, b) for a in out for b in into):
                edges.add((source, target))
    return edges


@pytest.mark.parametrize("values", ["default", "production", "gpu"])
def test_helm_template_renders_default_deny(rendered: dict[str, list[Manifest]], values: str) -> None:
    manifests = rendered[values]
    deny = find(manifests, "NetworkPolicy", "starling-default-deny")
    assert len(deny) == 1
    spec = deny[0]["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in spec and "egress" not in spec, "default deny has no rules"
    labels = pod_labels(manifests)
    assert {
        "starling-recommend",
        "starling-web",
        "starling-ranker",
        "starling-train-r1",
        "starling-retrain",
    } <= set(labels)
    for name, pod in labels.items():
        assert selects(spec["podSelector"], pod), f"{name} escapes the default deny"
    assert not selects(spec["podSelector"], {"app.kubernetes.io/name": "redis"})


@pytest.mark.parametrize("values", ["default", "production", "gpu"])
def test_every_pod_may_resolve_names_and_nothing_else_by_default(
    rendered: dict[str, list[Manifest]], values: str
) -> None:
    manifests = rendered[values]
    kube_dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    for name, labels in pod_labels(manifests).items():
        egress = [rule for spec in policies_of(manifests, labels) for rule in spec.get("egress", [])]
        dns = [rule for rule in egress if kube_dns in rule["to"]]
        assert dns, f"{name} cannot reach the cluster DNS"
        assert rule_ports(dns[0]) == {(53, "UDP"), (53, "TCP")}, name
        assert all("Egress" in spec["policyTypes"] for spec in policies_of(manifests, labels)), (
            f"{name}: a policy that selects it must restrict egress too"
        )
    for policy in find(manifests, "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            where = policy["metadata"]["name"]
            assert rule.get("to"), f"{where}: an egress rule without `to` allows every destination"
            for peer in rule["to"]:
                assert peer, f"{where}: an empty peer selects every pod"
                cidr = peer.get("ipBlock", {}).get("cidr", "")
                assert not cidr.endswith("/0"), f"{where}: egress to {cidr}"
                assert peer.get("namespaceSelector") != {} or "podSelector" in peer, where


@pytest.mark.parametrize("values", ["default", "production"])
def test_only_recommend_calls_the_stages(rendered: dict[str, list[Manifest]], values: str) -> None:
    """Within the release, the policies allow exactly the calls recommend and the web gateway make, and nothing
    else (production restricts recommendFrom: the web gateway must still get through)."""
    manifests = rendered[values]
    assert release_edges(manifests) == {
        ("web", "recommend"),
        ("recommend", "candidates"),
        ("recommend", "recall"),
        ("recommend", "rerank"),
        ("recommend", "ranker"),
    }
    values_yaml = yaml.safe_load((CHART / "values.yaml").read_text())
    recommend = find(manifests, "NetworkPolicy", "starling-recommend")[0]["spec"]
    stage_ports = {}
    for rule in recommend["egress"]:
        for peer in rule["to"]:
            match = peer.get("podSelector", {}).get("matchLabels", {})
            if match.get("app.kubernetes.io/instance") == "starling":
                stage_ports[match["app.kubernetes.io/component"]] = rule_ports(rule)
            elif "serving.kserve.io/inferenceservice" in match:
                stage_ports["ranker"] = rule_ports(rule)
    assert stage_ports == {
        **{
            name: {(values_yaml["services"][name]["port"], "TCP")}
            for name in ("candidates", "recall", "rerank")
        },
        "ranker": {(values_yaml["ranker"]["grpcPort"], "TCP")},
    }


def egress_ports_to(manifests: list[Manifest], policy: str, labels: dict[str, str]) -> set | None:
    spec = find(manifests, "NetworkPolicy", policy)[0]["spec"]
    found: set = set()
    for rule in spec["egress"]:
        if any(peer_selects(peer, labels) for peer in rule["to"]):
            ports = rule_ports(rule)
            if ports is None:
                return None
            found |= ports
    return found


def test_stores_are_reached_only_by_their_clients(
    helm: str, tmp_path: Path, rendered: dict[str, list[Manifest]]
) -> None:
    redis = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": "starling-redis"}
    milvus = {"app.kubernetes.io/name": "milvus", "app.kubernetes.io/instance": "milvus"}
    milvus_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "milvus"}}}
    for values in ("default", "production"):
        manifests = rendered[values]
        for policy in ("recommend", "ranker", "training"):
            assert egress_ports_to(manifests, f"starling-{policy}", redis) == {(6379, "TCP")}, (
                values,
                policy,
            )
        for policy in ("candidates", "recall", "rerank"):
            assert egress_ports_to(manifests, f"starling-{policy}", redis) == set(), (values, policy)
        for policy in ("recommend", "candidates", "rerank", "ranker", "training"):
            rules = find(manifests, "NetworkPolicy", f"starling-{policy}")[0]["spec"]["egress"]
            assert not any(
                milvus_ns["namespaceSelector"] == p.get("namespaceSelector") for r in rules for p in r["to"]
            )
    recall = {
        values: find(rendered[values], "NetworkPolicy", "starling-recall")[0]["spec"]["egress"]
        for values in ("default", "production")
    }
    assert len(recall["default"]) == 1, "milvus-lite: recall needs DNS only"
    to_milvus = [r for r in recall["production"] if {**milvus_ns, "podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "milvus"}}} in r["to"]]  # fmt: skip
    assert len(to_milvus) == 1 and rule_ports(to_milvus[0]) == {(19530, "TCP")}
    assert selects(to_milvus[0]["to"][0]["podSelector"], milvus)

    # The dataset download of the training pipeline is an explicit list; a remote Feast registry and extra
    # egress are added where asked.
    training = find(rendered["default"], "NetworkPolicy", "starling-training")[0]["spec"]["egress"]
    assert {
        "to": [{"ipBlock": {"cidr": "128.101.0.0/16"}}],
        "ports": [{"port": 443, "protocol": "TCP"}],
    } in training
    custom_values = tmp_path / "custom-values.yaml"
    custom_values.write_text(
        yaml.safe_dump(
            {
                "networkPolicy": {
                    "training": {"egressTo": []},
                    "feastRegistry": {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [5432]},
                    "extraEgress": {
                        "ranker": [{"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 443}]}]
                    },
                }
            }
        )
    )
    custom = render(helm, custom_values)
    registry = {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"port": 5432, "protocol": "TCP"}]}
    egress = {p["metadata"]["name"]: p["spec"].get("egress") for p in find(custom, "NetworkPolicy")}
    for name in ("recommend", "ranker", "training"):
        assert registry in egress[f"starling-{name}"], name
    for name in ("candidates", "recall", "rerank"):
        assert registry not in egress[f"starling-{name}"], name
    assert not any("ipBlock" in p for r in egress["starling-training"] if r != registry for p in r["to"])
    assert {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 443}]} in egress[
        "starling-ranker"
    ]
    errors = [error for manifest in custom for error in validation_errors(manifest)]
    assert not errors, "\n".join(errors)


def test_serverless_ranker_is_left_to_knative(helm: str) -> None:
    manifests = render(helm, None, "ranker.deploymentMode=Serverless")
    names = {p["metadata"]["name"] for p in find(manifests, "NetworkPolicy")}
    assert "starling-ranker" not in names and "starling-default-deny" in names
    deny = find(manifests, "NetworkPolicy", "starling-default-deny")[0]["spec"]["podSelector"]
    labels = pod_labels(manifests)
    assert not selects(deny, labels["starling-ranker"])
    assert all(selects(deny, pod) for name, pod in labels.items() if name != "starling-ranker")
    errors = [error for manifest in manifests for error in validation_errors(manifest)]
    assert not errors, "\n".join(errors)


QUANTITY_SUFFIXES = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
QUANTITY_SUFFIXES |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | float) -> float:
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()  # type: ignore[union-attr]
    return float(number) * QUANTITY_SUFFIXES[suffix]


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_every_container_has_cpu_and_memory_requests_and_limits(
    rendered: dict[str, list[Manifest]], values: str
) -> None:
    containers = 0
    for name, spec in pod_specs(rendered[values]):
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = (values, name, container["name"])
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, (*where, resource)
            containers += 1
    training_pods = 1 if values == "dev" else 2  # dev has no CronJob
    if values == "production":  # the install Job ends with materializing; a PyTorchJob's Master and Workers
        # (one wait + one train container each) train
        assert containers == 6 + 5 + 3 + 2 * 2, (
            "4 services, web, the ranker, the CronJob, the Job, the PyTorchJob"
        )
    else:
        assert containers == 6 + 5 * training_pods, (
            "4 services, web, the ranker, (4 init + 1) per training pod"
        )


def test_ranker_profiles_and_model_sources(helm: str, rendered: dict[str, list[Manifest]]) -> None:
    cpu = find(rendered["default"], "InferenceService")[0]["spec"]["predictor"]
    gpu = find(rendered["production"], "InferenceService")[0]["spec"]["predictor"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"].get("limits", {})
    assert "tolerations" not in cpu
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu" and gpu["nodeSelector"]
    env = lambda predictor: {e["name"]: e.get("value") for e in predictor["containers"][0]["env"]}  # noqa: E731
    assert env(cpu)["STARLING_RANKER_DEVICE"] == "cpu" and env(gpu)["STARLING_RANKER_DEVICE"] == "cuda"
    pvc_mount = {m["name"]: m for m in cpu["containers"][0]["volumeMounts"]}["artifacts"]
    assert pvc_mount["readOnly"] is True and pvc_mount["mountPath"] == env(cpu)["STARLING_WORKDIR"]

    from_uri = render(
        helm, None, "ranker.model.source=storageUri", "ranker.model.storageUri=s3://models/starling"
    )
    predictor = find(from_uri, "InferenceService")[0]["spec"]["predictor"]
    assert predictor["storageUris"] == [{"uri": "s3://models/starling", "mountPath": "/mnt/models"}]
    assert env(predictor)["STARLING_WORKDIR"] == "/mnt/models"
    assert sorted(v["name"] for v in predictor["volumes"]) == ["experiments", "tmp"], "no artifact PVC"
    done = run_helm(helm, "template", "s", str(CHART), "--set", "ranker.model.source=storageUri")
    assert done.returncode != 0 and "storageUri is empty" in done.stderr


def test_training_runs_the_pipeline_in_order(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["default"]
    job = find(manifests, "Job", "starling-train-r1")[0]["spec"]["template"]["spec"]
    steps = [c["name"] for c in job["initContainers"]] + [c["name"] for c in job["containers"]]
    assert steps == ["ingest", "features-build", "features-materialize", "train", "evaluate"]
    args = {c["name"]: c["args"] for c in job["initContainers"] + job["containers"]}
    assert args["ingest"] == ["data", "ingest", "ml-latest-small", "--out", "/data", "--on-bad", "error"]
    assert args["train"] == ["train", "/data", "--model", "all"]
    assert args["evaluate"] == ["evaluate", "/data", "--json"]
    assert job["restartPolicy"] == "Never"
    cron = find(manifests, "CronJob", "starling-retrain")[0]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    cron_pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert [c["name"] for c in cron_pod["initContainers"]] == steps[:-1]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for _, spec in pod_specs(manifests)
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"starling-artifacts"}, "services, ranker and training share one artifact volume"
    dev = find(rendered["dev"], "CronJob")
    assert not dev


def test_dashboard_and_rules(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["production"]
    dashboard_map = find(manifests, "ConfigMap", "starling-dashboard")[0]
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["starling.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "starling_grpc_server_handling_seconds_bucket",
        "starling_grpc_server_handled_total",
        "starling_stage_seconds_bucket",
        "starling_stage_fallbacks_total",
        "starling_model_info",
        "starling_feature_materialized_timestamp_seconds",
        "starling_experiment_exposures_total",
        "starling_experiment_feedback_total",
    ):
        assert metric in exprs, metric
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r.get("repeat") for r in rows] == ["experiment"], "one row per experiment"
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "experiment")
    assert "starling_experiment_exposures_total" in variable["definition"] and variable["includeAll"]
    assert "histogram_quantile(0.99" in exprs
    rules = find(manifests, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {"StarlingRecommendLatencyHigh", "StarlingErrorRateHigh"}
    assert all(r["expr"] and r["for"] and r["labels"]["severity"] for r in rules)


def test_notes_tell_how_to_call_the_service(helm: str) -> None:
    done = dry_run_install(helm)
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n starling port-forward svc/starling-recommend 50051:50051" in notes
    assert "starling.v1.RecommendService/Recommend" in notes and "grpcurl -plaintext" in notes
    assert "kubectl -n starling port-forward svc/starling-web 8088:8088" in notes
    assert "http://localhost:8088/" in notes and "web.openSignIn" in notes


def parse_starling_cli(args: list[str]) -> click.Command:
    """The `starling` subcommand ``args`` name, after click has parsed its options (raises on bad ones)."""
    from starling.cli import cli

    command: click.Command = cli
    while isinstance(command, click.Group):
        assert args, f"missing subcommand of {command.name}"
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"`starling {args[0]}` does not exist"
        command, args = sub, args[1:]
    command.make_context(command.name, list(args))
    return command


@pytest.mark.parametrize("values", ["default", "production"])
def test_container_commands_exist(rendered: dict[str, list[Manifest]], values: str) -> None:
    """Every container runs `python -m <module>` of this repository; `starling.cli` arguments parse."""
    seen = set()
    for name, spec in pod_specs(rendered[values]):
        for container in spec.get("initContainers", []) + spec["containers"]:
            command = container["command"]
            assert command[:2] == ["python", "-m"], (name, container["name"], command)
            module = REPO_ROOT.joinpath(*command[2].split("."))
            assert module.with_suffix(".py").is_file(), f"{name}/{container['name']}: {command[2]} not found"
            if command[2] == "starling.cli":
                seen.add(parse_starling_cli(container["args"]).name)
            else:
                seen.add(command[2])
    assert seen >= {"ingest", "build", "materialize", "train", "evaluate", "services.ranker.server"}
    assert "services.web.server" in seen
    assert {f"services.{name}.server" for name in SERVICES} <= seen


def test_cli_parsing_catches_bad_arguments() -> None:
    with pytest.raises(click.BadParameter):
        parse_starling_cli(["data", "ingest", "ml-latest-small", "--out", "/data", "--on-bad", "ignore"])
    with pytest.raises(AssertionError, match="does not exist"):
        parse_starling_cli(["features", "publish", "/data"])


def test_recommend_reads_the_api_keys_from_a_secret(helm: str, rendered: dict[str, list[Manifest]]) -> None:
    import hashlib

    (secret,) = find(rendered["default"], "Secret", "starling-api-keys")
    token = secret["stringData"]["api-token"]
    keys = json.loads(secret["stringData"]["api_keys.json"])["keys"]
    assert token.startswith("stk_") and len(token) == 47
    assert keys[0]["sha256"] == hashlib.sha256(token.encode()).hexdigest(), "helm's sha256sum = the services'"
    assert set(keys[0]["scopes"]) == {"feedback:write", "catalog:write", "read"}

    def recommend_pod(manifests: list[Manifest]) -> dict[str, Any]:
        (deployment,) = find(manifests, "Deployment", "starling-recommend")
        return deployment["spec"]["template"]["spec"]

    pod = recommend_pod(rendered["default"])
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["STARLING_API_KEYS_FILE"] == "/etc/starling/auth/api_keys.json"
    assert env["STARLING_AUTH_READS"] == "false"
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == "starling-api-keys"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-keys")
    assert mount["readOnly"] and mount["mountPath"] == "/etc/starling/auth"
    for name, spec in pod_specs(rendered["default"]):
        if name not in ("starling-recommend", "starling-web"):  # web checks Bearer keys of its own callers
            assert all(v["name"] != "api-keys" for v in spec.get("volumes", [])), f"{name} holds no keys"

    own = render(helm, None, "auth.existingSecret=my-keys", "auth.requireForReads=true")
    assert not find(own, "Secret", "starling-api-keys")
    pod = recommend_pod(own)
    assert next(v for v in pod["volumes"] if v["name"] == "api-keys")["secret"]["secretName"] == "my-keys"
    assert {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}["STARLING_AUTH_READS"] == "true"


def test_catalog_writes_have_their_own_unexposed_port(helm: str, rendered: dict[str, list[Manifest]]) -> None:
    (admin,) = find(rendered["default"], "Service", "starling-recommend-admin")
    assert admin["spec"]["type"] == "ClusterIP" and [p["port"] for p in admin["spec"]["ports"]] == [50060]
    (public,) = find(rendered["default"], "Service", "starling-recommend")
    assert 50060 not in [p["port"] for p in public["spec"]["ports"]]
    (deployment,) = find(rendered["default"], "Deployment", "starling-recommend")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "admin", "containerPort": 50060, "protocol": "TCP"} in container["ports"]
    assert {"name": "STARLING_ADMIN_PORT", "value": "50060"} in container["env"]

    def admin_rules(manifests: list[Manifest]) -> list[dict[str, Any]]:
        (policy,) = find(manifests, "NetworkPolicy", "starling-recommend")
        return [r for r in policy["spec"]["ingress"] if any(p["port"] == 50060 for p in r["ports"])]

    assert admin_rules(rendered["default"]) == [], "nobody reaches the admin port by default"
    allowed = render(helm, None, "networkPolicy.adminFrom[0].podSelector.matchLabels.role=catalog-editor")
    (rule,) = admin_rules(allowed)
    assert rule["from"] == [{"podSelector": {"matchLabels": {"role": "catalog-editor"}}}]


# ------------------------------------------------------------------------------------------ the web gateway
def web_container(manifests: list[Manifest]) -> dict[str, Any]:
    (deployment,) = find(manifests, "Deployment", "starling-web")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """Name -> value, or the valueFrom of a variable taken from elsewhere."""
    return {e["name"]: e["value"] if "value" in e else e["valueFrom"] for e in container.get("env", [])}


def test_web_gateway_is_deployed_like_the_services(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["default"]
    (deployment,) = find(manifests, "Deployment", "starling-web")
    (recommend,) = find(manifests, "Deployment", "starling-recommend")
    pod, recommend_pod = deployment["spec"]["template"]["spec"], recommend["spec"]["template"]["spec"]
    for key in ("securityContext", "serviceAccountName", "automountServiceAccountToken"):
        assert pod[key] == recommend_pod[key], key
    container = web_container(manifests)
    assert container["securityContext"] == recommend_pod["containers"][0]["securityContext"]
    assert container["image"] == recommend_pod["containers"][0]["image"], "the services image"
    assert container["command"] == ["python", "-m", "services.web.server"]
    assert container["ports"] == [{"name": "http", "containerPort": 8088, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    assert container["envFrom"] == [{"configMapRef": {"name": "starling-config"}}], "STARLING_HOST=0.0.0.0"
    assert find(manifests, "ConfigMap", "starling-config")[0]["data"]["STARLING_HOST"] == "0.0.0.0"
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"]), "no artifact volume"
    assert deployment["spec"]["replicas"] == 1
    (service,) = find(manifests, "Service", "starling-web")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8088, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(manifests)["starling-web"])
    assert find(manifests, "PodDisruptionBudget", "starling-web")
    assert not find(manifests, "HorizontalPodAutoscaler", "starling-web")
    production = rendered["production"]
    (deployment,) = find(production, "Deployment", "starling-web")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (hpa,) = find(production, "HorizontalPodAutoscaler", "starling-web")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "starling-web"


def test_web_gateway_settings_and_secrets(helm: str, rendered: dict[str, list[Manifest]]) -> None:
    env = env_of(web_container(rendered["default"]))
    assert env["STARLING_WEB_PORT"] == "8088"
    assert env["STARLING_WEB_RECOMMEND_TARGET"] == "starling-recommend.starling.svc:50051"
    assert env["STARLING_WEB_OPEN_SIGN_IN"] == "true"
    assert env["STARLING_WEB_ALLOWED_ORIGINS"] == ""
    assert env["STARLING_API_TOKEN"] == {"secretKeyRef": {"name": "starling-api-keys", "key": "api-token"}}
    assert env["STARLING_API_KEYS_FILE"] == "/etc/starling/auth/api_keys.json"
    session = {"secretKeyRef": {"name": "starling-web-session", "key": "session-secret"}}
    assert env["STARLING_WEB_SESSION_SECRET"] == session, "replicas share one session key"
    (secret,) = find(rendered["default"], "Secret", "starling-web-session")
    assert len(secret["stringData"]["session-secret"]) == 64
    assert env_of(web_container(rendered["production"]))["STARLING_WEB_OPEN_SIGN_IN"] == "false"

    own = render(
        helm,
        None,
        "auth.existingSecret=my-keys",
        "web.sessionSecret.existingSecret=my-session",
        "web.sessionSecret.key=hmac",
        "web.openSignIn=false",
        "web.allowedOrigins[0]=https://shop.example.com/",
    )
    assert not find(own, "Secret", "starling-web-session") and not find(own, "Secret", "starling-api-keys")
    env = env_of(web_container(own))
    assert env["STARLING_WEB_SESSION_SECRET"] == {"secretKeyRef": {"name": "my-session", "key": "hmac"}}
    assert "STARLING_API_TOKEN" not in env, "with auth.existingSecret the token must be named explicitly"
    assert env["STARLING_WEB_OPEN_SIGN_IN"] == "false"
    assert env["STARLING_WEB_ALLOWED_ORIGINS"] == "https://shop.example.com"
    (deployment,) = find(own, "Deployment", "starling-web")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == "my-keys"

    token = render(helm, None, "auth.existingSecret=my-keys", "web.apiTokenSecret.name=web-token")
    assert env_of(web_container(token))["STARLING_API_TOKEN"] == {
        "secretKeyRef": {"name": "web-token", "key": "api-token"}
    }
    done = dry_run_install(helm, "--set", "auth.existingSecret=k")
    assert done.returncode == 0, done.stderr
    assert "web.apiTokenSecret" in done.stdout.split("NOTES:", 1)[1], "NOTES warn that web cannot write"


def test_web_gateway_network_policy(helm: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["default"]
    (policy,) = find(manifests, "NetworkPolicy", "starling-web")
    spec = policy["spec"]
    assert selects(spec["podSelector"], pod_labels(manifests)["starling-web"])
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"port": 8088, "protocol": "TCP"}]}], "from anywhere by default"
    kube_dns = find(manifests, "NetworkPolicy", "starling-recommend")[0]["spec"]["egress"][0]
    recommend_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "starling",
                                                      "app.kubernetes.io/instance": "starling",
                                                      "app.kubernetes.io/component": "recommend"}}}  # fmt: skip
    assert spec["egress"] == [
        kube_dns,
        {"to": [recommend_pods], "ports": [{"port": 50051, "protocol": "TCP"}]},
    ]
    labels = pod_labels(manifests)
    assert allowed_ports(manifests, "Egress", labels["starling-web"], labels["starling-recommend"]) == [
        {(50051, "TCP")}
    ]

    # Restricted callers of recommend and of the web gateway: the gateway still reaches recommend, metrics
    # stay scrapable, anyone else is refused.
    manifests = render(
        helm,
        None,
        "networkPolicy.recommendFrom[0].podSelector.matchLabels.role=storefront",
        "networkPolicy.webFrom[0].namespaceSelector.matchLabels.role=ingress",
    )
    labels = pod_labels(manifests)
    assert ("web", "recommend") in release_edges(manifests)
    into_recommend = allowed_ports(manifests, "Ingress", labels["starling-recommend"], labels["starling-web"])
    assert {(50051, "TCP")} in into_recommend
    (web,) = find(manifests, "NetworkPolicy", "starling-web")
    assert web["spec"]["ingress"] == [
        {
            "ports": [{"port": 8088, "protocol": "TCP"}],
            "from": [{"namespaceSelector": {"matchLabels": {"role": "ingress"}}}],
        },
        {
            "ports": [{"port": 8088, "protocol": "TCP"}],
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        },
    ]
    assert not allowed_ports(manifests, "Ingress", labels["starling-web"], {"role": "other"})
    errors = [error for manifest in manifests for error in validation_errors(manifest)]
    assert not errors, "\n".join(errors)


def test_web_gateway_ingress(helm: str, rendered: dict[str, list[Manifest]]) -> None:
    assert not find(rendered["default"], "Ingress"), "no Ingress unless asked"
    (ingress,) = find(rendered["production"], "Ingress", "starling-web")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["movies.example.com"], "secretName": "starling-web-tls"}]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    (rule,) = spec["rules"]
    assert rule["host"] == "movies.example.com"
    paths = {p["path"]: p["pathType"] for p in rule["http"]["paths"]}
    assert paths["/"] == "Exact" and paths["/api"] == "Prefix" and paths["/static"] == "Prefix"
    assert not any(p in ("/metrics", "/healthz") or (p == "/" and t == "Prefix") for p, t in paths.items())
    (service,) = find(rendered["production"], "Service", "starling-web")
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"]["name"] == "starling-web"
        assert path["backend"]["service"]["port"] == {"name": "http"}
        assert "http" in [p["name"] for p in service["spec"]["ports"]]
    env = env_of(web_container(rendered["production"]))
    assert env["STARLING_WEB_ALLOWED_ORIGINS"] == "https://movies.example.com"

    plain = render(
        helm,
        None,
        "web.ingress.enabled=true",
        "web.ingress.hosts[0]=a.example.com",
        "web.ingress.hosts[1]=b.test",
    )
    (ingress,) = find(plain, "Ingress")
    assert "tls" not in ingress["spec"] and "ingressClassName" not in ingress["spec"]
    assert [r["host"] for r in ingress["spec"]["rules"]] == ["a.example.com", "b.test"]
    assert env_of(web_container(plain))["STARLING_WEB_ALLOWED_ORIGINS"] == (
        "https://a.example.com,http://a.example.com,https://b.test,http://b.test"
    )
    done = run_helm(helm, "template", "starling", str(CHART), "--set", "web.ingress.enabled=true")
    assert done.returncode != 0 and "at least one host in web.ingress.hosts" in done.stderr

    done = dry_run_install(helm, "-f", str(PRODUCTION_VALUES))
    assert done.returncode == 0, done.stderr
    assert "https://movies.example.com/" in done.stdout.split("NOTES:", 1)[1]


def test_web_gateway_is_scraped(rendered: dict[str, list[Manifest]]) -> None:
    (monitor,) = find(rendered["production"], "ServiceMonitor")
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert "web" in expression["values"]
    assert {"port": "http", "path": "/metrics", "interval": "15s"} in monitor["spec"]["endpoints"]


def test_web_gateway_can_be_turned_off(helm: str) -> None:
    manifests = render(
        helm,
        PRODUCTION_VALUES,
        "web.enabled=false",
    )
    web = [
        m for m in manifests if m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "web"
    ]
    assert not web, [f"{m['kind']}/{m['metadata']['name']}" for m in web]
    assert not find(manifests, "Ingress") and not find(manifests, "Secret", "starling-web-session")
    (recommend,) = find(manifests, "NetworkPolicy", "starling-recommend")
    assert len(recommend["spec"]["ingress"][0]["from"]) == 2, "only recommendFrom"
    (monitor,) = find(manifests, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "web" not in monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    done = dry_run_install(helm, "--set", "web.enabled=false")
    assert done.returncode == 0, done.stderr
    assert "svc/starling-web" not in done.stdout.split("NOTES:", 1)[1]


def test_experiments_reach_recommend_from_a_configmap_it_can_re_read(helm: str, tmp_path: Path) -> None:
    from services.common.experiments import parse_config

    experiments = [
        {
            "name": "ranker-vs-random",
            "layer": "ranking",
            "salt": "2026-12",
            "type": "ab",
            "arms": [
                {"name": "model", "share": 50},
                {"name": "random", "share": 50, "overrides": {"ranker": "random"}},
            ],
        }
    ]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"experiments": experiments}))
    manifests = render(helm, values)
    config_map = find(manifests, "ConfigMap", "starling-experiments")[0]
    parsed = parse_config(yaml.safe_load(config_map["data"]["experiments.yaml"]), "configmap")
    assert [e.name for e in parsed.experiments] == ["ranker-vs-random"]
    recommend = find(manifests, "Deployment", "starling-recommend")[0]["spec"]["template"]["spec"]
    container = recommend["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert env["STARLING_EXPERIMENTS"] == mounts["experiments"]["mountPath"] + "/experiments.yaml"
    assert "subPath" not in mounts["experiments"], "a subPath mount never sees ConfigMap edits"
    assert {"name": "experiments", "configMap": {"name": "starling-experiments"}} in recommend["volumes"]
    assert mounts["artifacts"]["readOnly"] is False, "recommend appends the event and exposure logs"
    annotations = find(manifests, "Deployment", "starling-recommend")[0]["spec"]["template"]["metadata"]
    assert "experiments" not in json.dumps(annotations), "an experiments edit must not restart the pods"
    ranker = find(manifests, "InferenceService")[0]["spec"]["predictor"]
    ranker_env = {e["name"]: e.get("value") for e in ranker["containers"][0]["env"]}
    ranker_mounts = {m["name"]: m["mountPath"] for m in ranker["containers"][0]["volumeMounts"]}
    assert ranker_env["STARLING_EXPERIMENTS"] == ranker_mounts["experiments"] + "/experiments.yaml", (
        "the ranker loads the model versions arms pin"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"experiments": [{**experiments[0], "type": "bandit"}]}))
    done = run_helm(helm, "template", "starling", str(CHART), "-f", str(bad))
    assert done.returncode != 0 and "experiments" in done.stderr


# ------------------------------------------------------------------------------------ scaling out (issue 15)
EVENTS_REDIS = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": "starling-events"}


def test_production_runs_recommend_replicas_on_the_redis_event_bus(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Production: every service, the ranker and the training steps read STARLING_EVENT_BUS from a Secret and
    may reach the bus's own Redis (not the web gateway); recommend autoscales from several replicas; recall
    uses the Milvus server. The default stays on the file log, one recommend replica."""
    manifests = rendered["production"]
    config = find(manifests, "ConfigMap", "starling-config")[0]["data"]
    assert "STARLING_EVENT_BUS" not in config, "the URL holds the password: it comes from a Secret"
    assert config["STARLING_EVENT_BUS_PREFIX"] == "starling:" and config["STARLING_EVENT_BUS_MAXLEN"] == "0"
    assert config["STARLING_MILVUS_URI"] == "http://milvus.milvus.svc:19530"
    from_secret = {
        "name": "STARLING_EVENT_BUS",
        "valueFrom": {"secretKeyRef": {"name": "starling-event-bus", "key": "url"}},
    }
    specs = dict(pod_specs(manifests))
    followers = [*(f"starling-{name}" for name in SERVICES), "starling-ranker", "starling-retrain"]
    for name in followers:
        for container in specs[name].get("initContainers", []) + specs[name]["containers"]:
            assert from_secret in container["env"], (name, container["name"])
    assert not any(e["name"] == "STARLING_EVENT_BUS" for e in specs["starling-web"]["containers"][0]["env"])
    hpa = find(manifests, "HorizontalPodAutoscaler", "starling-recommend")[0]["spec"]
    assert hpa["minReplicas"] > 1 and hpa["maxReplicas"] > hpa["minReplicas"]
    assert "replicas" not in find(manifests, "Deployment", "starling-recommend")[0]["spec"]
    for policy in (*SERVICES, "ranker", "training"):
        assert egress_ports_to(manifests, f"starling-{policy}", EVENTS_REDIS) == {(6379, "TCP")}, policy
    assert egress_ports_to(manifests, "starling-web", EVENTS_REDIS) == set()

    default = rendered["default"]
    assert "STARLING_EVENT_BUS" not in find(default, "ConfigMap", "starling-config")[0]["data"]
    assert find(default, "Deployment", "starling-recommend")[0]["spec"]["replicas"] == 1
    for policy in (*SERVICES, "ranker", "training"):
        assert egress_ports_to(default, f"starling-{policy}", EVENTS_REDIS) == set(), policy


def test_several_recommend_replicas_need_the_event_bus(helm: str) -> None:
    for assignment in ("services.recommend.replicas=2", "services.recommend.autoscaling.enabled=true"):
        done = run_helm(helm, "template", "starling", str(CHART), "--set", assignment)
        assert done.returncode != 0, assignment
        assert "eventBus.url" in done.stderr and "one recommend replica only" in done.stderr, done.stderr
    manifests = render(helm, None, "services.recommend.replicas=3", "eventBus.url=redis://events:6379/0")
    assert find(manifests, "Deployment", "starling-recommend")[0]["spec"]["replicas"] == 3
    config = find(manifests, "ConfigMap", "starling-config")[0]["data"]
    assert config["STARLING_EVENT_BUS"] == "redis://events:6379/0"
    errors = [error for manifest in manifests for error in validation_errors(manifest)]
    assert not errors, "\n".join(errors)
    bad = run_helm(helm, "template", "starling", str(CHART), "--set", "eventBus.url=http://events:6379")
    assert bad.returncode != 0 and "/eventBus/url" in bad.stderr and "pattern" in bad.stderr, bad.stderr


# ------------------------------------------------------------------------------ features on Spark (operator)
def test_features_spark_application_renders_valid_against_its_crd(
    rendered: dict[str, list[Manifest]],
) -> None:
    """features.engine: spark (the production values) renders the feature build as a SparkApplication that the
    operator's CRD schema accepts, running this repository's entry point over the shared artifact volume."""
    from starling.features.spark_engine import main as spark_main

    assert not find(rendered["default"], "SparkApplication"), (
        "polars (the pipeline pod) is the default engine"
    )
    assert not find(rendered["default"], "ServiceAccount", "starling-spark")
    production = rendered["production"]
    (app,) = find(production, "SparkApplication")
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert ("sparkoperator.k8s.io/v1beta2", "SparkApplication") in CRD_VALIDATORS
    assert validation_errors(app) == []
    spec = app["spec"]
    assert app["metadata"]["name"] == "starling-features-r1"
    assert spec["type"] == "Python" and spec["mode"] == "cluster" and spec["sparkVersion"] == "4.3.0"
    main_file = spec["mainApplicationFile"].removeprefix("local://")
    assert main_file == "/app/starling/features/spark_engine.py"
    assert (REPO_ROOT / main_file.removeprefix("/app/")).is_file()
    assert spark_main.__module__ == "starling.features.spark_engine"
    workdir = yaml.safe_load((CHART / "values.yaml").read_text())["workdir"]
    assert spec["arguments"][:3] == [workdir, "--serve", app["metadata"]["name"]]
    claims = {v["name"]: v for v in spec["volumes"]}
    assert claims["artifacts"]["persistentVolumeClaim"]["claimName"] == "starling-artifacts"
    assert "emptyDir" in claims["tmp"]
    assert spec["sparkConf"]["spark.sql.session.timeZone"] == "UTC"
    assert spec["sparkConf"]["spark.sql.shuffle.partitions"] == "128"
    for role in ("driver", "executor"):
        pod = spec[role]
        assert pod["serviceAccount"] == "starling-spark"
        assert pod["cores"] >= 1 and quantity(pod["coreLimit"]) >= pod["cores"] and pod["memory"]
        assert {"name": "artifacts", "mountPath": workdir, "readOnly": False} in pod["volumeMounts"]
        assert {"name": "tmp", "mountPath": "/tmp"} in pod["volumeMounts"]
        assert pod["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["podSecurityContext"]["runAsNonRoot"] is True
        assert pod["envFrom"] == [{"configMapRef": {"name": "starling-config"}}]
        assert pod["labels"]["spark-role"] == role
        # outside the release's default-deny policy: the driver must reach the API server and its executors
        assert "app.kubernetes.io/instance" not in pod["labels"]
    assert spec["executor"]["instances"] == 4
    (binding,) = find(production, "RoleBinding", "starling-spark")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "starling-spark", "namespace": NAMESPACE}
    ]
    (role,) = find(production, "Role", "starling-spark")
    assert "pods" in role["rules"][0]["resources"] and "create" in role["rules"][0]["verbs"]


def test_spark_application_validation_can_fail(rendered: dict[str, list[Manifest]]) -> None:
    app = copy.deepcopy(find(rendered["production"], "SparkApplication")[0])
    app["spec"]["driver"]["coress"] = 1
    assert any("coress" in e for e in validation_errors(app))
    app = copy.deepcopy(find(rendered["production"], "SparkApplication")[0])
    app["spec"]["executor"]["instances"] = "four"
    assert validation_errors(app)
    app = copy.deepcopy(find(rendered["production"], "SparkApplication")[0])
    del app["spec"]["mainApplicationFile"]
    assert any("mainApplicationFile" in e for e in validation_errors(app))


def test_features_spark_values(helm: str, tmp_path: Path) -> None:
    """Engine and Spark values are checked by values.schema.json; an existing service account is used as is."""
    for bad, where in (
        ({"features": {"engine": "flink"}}, "/features/engine"),
        ({"features": {"spark": {"executor": {"instances": 0}}}}, "/features/spark/executor/instances"),
        ({"features": {"spark": {"driver": {"memory": "lots"}}}}, "/features/spark/driver/memory"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        done = run_helm(helm, "template", "starling", str(CHART), "-f", str(path))
        assert done.returncode != 0 and where in done.stderr, done.stderr
    manifests = render(
        helm, None, "features.engine=spark", "features.spark.serviceAccount=spark", "features.spark.retries=0"
    )
    (app,) = find(manifests, "SparkApplication")
    assert validation_errors(app) == []
    assert app["spec"]["driver"]["serviceAccount"] == "spark" and not find(manifests, "Role")
    assert app["spec"]["restartPolicy"] == {"type": "Never"}
    assert app["spec"]["image"] == "ghcr.io/starling-recsys/starling-ranker:0.1.0", (
        "defaults to the ranker image"
    )
    assert not find(
        render(helm, None, "features.engine=spark", "training.runOnInstall=false"), "SparkApplication"
    )


def test_production_trains_with_a_pytorchjob_after_the_pipeline_builds_the_features(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Production: a PyTorchJob (kubeflow.org/v1, validated against its CRD with the other objects) with a
    Master and three Workers running `starling train` in the `pytorch` container after waiting for this
    revision's features; the pipeline Job then ends with materializing. The default trains in the Job."""
    manifests = rendered["production"]
    job = find(manifests, "PyTorchJob", "starling-train-ddp-r1")[0]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {role: spec["replicas"] for role, spec in replicas.items()} == {"Master": 1, "Worker": 3}
    for spec in replicas.values():
        pod = spec["template"]["spec"]
        (wait,) = pod["initContainers"]
        assert wait["args"][:2] == ["features", "wait"] and "--since" in wait["args"], wait["args"]
        (train,) = pod["containers"]
        assert train["name"] == "pytorch" and train["args"][:2] == ["train", "/data"], train
        assert train["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert any(v.get("persistentVolumeClaim") for v in pod["volumes"])
    pipeline = find(manifests, "Job", "starling-train-r1")[0]["spec"]["template"]["spec"]
    steps = [c["name"] for c in pipeline["initContainers"] + pipeline["containers"]]
    assert "train" not in steps and steps[-1] == "features-materialize", steps

    default = rendered["default"]
    assert not find(default, "PyTorchJob", "starling-train-ddp-r1")
    pipeline = find(default, "Job", "starling-train-r1")[0]["spec"]["template"]["spec"]
    steps = [c["name"] for c in pipeline["initContainers"] + pipeline["containers"]]
    assert steps[-2:] == ["train", "evaluate"], steps
