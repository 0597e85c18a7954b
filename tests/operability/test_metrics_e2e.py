"""Known traffic through a real ``albingress serve``; the exact counts read back from /metrics
and from the access log, which must agree request by request.

Two workers (so /metrics adds up processes), backends on 127.0.31.x recording X-Request-Id.
"""

from __future__ import annotations

import collections
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Serve, service, wait_until
from tests.e2e.test_serve import forward, ingress
from tests.operability.helpers import RecordingBackends, parse_prometheus, select, total

pytestmark = pytest.mark.e2e

PORT = 8080
BACKENDS = {
    "a-1": ("127.0.31.1", PORT),
    "a-2": ("127.0.31.2", PORT),
    "ext-1": ("127.0.31.3", PORT),
}
W_RULE = "default/weights/rules/0/paths/0"
DEAD_RULE = "default/dead/rules/0/paths/0"


def _group(name: str, gid: str, *addresses: str) -> str:
    servers = "\n".join(f"    - {{serverIp: {a}, port: {PORT}}}" for a in addresses)
    return f"""\
apiVersion: albingress.dev/v1alpha1
kind: ServerGroup
metadata: {{name: {name}}}
spec:
  serverGroupId: {gid}
  serverGroupType: Ip
  servers:
{servers}
"""


WEIGHTS = ingress(
    "weights",
    forward(
        {"ServiceName": "svc-a", "ServicePort": 80, "Weight": 75},
        {"ServerGroupID": "sgp-opext", "Weight": 25},
    ),
)
# Nothing listens on 127.0.31.8/9: connections are refused, the request is retried, then 502.
DEAD = ingress(
    "dead", forward({"ServerGroupID": "sgp-opdead", "Weight": 100}), host="d.example.com"
)


@pytest.fixture(scope="module")
def backends() -> Iterator[RecordingBackends]:
    b = RecordingBackends(BACKENDS)
    try:
        yield b
    finally:
        b.stop()


def _start(workdir: Path, *extra: str, workers: int = 2) -> Serve:
    serve = Serve(workdir, workers=workers, extra=extra)
    serve.write("services.yaml", service("svc-a", "127.0.31.1", "127.0.31.2", port=PORT))
    serve.write("ext.yaml", _group("opext", "sgp-opext", "127.0.31.3"))
    serve.write("dead.yaml", _group("opdead", "sgp-opdead", "127.0.31.8", "127.0.31.9"))
    serve.write("weights.yaml", WEIGHTS)
    serve.write("dead-ingress.yaml", DEAD)
    serve.start()
    return serve


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory, backends: RecordingBackends) -> Iterator[Serve]:
    workdir = tmp_path_factory.mktemp("observe")
    serve = _start(workdir, "--access-log", str(workdir / "access.log"))
    try:
        yield serve
    finally:
        assert serve.stop() == 0


def request(
    serve: Serve, method: str, host: str, path: str, body: bytes = b"", **headers: str
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", serve.port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers={"Host": host, **headers})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metrics(serve: Serve) -> dict[Any, float]:
    status, body = serve.admin_get("/metrics")
    assert status == 200
    return parse_prometheus(body.decode())


def access_lines(serve: Serve, count: int) -> list[dict[str, Any]]:
    path = serve.workdir / "access.log"
    lines: list[dict[str, Any]] = []

    def enough() -> bool:
        lines[:] = [json.loads(x) for x in path.read_text().splitlines()]
        return len(lines) >= count

    wait_until(enough, 10, f"{count} access log lines")
    return lines


def test_known_traffic_exact_counts(lb: Serve, backends: RecordingBackends) -> None:
    before = metrics(lb)
    assert total(before, "albingress_requests_total") == 0
    for i in range(40):
        status, _ = request(lb, "GET", "w.example.com", f"/plain/{i}?n={i}")
        assert status == 200
    for i in range(4):
        status, body = request(
            lb, "GET", "w.example.com", f"/given/{i}", **{"X-Request-Id": f"client-id-{i}"}
        )
        assert json.loads(body)["rid"] == f"client-id-{i}"
    status, _ = request(lb, "POST", "w.example.com", "/post", body=b"x" * 1000)
    assert status == 200
    for _ in range(5):
        assert request(lb, "GET", "nowhere.example.com", "/")[0] == 404
    for _ in range(3):
        assert request(lb, "GET", "d.example.com", "/")[0] in (502, 503)

    m = metrics(lb)
    name = "albingress_requests_total"
    assert total(m, name, rule=W_RULE, code_class="2xx") == 45
    assert total(m, name, rule=W_RULE) == 45
    assert total(m, name, rule="", code_class="4xx", listener="80") == 5
    assert total(m, name, rule=DEAD_RULE, code_class="5xx", ingress="default/dead") == 3
    assert total(m, name) == 53
    # labels people recognise: the Service's name for its group, address:port for servers
    groups = {labels["server_group"] for labels, _ in select(m, name, rule=W_RULE)}
    assert groups == {"default/svc-a:80", "sgp-opext"}
    servers = {labels["server"] for labels, _ in select(m, name, rule=W_RULE)}
    assert servers <= {"127.0.31.1:8080", "127.0.31.2:8080", "127.0.31.3:8080"}
    # histograms count every request once; upstream ones only requests a server answered
    assert total(m, "albingress_request_duration_seconds_count") == 53
    count = total(m, "albingress_request_duration_seconds_count", rule=W_RULE)
    assert total(m, "albingress_request_duration_seconds_bucket", rule=W_RULE, le="+Inf") == count
    assert total(m, "albingress_upstream_duration_seconds_count", server_group="sgp-opext") == (
        total(m, name, rule=W_RULE, server_group="sgp-opext")
    )
    # configured weights and shares; the measured share is near 75/25 over 45 requests
    weight = {
        labels["server_group"]: v
        for labels, v in select(m, "albingress_forward_group_weight", rule=W_RULE)
    }
    assert weight == {"default/svc-a:80": 75, "sgp-opext": 25}
    share = {
        labels["server_group"]: v
        for labels, v in select(m, "albingress_forward_group_share", rule=W_RULE)
    }
    assert share == {"default/svc-a:80": 0.75, "sgp-opext": 0.25}
    measured = {
        labels["server_group"]: v
        for labels, v in select(m, "albingress_forward_group_measured_share", rule=W_RULE)
    }
    assert sum(measured.values()) == pytest.approx(1.0)
    assert measured["sgp-opext"] == pytest.approx(
        total(m, name, rule=W_RULE, server_group="sgp-opext") / 45, abs=1e-5
    )
    assert 0.1 <= measured["sgp-opext"] <= 0.4
    assert total(m, "albingress_server_healthy", server="127.0.31.3:8080") == 1
    assert total(m, "albingress_config_version") >= 1
    assert total(m, "albingress_config_last_reload_success") == 1
    assert total(m, "albingress_workers") == 2
    assert len(list(select(m, "albingress_build_info"))) == 1

    # the access log has one line per request, agreeing with /metrics server by server
    lines = access_lines(lb, 53)
    assert len(lines) == 53
    by_server = collections.Counter((x["rule"], x["server"], x["status"] // 100) for x in lines)
    for (rule, server, klass), n in by_server.items():
        assert total(m, name, rule=rule, server=server, code_class=f"{klass}xx") == n
    retries = sum(x["retries"] for x in lines if x["rule"] == DEAD_RULE)
    assert total(m, "albingress_retries_total", rule=DEAD_RULE) == retries
    # request ids: the client's kept, others generated, unique, and forwarded to the server
    seen = {path: rid for _, path, rid in backends.seen}
    logged = {x["path"] + (f"?{x['query']}" if x["query"] else ""): x for x in lines}
    for i in range(4):
        assert logged[f"/given/{i}"]["request_id"] == f"client-id-{i}"
    for i in range(40):
        line = logged[f"/plain/{i}?n={i}"]
        assert line["request_id"] and seen[f"/plain/{i}?n={i}"] == line["request_id"]
        assert line["status"] == line["upstream_status"] == 200
        assert line["method"] == "GET" and line["host"] == "w.example.com"
        assert line["duration_us"] >= line["upstream_duration_us"] >= 0
        assert line["client"] == "127.0.0.1" and line["listener"] == 80
    assert len({x["request_id"] for x in lines}) == 53
    post = logged["/post"]
    assert post["bytes_in"] > 1000 and post["bytes_out"] > 0 and post["method"] == "POST"
    miss = [x for x in lines if x["host"] == "nowhere.example.com"]
    assert {(x["status"], x["upstream_status"], x["rule"]) for x in miss} == {(404, None, "")}


def test_errors_and_traffic_view(lb: Serve) -> None:
    for _ in range(2):
        request(lb, "GET", "d.example.com", "/fail")
    status, body = lb.admin_get("/api/v1/traffic")
    assert status == 200
    data = json.loads(body)
    rules = {r["name"]: r for lst in data["listeners"] for r in lst["rules"]}
    assert {g["label"]: g["weight"] for g in rules[W_RULE]["groups"]} == {
        "default/svc-a:80": 75,
        "sgp-opext": 25,
    }
    assert any(e["rule"] == DEAD_RULE and e["status"] >= 500 for e in data["errors"])
    assert {s["server"] for s in data["servers"]} >= {"127.0.31.8:8080", "127.0.31.9:8080"}


def test_deleted_rule_series_disappear(lb: Serve) -> None:
    request(lb, "GET", "w.example.com", "/before-delete")
    assert total(metrics(lb), "albingress_requests_total", rule=W_RULE) > 0
    version = int(lb.config()["version"])
    (lb.manifests / "weights.yaml").unlink()
    lb.wait_version(version)
    text = lb.admin_get("/metrics")[1].decode()
    assert W_RULE not in text
    assert "default/weights" not in text
    lb.write("weights.yaml", WEIGHTS)  # back, for tests that may follow
    lb.wait_version(version + 1)


def test_scrapes_during_config_changes_answer_within_a_second(lb: Serve) -> None:
    version = int(lb.config()["version"])
    for i in range(6):
        weights = WEIGHTS.replace('"Weight": 75', f'"Weight": {70 + i}')
        lb.write("weights.yaml", weights)
        for _ in range(3):
            started = time.monotonic()
            status, body = lb.admin_get("/metrics")
            assert status == 200 and time.monotonic() - started < 1.0
            parse_prometheus(body.decode())
        lb.wait_version(version)
        version = int(lb.config()["version"])
    assert request(lb, "GET", "w.example.com", "/after")[0] == 200


def test_openapi_still_at_root(lb: Serve) -> None:
    status, body = lb.admin_get("/")
    assert status == 200 and b"<html" in body
    status, body = lb.admin_get("/?Action=ListServerGroups&Version=2020-06-16")
    assert b"<html" not in body  # the OpenAPI answers (here: refuses an unsigned call)
    assert status in (400, 401, 403)


def test_failing_log_destination_is_reported_and_serving_goes_on(
    tmp_path: Path, backends: RecordingBackends
) -> None:
    serve = _start(tmp_path, "--access-log", "/proc/no-such-dir/access.log", workers=1)
    try:
        for _ in range(5):
            assert request(serve, "GET", "w.example.com", "/x")[0] == 200

        def reported() -> bool:
            m = metrics(serve)
            return (
                total(m, "albingress_access_log_errors_total") >= 1
                and total(m, "albingress_access_log_dropped_total") >= 5
            )

        wait_until(reported, 10, "the failing access log to be counted")
        wait_until(lambda: "cannot open the access log" in serve.log.read_text(), 5, "the report")
        assert request(serve, "GET", "w.example.com", "/y")[0] == 200
    finally:
        assert serve.stop() == 0


def test_metrics_and_log_off(tmp_path: Path, backends: RecordingBackends) -> None:
    serve = _start(tmp_path, "--access-log", "off", "--no-metrics", workers=1)
    try:
        for _ in range(3):
            assert request(serve, "GET", "w.example.com", "/x")[0] == 200
        m = metrics(serve)
        assert not list(select(m, "albingress_requests_total"))
        assert total(m, "albingress_forward_group_weight", rule=W_RULE) == 100
        assert "{" not in serve.log.read_text().split("serving manifests")[-1]
    finally:
        assert serve.stop() == 0


def test_default_access_log_is_standard_output(tmp_path: Path, backends: RecordingBackends) -> None:
    serve = _start(tmp_path, workers=2)  # no --access-log: standard output (here serve.log)
    try:
        for i in range(30):
            assert request(serve, "GET", "w.example.com", f"/stdout/{i}")[0] == 200
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            lines = serve.log.read_text().splitlines()
            found[:] = [json.loads(x) for x in lines if x.startswith('{"time"')]
            return len(found) >= 30

        wait_until(logged, 10, "30 access log lines on standard output")
        assert sorted(x["path"] for x in found) == sorted(f"/stdout/{i}" for i in range(30))
    finally:
        assert serve.stop() == 0


def _many_rules(count: int) -> str:
    paths = "\n".join(
        f"      - {{path: /r{i}, pathType: Prefix, backend: "
        f"{{service: {{name: svc-a, port: {{number: 80}}}}}}}}"
        for i in range(count)
    )
    return f"""\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: many}}
spec:
  ingressClassName: alb
  rules:
  - host: many.example.com
    http:
      paths:
{paths}
"""


def test_scrape_with_thousands_of_rules_answers_within_a_second(
    tmp_path: Path, backends: RecordingBackends
) -> None:
    serve = Serve(tmp_path, workers=2, extra=("--access-log", "off"))
    serve.write("services.yaml", service("svc-a", "127.0.31.1", "127.0.31.2", port=PORT))
    serve.write("many.yaml", _many_rules(3000))
    serve.start()
    try:
        for i in range(0, 3000, 10):
            assert request(serve, "GET", "many.example.com", f"/r{i}/x")[0] == 200
        for path in ("/metrics", "/api/v1/traffic", "/"):
            started = time.monotonic()
            status, _ = serve.admin_get(path)
            assert status == 200 and time.monotonic() - started < 1.0, path
        m = parse_prometheus(serve.admin_get("/metrics")[1].decode())
        assert total(m, "albingress_requests_total", ingress="default/many") == 300
        assert len(list(select(m, "albingress_forward_group_weight"))) == 3000
    finally:
        assert serve.stop() == 0
