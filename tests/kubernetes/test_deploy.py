"""``deploy/``: the manifests agree with the code (flags, watched kinds, the CRD's schema)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from albingress.cli import build_parser
from albingress.model.servergroup import NetworkSettings
from albingress.servergroups.crstore import CustomResourceStore
from albingress.servergroups.service import ServerGroupService
from albingress.sources.kube import ClusterConfig, SyncKubeClient
from albingress.sources.kube.client import EVENT, LEASE
from albingress.sources.kube.source import WATCHED
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.harness import server_group

DEPLOY = Path(__file__).parents[2] / "deploy"
PLAIN = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "albingress"


def plain() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(PLAIN.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in plain() if d["kind"] == kind]


def crd_schema() -> dict[str, Any]:
    crd = of_kind("CustomResourceDefinition")[0]
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def problems(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """A structural-schema check: types, enums, bounds, patterns, required and unknown fields."""
    out: list[str] = []
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int}
    if (kind and not isinstance(value, types[kind])) or (kind == "integer" and value is True):
        return [f"{where}: not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in enum")
    if "minimum" in schema and value < schema["minimum"]:
        out.append(f"{where}: below minimum")
    if "maximum" in schema and value > schema["maximum"]:
        out.append(f"{where}: above maximum")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{where}: does not match {schema['pattern']}")
    if kind == "object" and "properties" in schema:
        props = schema["properties"]
        out.extend(f"{where}.{k}: required" for k in schema.get("required", []) if k not in value)
        for key, item in value.items():
            if key not in props:
                out.append(f"{where}.{key}: unknown field (the API server would prune it)")
            else:
                out.extend(problems(item, props[key], f"{where}.{key}"))
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            out.extend(problems(item, schema["items"], f"{where}[{i}]"))
    return out


def test_every_piece_is_there() -> None:
    kinds = sorted(d["kind"] for d in plain())
    for kind in (
        "CustomResourceDefinition",
        "ClusterRole",
        "Role",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "IngressClass",
        "ValidatingWebhookConfiguration",
    ):
        assert kind in kinds
    assert of_kind("IngressClass")[0]["spec"]["controller"] == "ingress.k8s.alibabacloud/alb"


def test_rbac_grants_what_the_controller_uses_and_no_more() -> None:
    rules = [r for role in of_kind("ClusterRole") + of_kind("Role") for r in role["rules"]]
    grants: set[tuple[str, str, str]] = set()
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field]
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                grants.update((group, res, verb) for verb in rule["verbs"])
    for res in WATCHED:
        for verb in ("list", "watch"):
            assert (res.group, res.plural, verb) in grants, (res.plural, verb)
    writes = {g for g in grants if g[2] not in ("get", "list", "watch")}
    assert writes == {
        ("networking.k8s.io", "ingresses/status", "patch"),
        ("albingress.dev", "servergroups/status", "patch"),
        ("albingress.dev", "servergroups", "create"),
        ("albingress.dev", "servergroups", "update"),
        ("albingress.dev", "servergroups", "delete"),
        (EVENT.group, EVENT.plural, "create"),
        (EVENT.group, EVENT.plural, "patch"),
        (LEASE.group, LEASE.plural, "create"),
        (LEASE.group, LEASE.plural, "update"),
    }
    secrets = {g for g in grants if g[1] == "secrets"}
    assert {v for _, _, v in secrets} == {"get", "list", "watch"}


def test_containers_use_flags_the_commands_accept() -> None:
    parser = build_parser()
    deployments = of_kind("Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {"albingress", "albingress-webhook"}
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        args = parser.parse_args(container["args"])  # exits on an unknown flag
        assert args.func is not None
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    controller = next(d for d in deployments if d["metadata"]["name"] == "albingress")
    pod = controller["spec"]["template"]["spec"]
    assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > 10


def test_the_crd_schema_accepts_what_the_api_writes(api: ApiServer) -> None:
    schema = crd_schema()
    store = CustomResourceStore(SyncKubeClient(ClusterConfig(api.url)), "albingress")
    service = ServerGroupService(store, NetworkSettings.from_strings(("127.0.0.0/8",), ()))
    gid = service.create(
        {
            "serverGroupName": "full-options",
            "serverGroupType": "Ip",
            "protocol": "HTTP",
            "scheduler": "Uch",
            "uchConfig": {"type": "QueryString", "value": "user"},
            "vpcId": "vpc-1",
            "healthCheckConfig": {
                "healthCheckEnabled": True,
                "healthCheckPath": "/ping",
                "healthCheckCodes": ["http_2xx"],
                "healthCheckInterval": 3,
            },
            "stickySessionConfig": {"stickySessionEnabled": True, "stickySessionType": "Insert"},
        }
    )
    service.add_servers(
        gid,
        [{"serverType": "Ip", "serverId": "127.0.1.1", "serverIp": "127.0.1.1", "port": 8080}],
    )
    written = api.get("ServerGroup", "albingress", gid)
    assert written is not None
    assert problems({"spec": written["spec"]}, schema) == []
    assert problems(server_group("sgp-x1", [("127.0.1.1", 80)]), schema) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"serverGroupId": "bad id"}, ".spec.serverGroupId"),
        ({"servers": [{"serverIp": "127.0.0.1", "port": 0}]}, ".spec.servers[0].port"),
        ({"servers": [{"serverIp": "127.0.0.1", "port": 80, "weight": 101}]}, "weight"),
        ({"scheduler": "Random"}, ".spec.scheduler"),
    ],
)
def test_the_crd_schema_refuses_bad_groups(spec: dict[str, Any], field: str) -> None:
    found = problems({"spec": spec}, crd_schema())
    assert any(field in p for p in found), found


# Labels Helm charts add by convention; the plain manifests have no release to name.
RELEASE_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/version", "helm.sh/chart")


def without_release_labels(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: without_release_labels(v)
            for k, v in value.items()
            if k not in RELEASE_LABELS and not (k == "annotations" and v == {})
        }
    if isinstance(value, list):
        return [without_release_labels(v) for v in value]
    return value


def render(values: dict[str, Any] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """The chart rendered by Helm's own engine (Helm's Go SDK, bound from Python), by kind/name."""
    chart = helm_python.Chart.load(CHART)
    out = chart.render(values, name="albingress", namespace="albingress", is_install=True)
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for text in out.values():
        for doc in yaml.safe_load_all(text):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} rendered twice"
                objects[key] = doc
    return objects


def by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_the_chart_renders_the_same_objects_as_the_plain_manifests() -> None:
    assert (CHART / "crds" / "servergroups.yaml").read_text() == (
        PLAIN / "crd-servergroups.yaml"
    ).read_text()
    expected = {
        key: doc
        for key, doc in by_key(plain()).items()
        if key[0] not in ("Namespace", "CustomResourceDefinition")  # helm --create-namespace, crds/
    }
    rendered = render()
    assert sorted(rendered) == sorted(expected)
    for key, doc in rendered.items():
        assert without_release_labels(doc) == without_release_labels(expected[key]), key


def test_the_chart_lints_clean() -> None:
    report = helm_python.lint(CHART, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    severities = {m["severity"] for m in report["messages"]}
    assert severities <= {1}, report["messages"]  # info only (no icon), no warnings or errors


def test_the_chart_values_change_what_they_say() -> None:
    rendered = render(
        {
            "replicaCount": 3,
            "workers": 4,
            "ingressClass": {"name": "edge", "default": True},
            "controller": {
                "namespaces": ["shop", "blog"],
                "publishService": False,
                "publishAddress": ["lb.example.internal"],
            },
            "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
            "metrics": {"enabled": False, "serviceMonitor": {"enabled": True}},
            "webhook": {"enabled": False},
        }
    )
    deployment = rendered[("Deployment", "albingress")]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert args.workers == 4
    assert args.ingress_class == "edge"
    assert args.namespace == ["shop", "blog"]
    assert not args.publish_service
    assert args.publish_address == ["lb.example.internal"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "1Gi"}
    assert "prometheus.io/scrape" not in pod["metadata"].get("annotations", {})
    assert ("ServiceMonitor", "albingress") not in rendered  # metrics off wins
    ingress_class = rendered[("IngressClass", "edge")]
    annotations = ingress_class["metadata"]["annotations"]
    assert annotations["ingressclass.kubernetes.io/is-default-class"] == "true"
    assert not [key for key in rendered if "webhook" in key[1] or "Webhook" in key[0]]


def test_the_chart_renders_a_service_monitor_for_the_admin_port() -> None:
    rendered = render({"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s"}}})
    monitor = rendered[("ServiceMonitor", "albingress")]
    assert monitor["spec"]["endpoints"] == [
        {"port": "admin", "path": "/metrics", "interval": "15s"}
    ]
    admin = rendered[("Service", "albingress-admin")]
    assert [p["name"] for p in admin["spec"]["ports"]] == ["admin"]
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    assert selector <= admin["metadata"]["labels"].items()  # the monitor selects that Service


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"workers": 0}, "workers"),
        ({"webhook": {"failurePolicy": "Maybe"}}, "failurePolicy"),
        ({"controller": {"vpcCidrs": ["10.0.0.0"]}}, "vpcCidrs"),
        ({"ingressClass": {"name": "ALB"}}, "name"),
        ({"replicas": 3}, "replicas"),  # a typo of replicaCount: unknown keys are refused
    ],
)
def test_the_chart_refuses_bad_values_naming_them(values: dict[str, Any], words: str) -> None:
    chart = helm_python.Chart.load(CHART)
    with pytest.raises(helm_python.HelmError) as caught:
        chart.render(values, name="albingress", namespace="albingress", is_install=True)
    assert words in str(caught.value), caught.value
