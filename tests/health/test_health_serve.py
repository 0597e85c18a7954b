"""End to end: a real ``albingress serve`` takes a server out of rotation, and back, on its checks.

Two loopback backends (127.0.2.1 and 127.0.2.2, in threads of this process) form a server group
created through the official SDK (CreateServerGroup, AddServersToServerGroup) with HTTP checks
on ``/health`` every second (thresholds 2), named by an Ingress file. ListServerGroupServers
must report each server's Status as the checks see it. A client sends a request every
50 ms; when backend B's ``/health`` starts failing, B must stop getting traffic within
``interval x unhealthy_threshold + interval`` (plus a little slack for the supervisor to tell the
worker), and get traffic again within ``interval x healthy_threshold + interval`` after it
recovers, never much sooner.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Serve, wait_until

INTERVAL = 1.0
THRESHOLD = 2
SLACK = 1.0
HOST = "health.e2e.test"


class _Handler(BaseHTTPRequestHandler):
    server: _Backend

    def _answer(self, with_body: bool) -> None:
        if self.path == "/health":
            status, body = self.server.health_status, b"health\n"
        else:
            status, body = 200, self.server.name.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Backend(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, address: str) -> None:
        assert address.startswith("127."), address
        super().__init__((address, 0), _Handler)
        self.name = name
        self.health_status = 200


@contextlib.contextmanager
def backends() -> Iterator[dict[str, _Backend]]:
    servers = {"a": _Backend("a", "127.0.2.1"), "b": _Backend("b", "127.0.2.2")}
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
    for t in threads:
        t.start()
    try:
        yield servers
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()


def sdk_client(serve: Serve) -> Any:
    from albingress.api.sgclient import find_key, make_client

    key = find_key(str(serve.workdir / "state.db"), None)
    return make_client(f"127.0.0.1:{serve.admin}", key)


def create_group(serve: Serve, a: _Backend, b: _Backend) -> str:
    """CreateServerGroup + AddServersToServerGroup through the official SDK; the new group ID."""
    from alibabacloud_alb20200616 import models as m

    client = sdk_client(serve)
    req = m.CreateServerGroupRequest(
        server_group_name="health-e2e", server_group_type="Ip", protocol="HTTP"
    )
    req.health_check_config = m.CreateServerGroupRequestHealthCheckConfig().from_map(
        {
            "HealthCheckEnabled": True,
            "HealthCheckPath": "/health",
            "HealthCheckMethod": "GET",
            "HealthCheckInterval": int(INTERVAL),
            "HealthCheckTimeout": 1,
            "HealthyThreshold": THRESHOLD,
            "UnhealthyThreshold": THRESHOLD,
        }
    )
    gid = str(client.create_server_group(req).body.server_group_id)
    servers = [
        {
            "ServerType": "Ip",
            "ServerId": s.server_address[0],  # an Ip server's ID is its address
            "ServerIp": s.server_address[0],
            "Port": s.server_address[1],
            "Weight": 100,
        }
        for s in (a, b)
    ]
    add = m.AddServersToServerGroupRequest().from_map({"ServerGroupId": gid, "Servers": servers})
    client.add_servers_to_server_group(add)
    return gid


def ingress(gid: str) -> str:
    return f"""\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: health-e2e
  annotations:
    alb.ingress.kubernetes.io/actions.forward: |
      [{{"type": "ForwardGroup",
        "ForwardConfig": {{"ServerGroups": [{{"ServerGroupID": "{gid}", "Weight": 100}}]}}}}]
spec:
  ingressClassName: alb
  rules:
    - host: {HOST}
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: forward
                port:
                  name: use-annotation
"""


def statuses(serve: Serve, gid: str) -> dict[str, str]:
    """ListServerGroupServers through the official SDK: backend name -> Status."""
    from albingress.api.sgclient import all_servers

    names = {"127.0.2.1": "a", "127.0.2.2": "b"}
    return {names[s["ServerIp"]]: s["Status"] for s in all_servers(sdk_client(serve), gid)}


def served_by(serve: Serve) -> str:
    status, _, body = serve.get(HOST, "/work")
    assert status == 200, (status, body)
    return body.decode()


def first_time(serve: Serve, want: str, timeout: float, after_b_gone: bool = False) -> float:
    """Seconds until a request is served by ``want`` (or, with ``after_b_gone``, until b's
    last request before 20 requests in a row went to a)."""
    start = time.monotonic()
    last_b = start
    run_of_a = 0
    while time.monotonic() - start < timeout:
        who = served_by(serve)
        now = time.monotonic()
        if after_b_gone:
            if who == "b":
                last_b, run_of_a = now, 0
            else:
                run_of_a += 1
                if run_of_a >= 20:
                    return last_b - start
        elif who == want:
            return now - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


@pytest.mark.e2e
def test_unhealthy_server_leaves_and_rejoins_rotation(tmp_path: Path) -> None:
    with backends() as bk:
        serve = Serve(tmp_path, workers=1)
        try:
            serve.start()
            gid = create_group(serve, bk["a"], bk["b"])
            before = int(serve.config()["version"])
            serve.write("health.yaml", ingress(gid))
            serve.wait_version(before)
            # The rule is live once a request gets an answer from a backend.
            wait_until(lambda: serve.get(HOST, "/work")[0] == 200, 10, "the rule to be live")
            assert statuses(serve, gid) == {"a": "Available", "b": "Available"}
            seen = {served_by(serve) for _ in range(10)}
            assert seen == {"a", "b"}  # both in rotation to begin with

            bk["b"].health_status = 503
            gone = first_time(
                serve, "a", timeout=THRESHOLD * INTERVAL + INTERVAL + 10, after_b_gone=True
            )
            print(f"gone after {gone:.2f}s")
            assert statuses(serve, gid) == {"a": "Available", "b": "Unavailable"}
            assert gone <= THRESHOLD * INTERVAL + INTERVAL + SLACK
            assert gone >= (THRESHOLD - 1) * INTERVAL - 0.3  # two failures, one interval apart

            bk["b"].health_status = 200
            back = first_time(serve, "b", timeout=THRESHOLD * INTERVAL + INTERVAL + SLACK)
            print(f"back after {back:.2f}s")
            assert back >= (THRESHOLD - 1) * INTERVAL - 0.3
            assert {served_by(serve) for _ in range(10)} == {"a", "b"}
            assert statuses(serve, gid) == {"a": "Available", "b": "Available"}
        finally:
            serve.stop()
