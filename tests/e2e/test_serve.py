"""``albingress serve`` end to end: routing semantics, weights, stickiness, live reloads.

Backends stand on 127.0.5.x (addresses no other test uses); the load balancer, its workers and the
backends are real processes; the clients are ``http.client``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Serve, running, service, wait_until

pytestmark = pytest.mark.e2e

PORT = 8080
SERVERS = {
    "a-1": ("127.0.5.1", PORT),
    "a-2": ("127.0.5.2", PORT),
    "b-1": ("127.0.5.3", PORT),
    "ext-1": ("127.0.5.4", PORT),
    "ext-2": ("127.0.5.5", PORT),
}


BASE = {
    "services.yaml": service("svc-a", "127.0.5.1", "127.0.5.2") + service("svc-b", "127.0.5.3"),
    "groups.yaml": f"""\
apiVersion: albingress.dev/v1alpha1
kind: ServerGroup
metadata: {{name: ext}}
spec:
  serverGroupId: sgp-ext1
  serverGroupType: Ip
  servers:
    - {{serverIp: 127.0.5.4, port: {PORT}}}
    - {{serverIp: 127.0.5.5, port: {PORT}}}
""",
}


def ingress(
    name: str, actions: list[dict[str, object]], host: str = "w.example.com", path: str = "/"
) -> str:
    return f"""\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  annotations:
    alb.ingress.kubernetes.io/actions.fwd: '{json.dumps(actions)}'
spec:
  ingressClassName: alb
  rules:
  - host: {host}
    http:
      paths:
      - path: {path}
        pathType: Prefix
        backend: {{service: {{name: fwd, port: {{name: use-annotation}}}}}}
"""


def forward(*groups: dict[str, object], **extra: object) -> list[dict[str, object]]:
    return [{"Type": "ForwardGroup", "ForwardConfig": {"ServerGroups": list(groups), **extra}}]


ROUTES = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: routes}
spec:
  ingressClassName: alb
  rules:
  - host: r.example.com
    http:
      paths:
      - {path: /foo, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
      - {path: /foo, pathType: Exact, backend: {service: {name: svc-b, port: {number: 80}}}}
  - host: "*.wild.example.com"
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-b, port: {number: 80}}}}
"""


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    manifests = dict(BASE)
    manifests["routes.yaml"] = ROUTES
    manifests["weights.yaml"] = ingress(
        "weights",
        forward(
            {"ServiceName": "svc-a", "ServicePort": 80, "Weight": 60},
            {"ServerGroupID": "sgp-ext1", "ServiceName": "svc-b", "ServicePort": 80, "Weight": 40},
            {"ServiceName": "svc-b", "ServicePort": 80, "Weight": 0},
        ),
    )
    manifests["sticky.yaml"] = ingress(
        "sticky",
        forward(
            {"ServiceName": "svc-a", "ServicePort": 80, "Weight": 50},
            {"ServerGroupID": "sgp-ext1", "Weight": 50},
            ServerGroupStickySession={"Enabled": True, "Timeout": 300},
        ),
        host="s.example.com",
    )
    # One worker: smooth weighted round robin is then exact, request by request (with several
    # workers each has its own rotation and the split is exact only in the long run).
    with running(tmp_path_factory.mktemp("serve"), SERVERS, manifests, workers=1) as serve:
        yield serve


@pytest.mark.parametrize(
    ("host", "path", "group"),
    [
        ("r.example.com", "/foo", "b"),  # Exact beats Prefix for the same path
        ("r.example.com", "/foo/", "a"),  # Exact does not match a trailing slash
        ("r.example.com", "/foo/bar", "a"),  # Prefix matches element-wise
        ("R.Example.COM:80", "/foo/bar", "a"),  # hosts: any case, port ignored
        ("x.wild.example.com", "/", "b"),  # one label under the wildcard
    ],
    ids=["exact-beats-prefix", "exact-no-slash", "prefix-element", "host-case-port", "wildcard"],
)
def test_routing_semantics(lb: Serve, host: str, path: str, group: str) -> None:
    assert lb.server_of(host, path).split("-")[0] == group


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("r.example.com", "/foobar"),
        ("a.b.wild.example.com", "/"),
        ("wild.example.com", "/"),
        ("nope.example.com", "/"),
    ],
    ids=["prefix-not-substring", "wildcard-one-label-only", "wildcard-not-apex", "unknown-host"],
)
def test_no_rule_is_404(lb: Serve, host: str, path: str) -> None:
    status, _, body = lb.get(host, path)
    assert status == 404, body


def test_weights_server_group_id_priority_and_weight_zero(lb: Serve) -> None:
    counts = Counter(lb.server_of("w.example.com", f"/{i}").split("-")[0] for i in range(500))
    # 60 to svc-a; 40 to sgp-ext1 (ServerGroupID wins over the ServiceName in the same entry);
    # svc-b has weight 0 and gets nothing.
    assert counts == {"a": 300, "ext": 200}


def test_sticky_session_pins_a_client_to_its_group(lb: Serve) -> None:
    status, headers, body = lb.get("s.example.com", "/")
    assert status == 200
    cookie = headers["set-cookie"].split(";", 1)[0]
    first = json.loads(body)["server"].split("-")[0]
    seen = {lb.server_of("s.example.com", "/", {"Cookie": cookie}).split("-")[0] for _ in range(40)}
    assert seen == {first}
    # Without the cookie the client is spread over both groups.
    spread = Counter(lb.server_of("s.example.com", "/").split("-")[0] for _ in range(40))
    assert set(spread) == {"a", "ext"}


def test_live_edit_under_load_fails_no_request(lb: Serve) -> None:
    before = lb.config()["version"]
    stop = threading.Event()
    results: Counter[str] = Counter()
    failures: list[str] = []

    def load() -> None:
        conn = lb.connect()
        while not stop.is_set():
            try:
                conn.request("GET", "/live", headers={"Host": "w.example.com"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    failures.append(f"{resp.status} {body[:80]!r}")
                else:
                    results[json.loads(body)["server"].split("-")[0]] += 1
            except OSError as exc:
                failures.append(repr(exc))
                conn.close()
                conn = lb.connect()
        conn.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        for weight in (10, 90, 60):
            lb.write(
                "weights.yaml",
                ingress(
                    "weights",
                    forward(
                        {"ServiceName": "svc-a", "ServicePort": 80, "Weight": weight},
                        {"ServerGroupID": "sgp-ext1", "Weight": 100 - weight},
                    ),
                ),
            )
            before = lb.wait_version(before)["version"]
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert sum(results.values()) > 200


def test_broken_edit_keeps_last_good_rules_and_other_ingresses(lb: Serve) -> None:
    version = lb.config()["version"]
    lb.write(
        "weights.yaml",
        ingress(
            "weights",
            forward(
                {"ServiceName": "svc-a", "ServicePort": 80},
                {"ServerGroupID": "sgp-ext1", "Weight": 50},
            ),
        ),
    )
    wait_until(lambda: lb.config()["failedIngresses"] == ["default/weights"], 10, "the error")
    config = lb.config()
    assert config["version"] == version  # the routing table did not change: no new version
    codes = [d["code"] for d in config["diagnostics"] if d["severity"] == "error"]
    assert codes == ["ForwardGroup.WeightRequired"]
    # The last good version of this Ingress still serves, and so do the others.
    counts = Counter(lb.server_of("w.example.com", f"/{i}").split("-")[0] for i in range(100))
    assert counts == {"a": 60, "ext": 40}
    assert lb.server_of("r.example.com", "/foo") == "b-1"
    # Restore the file for other tests.
    lb.write(
        "weights.yaml",
        ingress(
            "weights",
            forward(
                {"ServiceName": "svc-a", "ServicePort": 80, "Weight": 60},
                {"ServerGroupID": "sgp-ext1", "Weight": 40},
            ),
        ),
    )
    wait_until(lambda: lb.config()["failedIngresses"] == [], 10, "the fix to be read")
    assert lb.config()["version"] == version  # the same rules as the last good version


def test_deleting_a_file_removes_its_rules(lb: Serve) -> None:
    version = lb.config()["version"]
    extra = ingress(
        "extra", forward({"ServiceName": "svc-b", "ServicePort": 80}), host="extra.example.com"
    )
    lb.write("extra.yaml", extra)
    version = lb.wait_version(version)["version"]
    assert lb.server_of("extra.example.com", "/") == "b-1"
    (lb.manifests / "extra.yaml").unlink()
    lb.wait_version(version)
    assert lb.get("extra.example.com", "/")[0] == 404


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    servers = {"slow": ("127.0.5.9", PORT)}
    manifests = {
        "svc.yaml": service("slow-svc", "127.0.5.9"),
        "ing.yaml": ingress("i", forward({"ServiceName": "slow-svc", "ServicePort": 80})),
    }
    with running(tmp_path, servers, manifests) as serve:
        conn = serve.connect()
        conn.request("GET", "/", headers={"Host": "w.example.com"})
        assert conn.getresponse().read()
        assert serve.proc is not None
        serve.proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: serve.proc is not None and serve.proc.poll() is not None, 40, "serve to exit"
        )
        assert serve.proc.returncode == 0
        conn.close()
