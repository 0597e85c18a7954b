"""The checker against real servers on 127.0.2.x (1 s intervals, thresholds of 2).

Bounds asserted, from issue #4: a server that starts failing leaves within
``interval x unhealthy_threshold`` (+ one interval), and comes back after ``healthy_threshold``
passing checks. A little slack (SLACK seconds) covers scheduling on a busy test machine.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from albingress.ir import IR, server_key
from albingress.servergroups.health import HealthChecker

from .conftest import ATTEMPTS
from .helpers import Backend, check, group, ir, refused_port, wait_until

SLACK = 0.6
INTERVAL = 1.0


def run_with_checker(
    body: Callable[[HealthChecker, list[frozenset[str]]], Awaitable[None]],
    **kw: object,
) -> list[frozenset[str]]:
    """Run ``body`` with a running checker; cancel the checker after, and check it stopped."""
    changes: list[frozenset[str]] = []

    async def main() -> None:
        checker = HealthChecker(changes.append, **kw)  # type: ignore[arg-type]
        task = asyncio.create_task(checker.run())
        try:
            await body(checker, changes)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not checker._tasks  # no check left running

    asyncio.run(main())
    return changes


def test_failing_server_leaves_and_comes_back() -> None:
    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        backend = await Backend("127.0.2.1").start()
        key = server_key("sgp-a", "127.0.2.1", backend.port)
        hc.update(ir(group("sgp-a", check(), [("127.0.2.1", backend.port)])))
        await wait_until(lambda: len(backend.requests) >= 1, INTERVAL + SLACK)
        assert hc.status("sgp-a", "127.0.2.1", backend.port) == "Available"

        backend.status = 500
        left = await wait_until(lambda: key in hc.unhealthy(), 2 * INTERVAL + INTERVAL + SLACK)
        # Two consecutive failures, one interval apart: never sooner than about one interval.
        assert left >= INTERVAL - 0.3
        assert hc.status("sgp-a", "127.0.2.1", backend.port) == "Unavailable"
        assert changes == [frozenset({key})]

        backend.status = 204
        back = await wait_until(lambda: key not in hc.unhealthy(), 2 * INTERVAL + INTERVAL + SLACK)
        assert back >= INTERVAL - 0.3
        assert hc.status("sgp-a", "127.0.2.1", backend.port) == "Available"
        assert changes == [frozenset({key}), frozenset()]
        await backend.stop()

    run_with_checker(body)


def test_refused_timeout_and_garbage_are_failures() -> None:
    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        good = await Backend("127.0.2.1").start()
        silent = await Backend("127.0.2.2", mode="silent").start()
        garbage = await Backend("127.0.2.3", mode="garbage").start()
        refused = refused_port("127.0.2.4")
        servers = [
            ("127.0.2.1", good.port),
            ("127.0.2.2", silent.port),
            ("127.0.2.3", garbage.port),
            ("127.0.2.4", refused),
        ]
        hc.update(ir(group("g", check(timeout=1), servers)))
        bad = {server_key("g", a, p) for a, p in servers[1:]}
        # First check within one interval, the second one interval later, + the 1 s timeout.
        await wait_until(lambda: hc.unhealthy() == bad, 3 * INTERVAL + 1 + SLACK)
        assert hc.status("g", "127.0.2.1", good.port) == "Available"
        assert silent.requests and garbage.requests  # they were really asked
        for b in (good, silent, garbage):
            await b.stop()

    run_with_checker(body)


def test_method_path_host_codes_and_connect_port_are_honoured() -> None:
    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        not_found = await Backend("127.0.2.1", status=404).start()
        not_found2 = await Backend("127.0.2.2", status=404).start()
        unavailable = await Backend("127.0.2.3", status=503).start()
        side = await Backend("127.0.2.4").start()  # the connect port, not the server's port
        server_port = refused_port("127.0.2.4")
        hc.update(
            ir(
                group(
                    "custom",
                    check(
                        method="GET", path="/hc/x?y=1", host="hc.example.test", codes=("http_4xx",)
                    ),
                    [("127.0.2.1", not_found.port)],
                ),
                group("default", check(), [("127.0.2.2", not_found2.port)]),
                group(
                    "post5xx",
                    check(method="POST", codes=("http_5xx",)),
                    [("127.0.2.3", unavailable.port)],
                ),
                group("side", check(connect_port=side.port), [("127.0.2.4", server_port)]),
            )
        )
        expected = {server_key("default", "127.0.2.2", not_found2.port)}
        await wait_until(lambda: hc.unhealthy() == expected, 3 * INTERVAL + SLACK)
        await asyncio.sleep(INTERVAL)  # one more round: the others stay healthy
        assert hc.unhealthy() == expected

        seen = not_found.requests[0]
        assert (seen.method, seen.target, seen.host) == ("GET", "/hc/x?y=1", "hc.example.test")
        seen = not_found2.requests[0]
        assert (seen.method, seen.target, seen.host) == ("HEAD", "/", "127.0.2.2")
        assert unavailable.requests[0].method == "POST"
        assert side.requests  # checked on connect_port
        assert ("127.0.2.4", server_port) not in ATTEMPTS
        for b in (not_found, not_found2, unavailable, side):
            await b.stop()

    run_with_checker(body)


@pytest.mark.parametrize("protocol", ["TCP", "gRPC"])
def test_connect_only_checks(protocol: str) -> None:
    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        # Answers 500 to HTTP, but a connect-only check must not care (and send nothing).
        listening = await Backend("127.0.2.1", status=500).start()
        closed = refused_port("127.0.2.2")
        hc.update(
            ir(
                group(
                    "t",
                    check(protocol=protocol),
                    [("127.0.2.1", listening.port), ("127.0.2.2", closed)],
                )
            )
        )
        expected = {server_key("t", "127.0.2.2", closed)}
        await wait_until(lambda: hc.unhealthy() == expected, 3 * INTERVAL + SLACK)
        await wait_until(lambda: listening.connections >= 2, INTERVAL + SLACK)
        assert hc.status("t", "127.0.2.1", listening.port) == "Available"
        assert listening.requests == []  # connect only
        await listening.stop()

    run_with_checker(body)


def test_update_keeps_state_retunes_and_forgets() -> None:
    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        failing = await Backend("127.0.2.1", status=500).start()
        other = await Backend("127.0.2.2").start()
        a = group("a", check(), [("127.0.2.1", failing.port)])
        key = server_key("a", "127.0.2.1", failing.port)
        hc.update(ir(a))
        await wait_until(lambda: key in hc.unhealthy(), 3 * INTERVAL + SLACK)
        assert changes == [frozenset({key})]

        # An unrelated change (a new group) keeps the failing server's state as it is.
        b = group("b", check(), [("127.0.2.2", other.port)])
        hc.update(ir(a, b))
        assert hc.status("a", "127.0.2.1", failing.port) == "Unavailable"
        assert hc.unhealthy() == frozenset({key})
        await wait_until(lambda: len(other.requests) >= 1, INTERVAL + SLACK)  # b is checked

        # Retuned (another path): health is kept, counting restarts under the new settings.
        before = len(failing.requests)
        a2 = group("a", check(path="/ready"), [("127.0.2.1", failing.port)])
        hc.update(ir(a2, b))
        assert hc.status("a", "127.0.2.1", failing.port) == "Unavailable"
        await wait_until(lambda: len(failing.requests) > before, INTERVAL + SLACK)
        assert failing.requests[-1].target == "/ready"
        assert changes == [frozenset({key})]

        # Checks disabled: forgotten, reported Unused, and the unhealthy set shrinks.
        hc.update(ir(group("a", check(enabled=False), [("127.0.2.1", failing.port)]), b))
        assert hc.status("a", "127.0.2.1", failing.port) == "Unused"
        assert hc.unhealthy() == frozenset()
        assert changes == [frozenset({key}), frozenset()]
        count = len(failing.requests)
        await asyncio.sleep(INTERVAL + 0.3)
        assert len(failing.requests) == count  # no more checks
        for bk in (failing, other):
            await bk.stop()

    run_with_checker(body)


def test_an_empty_ir_stops_everything() -> None:
    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        backend = await Backend("127.0.2.1").start()
        hc.update(ir(group("a", check(), [("127.0.2.1", backend.port)])))
        await wait_until(lambda: len(backend.requests) >= 1, INTERVAL + SLACK)
        hc.update(IR(listeners=(), server_groups=()))
        count = len(backend.requests)
        await asyncio.sleep(INTERVAL + 0.3)
        assert len(backend.requests) == count
        assert hc.status("a", "127.0.2.1", backend.port) == "Unused"
        await backend.stop()

    run_with_checker(body)


def _self_signed(tmp: Path) -> ssl.SSLContext:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=backend.test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed for a test cert")
def test_https_check_without_verification(tmp_path: Path) -> None:
    tls = _self_signed(tmp_path)

    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        backend = await Backend("127.0.2.1", tls=tls).start()
        hc.update(
            ir(
                group(
                    "tls", check(protocol="HTTPS", host="hc.test"), [("127.0.2.1", backend.port)]
                ),
                # Plain HTTP against a TLS port gets no status line: a failure.
                group("plain", check(protocol="HTTP"), [("127.0.2.1", backend.port)]),
            )
        )
        expected = {server_key("plain", "127.0.2.1", backend.port)}
        await wait_until(lambda: hc.unhealthy() == expected, 3 * INTERVAL + 1 + SLACK)
        assert hc.status("tls", "127.0.2.1", backend.port) == "Available"
        assert any(r.host == "hc.test" for r in backend.requests)  # the TLS check got through
        await backend.stop()

    run_with_checker(body)


def test_addresses_refused_by_the_guard_are_never_contacted() -> None:
    # Even here the refused address is on loopback: tests never name any other address.
    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        allowed = await Backend("127.0.2.1").start()
        fenced = await Backend("127.0.9.1").start()
        hc.update(
            ir(group("g", check(), [("127.0.2.1", allowed.port), ("127.0.9.1", fenced.port)]))
        )
        key = server_key("g", "127.0.9.1", fenced.port)
        await wait_until(lambda: hc.unhealthy() == {key}, 3 * INTERVAL + SLACK)
        assert allowed.requests
        assert fenced.connections == 0
        assert all(host != "127.0.9.1" for host, _ in ATTEMPTS)
        for b in (allowed, fenced):
            await b.stop()

    run_with_checker(body, address_allowed=lambda a: a.startswith("127.0.2."))


def test_on_change_errors_do_not_stop_the_checker() -> None:
    calls: list[frozenset[str]] = []

    def boom(unhealthy: frozenset[str]) -> None:
        calls.append(unhealthy)
        raise RuntimeError("subscriber failed")

    async def main() -> None:
        backend = await Backend("127.0.2.1", status=500).start()
        hc = HealthChecker(boom)
        task = asyncio.create_task(hc.run())
        hc.update(ir(group("a", check(), [("127.0.2.1", backend.port)])))
        await wait_until(lambda: len(calls) == 1, 3 * INTERVAL + SLACK)
        backend.status = 200
        await wait_until(lambda: len(calls) == 2, 3 * INTERVAL + SLACK)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.stop()

    asyncio.run(main())


def test_concurrency_is_bounded() -> None:
    gauge = [0, 0]

    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        # Six servers that never answer: each check holds its connection for the 1 s timeout.
        silent = [
            await Backend(f"127.0.2.{i}", mode="silent", gauge=gauge).start() for i in range(1, 7)
        ]
        hc.update(
            ir(
                group(
                    "g",
                    check(timeout=1),
                    [(b.host, b.port) for b in silent],
                )
            )
        )
        # Two at a time, one second each: every server gets its turn within about 3 s.
        await wait_until(lambda: all(b.connections for b in silent), 3 * INTERVAL + 1 + SLACK)
        assert gauge[1] == 2  # never more than max_concurrency checks in flight
        for b in silent:
            await b.stop()

    run_with_checker(body, max_concurrency=2)


def test_checks_run_at_a_fixed_rate() -> None:
    async def body(hc: HealthChecker, changes: list[frozenset[str]]) -> None:
        backends = [await Backend(f"127.0.2.{i}").start() for i in (1, 2, 3)]
        hc.update(ir(group("g", check(), [(b.host, b.port) for b in backends])))
        await asyncio.sleep(3 * INTERVAL + 0.9)
        for b in backends:
            times = [r.at for r in b.requests]
            assert len(times) in (3, 4), times
            gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
            assert all(abs(g - INTERVAL) < 0.25 for g in gaps), gaps
            await b.stop()

    run_with_checker(body)
