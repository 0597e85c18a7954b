"""The checker's pure parts: status lines, code classes, jitter, thresholds, update bookkeeping."""

from __future__ import annotations

from collections import Counter

import pytest

from albingress.ir import server_key
from albingress.servergroups.health import (
    HealthChecker,
    first_delay,
    parse_status_line,
    status_allowed,
)

from .helpers import check, group, ir


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\n", 200, id="ok"),
        pytest.param(b"HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n", 503, id="http/1.0 503"),
        pytest.param(b"HTTP/1.1 204\r\n", 204, id="no reason phrase"),
        pytest.param(b"HTTP/1.1 301 Moved\n", 301, id="bare LF"),
        pytest.param(b"HTTP/2 200\r\n", None, id="not http/1.x"),
        pytest.param(b"garbage\r\n", None, id="garbage"),
        pytest.param(b"HTTP/1.1 20 OK\r\n", None, id="two digits"),
        pytest.param(b"HTTP/1.1 abc OK\r\n", None, id="not a number"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_parse_status_line(data: bytes, expected: int | None) -> None:
    assert parse_status_line(data) == expected


@pytest.mark.parametrize(
    ("status", "codes", "ok"),
    [
        (200, ("http_2xx",), True),
        (302, ("http_2xx",), False),
        (302, ("http_2xx", "http_3xx"), True),
        (404, ("http_2xx", "http_3xx"), False),
        (404, ("http_4xx",), True),
        (503, ("http_5xx",), True),
        (500, ("http_2xx", "http_3xx", "http_4xx"), False),
        (200, (), True),  # no codes: ALB's default 2xx/3xx
        (404, (), False),
    ],
)
def test_status_allowed(status: int, codes: tuple[str, ...], ok: bool) -> None:
    assert status_allowed(status, codes) is ok


def test_first_checks_spread_over_the_interval() -> None:
    keys = [server_key("sgp-a", f"127.0.{3 + i // 250}.{i % 250 + 1}", 80) for i in range(1000)]
    delays = [first_delay(k, 1.0) for k in keys]
    assert all(0 <= d < 1.0 for d in delays)
    buckets = Counter(int(d * 10) for d in delays)
    # Ten 100 ms buckets of about 100 servers each; none holds more than twice its share.
    assert len(buckets) == 10
    assert max(buckets.values()) < 200
    assert first_delay(keys[0], 1.0) == first_delay(keys[0], 1.0)  # deterministic


def test_thresholds_count_consecutive_results() -> None:
    changes: list[frozenset[str]] = []
    hc = HealthChecker(changes.append)
    hc.update(
        ir(group("g", check(unhealthy_threshold=3, healthy_threshold=2), [("127.0.2.1", 80)]))
    )
    key = server_key("g", "127.0.2.1", 80)
    target = hc._targets[key]

    results = [False, False, True, False, False]  # never three failures in a row
    assert not any(target.record(ok) for ok in results)
    assert target.healthy
    assert target.record(False) is True  # the third consecutive failure flips it
    assert not target.healthy
    assert target.record(True) is False
    assert target.record(False) is False
    assert target.record(True) is False
    assert target.record(True) is True  # two consecutive successes bring it back
    assert target.healthy


def test_update_statuses_without_running() -> None:
    changes: list[frozenset[str]] = []
    hc = HealthChecker(changes.append)
    off = check(enabled=False)
    hc.update(
        ir(
            group("on", check(), [("127.0.2.1", 80), ("127.0.2.2", 81)]),
            group("off", off, [("127.0.2.3", 80)]),
        )
    )
    # New servers start healthy; a group without checks reports Unused.
    assert hc.status("on", "127.0.2.1", 80) == "Available"
    assert hc.status("on", "127.0.2.2", 81) == "Available"
    assert hc.status("off", "127.0.2.3", 80) == "Unused"
    assert hc.status("on", "127.0.2.9", 80) == "Unused"
    assert hc.unhealthy() == frozenset()
    assert changes == []  # nothing changed yet: no callback


def test_connect_port_replaces_the_server_port() -> None:
    hc = HealthChecker(lambda _: None)
    hc.update(ir(group("g", check(connect_port=9999), [("127.0.2.1", 80)])))
    probe = hc._targets[server_key("g", "127.0.2.1", 80)].probe
    assert (probe.address, probe.port) == ("127.0.2.1", 9999)
    hc.update(ir(group("g", check(), [("127.0.2.1", 80)])))
    assert hc._targets[server_key("g", "127.0.2.1", 80)].probe.port == 80


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        pytest.param(
            {},
            b"HEAD / HTTP/1.0\r\nHost: 127.0.2.1\r\n",
            id="defaults: HEAD / with the address as Host",
        ),
        pytest.param(
            {"method": "GET", "path": "/hc?x=1", "host": "hc.test"},
            b"GET /hc?x=1 HTTP/1.0\r\nHost: hc.test\r\n",
            id="method, path and host",
        ),
        pytest.param({"method": "POST"}, b"Content-Length: 0\r\n", id="POST has an empty body"),
        pytest.param(
            {"path": "/a b\r\nX-Injected: 1", "host": "h.test\r\nX-Other: 2"},
            b"HEAD /a%20bX-Injected:%201 HTTP/1.0\r\nHost: h.testX-Other: 2\r\n",
            id="control characters never start a header line",
        ),
    ],
)
def test_request_bytes(kw: dict[str, str], expected: bytes) -> None:
    hc = HealthChecker(lambda _: None)
    hc.update(ir(group("g", check(**kw), [("127.0.2.1", 80)])))
    request = hc._targets[server_key("g", "127.0.2.1", 80)].request
    assert request is not None
    assert expected in request
    assert request.endswith(b"Connection: close\r\n\r\n")


@pytest.mark.parametrize("protocol", ["TCP", "gRPC"])
def test_connect_only_protocols_send_nothing(protocol: str) -> None:
    hc = HealthChecker(lambda _: None)
    hc.update(ir(group("g", check(protocol=protocol), [("127.0.2.1", 80)])))
    assert hc._targets[server_key("g", "127.0.2.1", 80)].request is None


def test_ipv6_host_header_is_bracketed() -> None:
    hc = HealthChecker(lambda _: None)
    hc.update(ir(group("g", check(), [("::1", 8080)])))
    request = hc._targets[server_key("g", "::1", 8080)].request
    assert request is not None
    assert b"Host: [::1]\r\n" in request
