"""Faults under load against a running ``albingress serve``: servers killed or hanging, whole
groups down, config churn, workers killed, shutdown with requests in flight.

Each test has its own ``serve`` and stub servers (on 127.0.8.x), so a fault never leaks into
another test. Load is bounded: a few threads for a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Serve, wait_until
from tests.reliability.conftest import stub_set
from tests.reliability.load import Load, children

pytestmark = pytest.mark.e2e

FLAGS = ("--response-timeout", "1", "--connect-timeout", "1", "--idle-timeout", "10")


def groups_manifest(port: int, weights: tuple[int, int] = (50, 50), checked: bool = False) -> str:
    """Ingress f.example.com -> sgp-a (127.0.8.1, .2) and sgp-b (127.0.8.3) by weight."""
    check = (
        """\
  healthCheckConfig:
    healthCheckEnabled: true
    healthCheckPath: /healthz
    healthCheckInterval: 1
    healthCheckTimeout: 1
    healthyThreshold: 2
    unhealthyThreshold: 2
"""
        if checked
        else ""
    )
    actions = [
        {
            "Type": "ForwardGroup",
            "ForwardConfig": {
                "ServerGroups": [
                    {"ServerGroupID": "sgp-a", "Weight": weights[0]},
                    {"ServerGroupID": "sgp-b", "Weight": weights[1]},
                ]
            },
        }
    ]
    return f"""\
apiVersion: albingress.dev/v1alpha1
kind: ServerGroup
metadata: {{name: a}}
spec:
  serverGroupId: sgp-a
  serverGroupType: Ip
{check}  servers:
    - {{serverIp: 127.0.8.1, port: {port}}}
    - {{serverIp: 127.0.8.2, port: {port}}}
---
apiVersion: albingress.dev/v1alpha1
kind: ServerGroup
metadata: {{name: b}}
spec:
  serverGroupId: sgp-b
  serverGroupType: Ip
{check}  servers:
    - {{serverIp: 127.0.8.3, port: {port}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: fwd
  annotations:
    alb.ingress.kubernetes.io/actions.fwd: '{json.dumps(actions)}'
spec:
  ingressClassName: alb
  rules:
  - host: f.example.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: fwd, port: {{name: use-annotation}}}}}}}}
"""


class Rig:
    """Stub servers a1, a2 (group sgp-a), b1 (group sgp-b), and ``serve`` in front of them."""

    def __init__(self, tmp: Path, checked: bool, workers: int, extra: tuple[str, ...]) -> None:
        self.a1, self.a2, self.b1 = stub_set(
            ("a1", "127.0.8.1"), ("a2", "127.0.8.2"), ("b1", "127.0.8.3")
        )
        self.port = self.a1.port
        self.serve = Serve(tmp, workers=workers, extra=FLAGS + extra)
        self.serve.write("groups.yaml", groups_manifest(self.port, checked=checked))

    def stop(self) -> int:
        code = self.serve.stop()
        for s in (self.a1, self.a2, self.b1):
            s.stop()
        return code


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[object]:
    rigs: list[Rig] = []

    def make(checked: bool = False, workers: int = 2, extra: tuple[str, ...] = ()) -> Rig:
        rig = Rig(tmp_path, checked, workers, extra)
        rigs.append(rig)
        rig.serve.start()
        return rig

    yield make
    for rig in rigs:
        assert rig.stop() == 0, rig.serve.log.read_text()[-3000:]


def test_a_server_killed_under_load_costs_no_request(rig_factory) -> None:  # type: ignore[no-untyped-def]
    """GETs to a server that vanished are retried on another: zero failures."""
    rig = rig_factory()
    with Load(rig.serve.port, "f.example.com", threads=4, seconds=20) as load:
        load.wait_for(200)
        rig.a1.stop()  # every socket of the server closes, the port refuses
        load.wait_for(500)
    assert load.total > 700
    print(f"server killed under GET load: {load.failed()} of {load.total} failed")
    assert load.failed() == 0, (load.statuses, load.errors[:5])
    assert load.servers["a2"] > 0 and load.servers["b1"] > 0


def test_a_server_killed_under_post_load_fails_at_most_what_it_held(rig_factory) -> None:  # type: ignore[no-untyped-def]
    """POSTs whose body went to the server that vanished cannot be retried (they may have been
    acted on): at most the requests in flight on it fail, one per load thread."""
    rig = rig_factory()
    with Load(rig.serve.port, "f.example.com", threads=4, seconds=20, body=b"x" * 2048) as load:
        load.wait_for(200)
        rig.a1.stop()
        load.wait_for(500)
    assert load.total > 700
    assert load.failed() <= 4, (load.statuses, load.errors[:5])
    print(f"POST load, server killed: {load.failed()} of {load.total} failed")


def test_a_hanging_server_times_out_then_leaves_rotation(rig_factory) -> None:  # type: ignore[no-untyped-def]
    """A server that accepts and never answers: 504 after --response-timeout, and once its health
    checks time out (2 x 1 s) it gets no more requests."""
    rig = rig_factory(checked=True)
    wait_until(lambda: rig.serve.get("f.example.com", "/")[0] == 200, 10, "traffic")
    rig.a1.mode = "hang"
    started = time.monotonic()
    codes = [rig.serve.get("f.example.com", f"/{i}")[0] for i in range(6)]
    assert 504 in codes and set(codes) <= {200, 504}
    wait_until(
        lambda: "127.0.8.1" in json.dumps(rig.serve.config()["unhealthy"]), 10, "a1 unhealthy"
    )
    print(f"hanging server out of rotation after {time.monotonic() - started:.1f} s: {codes}")
    assert time.monotonic() - started < 10
    before = len(rig.a1.heads)
    for i in range(30):
        status, _, body = rig.serve.get("f.example.com", f"/after/{i}")
        assert status == 200 and b'"a1"' not in body
    assert len(rig.a1.heads) == before


def test_a_hanging_server_without_health_checks_leaves_rotation_after_one_timeout(
    rig_factory,
) -> None:  # type: ignore[no-untyped-def]
    """No active checks: the passive check ejects the server at its first response timeout.
    One worker: each worker ejects on its own first timeout."""
    rig = rig_factory(checked=False, workers=1)
    wait_until(lambda: rig.serve.get("f.example.com", "/")[0] == 200, 10, "traffic")
    rig.a1.mode = "hang"
    codes = [rig.serve.get("f.example.com", f"/{i}")[0] for i in range(8)]
    before = len(rig.a1.heads)
    after = [rig.serve.get("f.example.com", f"/after/{i}")[0] for i in range(20)]
    print(f"hanging server, passive check only: {codes} then {set(after)}")
    assert codes.count(504) == 1
    assert set(after) == {200} and len(rig.a1.heads) == before


def test_a_whole_group_down_moves_its_share_then_503_when_none_is_left(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = rig_factory(checked=True)
    wait_until(lambda: rig.serve.get("f.example.com", "/")[0] == 200, 10, "traffic")
    rig.a1.stop()
    rig.a2.stop()
    with Load(rig.serve.port, "f.example.com", threads=2, seconds=20) as load:
        load.wait_for(300)
    assert load.failed() == 0, (load.statuses, load.errors[:5])
    print(f"group down: {load.failed()} of {load.total} failed, servers {dict(load.servers)}")
    assert set(load.servers) == {"b1"}
    rig.b1.stop()
    # each worker answers 502 for the request that found the last server gone (refused, nothing
    # left to retry on); once it is ejected, or the health checks mark it down, 503 everywhere
    wait_until(
        lambda: all(rig.serve.get("f.example.com", f"/{i}")[0] == 503 for i in range(10)),
        10,
        "503 with no server left",
    )
    status, _, body = rig.serve.get("f.example.com", "/")
    assert status == 503, body


def test_200_config_changes_under_load_fail_no_request(rig_factory) -> None:  # type: ignore[no-untyped-def]
    # a long response timeout: this test is about reloads, not slow stub servers on busy CPUs
    rig = rig_factory(extra=("--response-timeout", "10"))
    version = rig.serve.config()["version"]
    started = time.monotonic()
    with Load(rig.serve.port, "f.example.com", threads=4, seconds=90) as load:
        for i in range(200):
            weight = 1 + i % 99  # consecutive steps always differ
            rig.serve.write("groups.yaml", groups_manifest(rig.port, (weight, 100 - weight)))
            version = int(rig.serve.wait_version(version, timeout=10)["version"])
    elapsed = time.monotonic() - started
    slowest = max(load.latencies)
    print(
        f"200 config changes in {elapsed:.1f} s, {load.total} requests, {load.failed()} failed, "
        f"slowest {slowest * 1000:.0f} ms"
    )
    assert load.total > 500
    assert load.failed() == 0, (load.statuses, load.errors[:5])


def test_a_worker_killed_is_restarted_and_the_others_keep_serving(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = rig_factory(workers=2)
    assert rig.serve.proc is not None
    workers = children(rig.serve.proc.pid)
    assert len(workers) == 2
    with Load(rig.serve.port, "f.example.com", threads=4, seconds=20) as load:
        load.wait_for(200)
        os.kill(workers[0], signal.SIGKILL)
        load.wait_for(500)
        wait_until(
            lambda: len(now := children(rig.serve.proc.pid)) == 2 and workers[0] not in now,  # type: ignore[union-attr]
            10,
            "the worker to be replaced",
        )
        load.wait_for(200)
    print(f"worker SIGKILL: {load.failed()} of {load.total} failed, {load.errors[:2]}")
    assert workers[1] in children(rig.serve.proc.pid)
    # only connections the dead worker held can fail: at most one request per load thread
    assert load.failed() <= 4, (load.statuses, load.errors[:5])
    assert load.total > 900


def test_sigterm_lets_long_requests_in_flight_finish(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = rig_factory(extra=("--response-timeout", "10"))
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def slow(i: int) -> None:
        status, _, body = rig.serve.get("f.example.com", f"/slow/{i}?s=2")
        with lock:
            results.append((status, body))

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert rig.serve.proc is not None
    rig.serve.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(15)
    print(f"SIGTERM with 4 requests of 2 s in flight: {[s for s, _ in results]}")
    assert [s for s, _ in results] == [200] * 4, results
    assert rig.serve.proc.wait(15) == 0
