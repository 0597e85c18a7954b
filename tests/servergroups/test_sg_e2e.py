"""End to end: ``albingress serve`` on loopback, server groups created with the official SDK,
named in an Ingress file, receiving traffic; the seed's scenario 2 with its two external groups
created through the API instead of manifests."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from alibabacloud_alb20200616 import models as m
from alibabacloud_alb20200616.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.models import Config

pytestmark = pytest.mark.e2e

HOST = "demo.domain.ingress.top"
# Backends: pods of two Services (127.0.1.x) and ECS instances outside the cluster (127.0.2.x).
BACKENDS = {
    "127.0.1.1": "tea",
    "127.0.1.2": "tea",
    "127.0.1.3": "coffee",
    "127.0.1.4": "coffee",
    "127.0.2.1": "ecs-a",
    "127.0.2.2": "ecs-a",
    "127.0.2.3": "ecs-b",
}


class _Backend(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{self.server.server_address[0]}\n".encode()  # type: ignore[str-bytes-safe]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def backends() -> Iterator[int]:
    """One HTTP server per backend address, all on one free port; yields the port."""
    for _ in range(20):
        port = _free_port("127.0.1.1")
        servers: list[ThreadingHTTPServer] = []
        try:
            for addr in BACKENDS:
                servers.append(ThreadingHTTPServer((addr, port), _Backend))
        except OSError:
            for srv in servers:
                srv.server_close()
            continue
        threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
        for t in threads:
            t.start()
        yield port
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        return
    pytest.skip("no common free port for the backends")


SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: tea-svc}
spec: {ports: [{name: http, port: 80, targetPort: PORT}]}
---
apiVersion: v1
kind: Service
metadata: {name: coffee-svc}
spec: {ports: [{name: http, port: 80, targetPort: PORT}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: tea-svc-1, labels: {kubernetes.io/service-name: tea-svc}}
addressType: IPv4
ports: [{name: http, port: PORT, protocol: TCP}]
endpoints:
  - {addresses: ["127.0.1.1"], conditions: {ready: true}}
  - {addresses: ["127.0.1.2"], conditions: {ready: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: coffee-svc-1, labels: {kubernetes.io/service-name: coffee-svc}}
addressType: IPv4
ports: [{name: http, port: PORT, protocol: TCP}]
endpoints:
  - {addresses: ["127.0.1.3"], conditions: {ready: true}}
  - {addresses: ["127.0.1.4"], conditions: {ready: true}}
"""

INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: tea-ingress
  annotations:
    alb.ingress.kubernetes.io/actions.forward: |
       [{"type": "ForwardGroup",
         "ForwardConfig": {"ServerGroups": [
           {"ServiceName": "tea-svc", "Weight": 30, "ServicePort": 80},
           {"ServiceName": "coffee-svc", "Weight": 20, "ServicePort": 80},
           {"ServerGroupID": "GROUP_A", "Weight": 30},
           {"ServerGroupID": "GROUP_B", "Weight": 20}]}}]
spec:
  ingressClassName: alb
  rules:
   - host: demo.domain.ingress.top
     http:
      paths:
      - path: /path
        pathType: Prefix
        backend: {service: {name: forward, port: {name: use-annotation}}}
"""


class Serve:
    """``albingress serve`` in its own process group, stopped by its PID at the end."""

    def __init__(self, tmp: Path) -> None:
        self.manifests = tmp / "manifests"
        self.manifests.mkdir()
        self.state = tmp / "state" / "state.db"
        self.listen = _free_port()
        self.admin = _free_port()
        self.log = (tmp / "serve.log").open("wb")
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "albingress",
                "serve",
                "--manifests",
                str(self.manifests),
                "--listen",
                f"80=127.0.0.1:{self.listen}",
                "--listen",
                f"443=127.0.0.1:{_free_port()}",
                "--admin",
                f"127.0.0.1:{self.admin}",
                "--state",
                str(self.state),
                "--workers",
                "1",
                "--vpc-cidr",
                "127.0.0.0/16",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.admin}/healthz"
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.1)
        raise AssertionError("serve did not become ready")

    def client(self) -> Client:
        creds = yaml.safe_load((self.state.parent / "credentials.yaml").read_text())
        key = creds["accessKeys"][0]
        return Client(
            Config(
                access_key_id=key["accessKeyId"],
                access_key_secret=key["accessKeySecret"],
                endpoint=f"127.0.0.1:{self.admin}",
                protocol="http",
            )
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    running = Serve(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def fetch(port: int, n: int) -> Counter[str]:
    """``n`` requests through the load balancer; which backend address answered each."""
    seen: Counter[str] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(n):
        try:
            conn.request("GET", "/path/x", headers={"Host": HOST})
            resp = conn.getresponse()
            body = resp.read().decode().strip()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            continue
        seen[body if resp.status == 200 else f"status {resp.status}"] += 1
    conn.close()
    return seen


def wait_for(port: int, check: Any, timeout: float = 15) -> Counter[str]:
    deadline = time.monotonic() + timeout
    seen: Counter[str] = Counter()
    while time.monotonic() < deadline:
        seen = fetch(port, 40)
        if check(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"traffic never matched: {dict(seen)}")


def test_scenario2_with_groups_created_through_the_api(serve: Serve, backends: int) -> None:
    (serve.manifests / "services.yaml").write_text(SERVICES.replace("PORT", str(backends)))
    serve.wait_ready()
    client = serve.client()

    def group(name: str, servers: list[tuple[str, str]]) -> str:
        gid = str(
            client.create_server_group(
                m.CreateServerGroupRequest(server_group_name=name, server_group_type="Instance")
            ).body.server_group_id
        )
        client.add_servers_to_server_group(
            m.AddServersToServerGroupRequest(
                server_group_id=gid,
                servers=[
                    m.AddServersToServerGroupRequestServers(
                        server_type="Ecs", server_id=sid, server_ip=ip, port=backends
                    )
                    for sid, ip in servers
                ],
            )
        )
        return gid

    group_a = group("ecs-group-a", [("i-ecs-a1", "127.0.2.1"), ("i-ecs-a2", "127.0.2.2")])
    group_b = group("ecs-group-b", [("i-ecs-b1", "127.0.2.3")])
    ingress = INGRESS.replace("GROUP_A", group_a).replace("GROUP_B", group_b)
    (serve.manifests / "tea-ingress.yaml").write_text(ingress)

    wait_for(serve.listen, lambda seen: set(seen) == set(BACKENDS))
    seen = fetch(serve.listen, 500)
    total = sum(seen.values())
    assert total == 500
    share = Counter[str]()
    for addr, count in seen.items():
        share[BACKENDS[addr]] += count
    for name, weight in {"tea": 30, "coffee": 20, "ecs-a": 30, "ecs-b": 20}.items():
        assert abs(share[name] / total * 100 - weight) <= 5, dict(share)

    # Deleting a group that a rule uses is refused.
    with pytest.raises(ClientException) as info:
        client.delete_server_group(m.DeleteServerGroupRequest(server_group_id=group_a))
    assert info.value.code == "ResourceInUse.ServerGroup"

    # A change through the API reaches the data plane without a restart.
    client.update_server_group_servers_attribute(
        m.UpdateServerGroupServersAttributeRequest(
            server_group_id=group_a,
            servers=[
                m.UpdateServerGroupServersAttributeRequestServers(
                    server_type="Ecs",
                    server_id="i-ecs-a2",
                    server_ip="127.0.2.2",
                    port=backends,
                    weight=0,
                )
            ],
        )
    )
    wait_for(serve.listen, lambda seen: "127.0.2.2" not in seen and "127.0.2.1" in seen)

    # Once no rule uses it, the group can go.
    (serve.manifests / "tea-ingress.yaml").unlink()
    deadline = time.monotonic() + 15
    while True:
        try:
            client.delete_server_group(m.DeleteServerGroupRequest(server_group_id=group_b))
            break
        except ClientException as exc:
            assert exc.code == "ResourceInUse.ServerGroup"
            assert time.monotonic() < deadline, "the group stayed in use after the Ingress went"
            time.sleep(0.1)
    body = client.list_server_groups(m.ListServerGroupsRequest()).body
    assert [g.server_group_id for g in body.server_groups] == [group_a]
