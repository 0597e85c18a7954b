"""Non-forward actions: redirect, fixed response, header edits, rewrite, traffic limits."""

from __future__ import annotations

import pytest

from albingress.dataplane.actions import (
    TrafficLimiter,
    apply_header_actions,
    fixed_response,
    redirect_location,
    rewrite,
)
from albingress.ir import (
    FixedResponseAction,
    InsertHeaderAction,
    RedirectAction,
    RemoveHeaderAction,
    RewriteAction,
    TrafficLimitAction,
)

from .balancing import FakeClock

# --------------------------------------------------------------------------- redirect

REDIRECT_CASES = [
    # (id, action, (scheme, host, port, path, query), location)
    (
        "to https drops the default port",
        RedirectAction(protocol="https", port="443"),
        ("http", "shop.example.com", 80, "/cart", "id=1"),
        "https://shop.example.com/cart?id=1",
    ),
    (
        "all defaults keep the request",
        RedirectAction(),
        ("http", "a.com", 8080, "/x", ""),
        "http://a.com:8080/x",
    ),
    (
        "host with port in the Host header",
        RedirectAction(protocol="HTTPS", port="8443"),
        ("http", "a.com:80", 80, "/x", ""),
        "https://a.com:8443/x",
    ),
    (
        "new host and path with variables",
        RedirectAction(host="b.com", path="/new${path}", query="from=${host}&${query}"),
        ("https", "a.com", 443, "/old", "k=v"),
        "https://b.com/new/old?from=a.com&k=v",
    ),
    (
        "http to https on the default port goes to 443",
        RedirectAction(protocol="HTTPS"),
        ("http", "a.com", 80, "/x", "q=1"),
        "https://a.com/x?q=1",
    ),
    (
        "http to https on another port keeps it",
        RedirectAction(protocol="HTTPS"),
        ("http", "a.com:8080", 8080, "/x", ""),
        "https://a.com:8080/x",
    ),
    (
        "empty query is left out",
        RedirectAction(query="${query}"),
        ("http", "a.com", 80, "/", ""),
        "http://a.com/",
    ),
    (
        "unknown variables stay literal",
        RedirectAction(path="/${nope}"),
        ("http", "a.com", 80, "/", ""),
        "http://a.com/${nope}",
    ),
    (
        "path without slash gets one",
        RedirectAction(path="landing"),
        ("http", "a.com", 80, "/", ""),
        "http://a.com/landing",
    ),
]


@pytest.mark.parametrize(
    ("action", "req", "location"),
    [c[1:] for c in REDIRECT_CASES],
    ids=[c[0] for c in REDIRECT_CASES],
)
def test_redirect_location(
    action: RedirectAction, req: tuple[str, str, int, str, str], location: str
) -> None:
    assert redirect_location(action, *req) == location


# --------------------------------------------------------------------------- fixed response


def test_fixed_response() -> None:
    status, headers, body = fixed_response(
        FixedResponseAction(content="héllo", content_type="text/plain", http_code=503)
    )
    assert status == 503
    assert body == "héllo".encode()
    assert dict(headers) == {
        b"content-type": b"text/plain; charset=utf-8",
        b"content-length": str(len(body)).encode(),
    }


def test_fixed_response_keeps_an_explicit_type() -> None:
    _, headers, body = fixed_response(FixedResponseAction(content="", content_type="image/png"))
    assert dict(headers)[b"content-type"] == b"image/png"
    assert body == b""


# --------------------------------------------------------------------------- headers

BASE = [(b"Host", b"a.com"), (b"X-Env", b"prod"), (b"x-env", b"dup"), (b"Accept", b"*/*")]

HEADER_CASES = [
    (
        "insert user defined",
        [InsertHeaderAction("X-New", "1")],
        [*BASE, (b"X-New", b"1")],
    ),
    (
        "insert without cover keeps the existing header",
        [InsertHeaderAction("x-ENV", "test")],
        BASE,
    ),
    (
        "insert with cover replaces every copy",
        [InsertHeaderAction("X-Env", "test", cover=True)],
        [(b"Host", b"a.com"), (b"Accept", b"*/*"), (b"X-Env", b"test")],
    ),
    (
        "reference header copies a value",
        [InsertHeaderAction("X-Orig-Host", "host", value_type="ReferenceHeader")],
        [*BASE, (b"X-Orig-Host", b"a.com")],
    ),
    (
        "reference to a missing header inserts nothing",
        [InsertHeaderAction("X-Y", "x-missing", value_type="ReferenceHeader")],
        BASE,
    ),
    (
        "system defined client ip and port",
        [
            InsertHeaderAction("X-Real-IP", "ClientSrcIp", value_type="SystemDefined"),
            InsertHeaderAction("X-Port", "ClientSrcPort", value_type="SystemDefined"),
            InsertHeaderAction("X-Proto", "Protocol", value_type="SystemDefined"),
            InsertHeaderAction("X-Lb", "SLBId", value_type="SystemDefined"),
            InsertHeaderAction("X-Lb-Port", "SLBPort", value_type="SystemDefined"),
        ],
        [
            *BASE,
            (b"X-Real-IP", b"127.0.0.7"),
            (b"X-Port", b"50000"),
            (b"X-Proto", b"https"),
            (b"X-Lb", b"lb-1"),
            (b"X-Lb-Port", b"443"),
        ],
    ),
    (
        "remove every copy, any case",
        [RemoveHeaderAction("X-ENV")],
        [(b"Host", b"a.com"), (b"Accept", b"*/*")],
    ),
    (
        "order matters: remove then insert",
        [RemoveHeaderAction("accept"), InsertHeaderAction("Accept", "text/html")],
        [(b"Host", b"a.com"), (b"X-Env", b"prod"), (b"x-env", b"dup"), (b"Accept", b"text/html")],
    ),
    (
        "other actions are skipped",
        [RewriteAction(path="/x"), TrafficLimitAction(qps=1)],
        BASE,
    ),
]


@pytest.mark.parametrize(
    ("actions", "expected"),
    [c[1:] for c in HEADER_CASES],
    ids=[c[0] for c in HEADER_CASES],
)
def test_header_actions(actions: list[object], expected: list[tuple[bytes, bytes]]) -> None:
    before = list(BASE)
    got = apply_header_actions(
        actions,  # type: ignore[arg-type]
        before,
        "127.0.0.7",
        client_port=50000,
        lb_id="lb-1",
        lb_port=443,
        protocol="HTTPS",
    )
    assert got == expected
    assert before == BASE  # the input is not modified


# --------------------------------------------------------------------------- rewrite

REWRITE_CASES = [
    ("defaults change nothing", RewriteAction(), ("a.com", "/p", "q=1"), ("a.com", "/p", "q=1")),
    (
        "new path keeps query",
        RewriteAction(path="/v2${path}"),
        ("a.com", "/p", "q=1"),
        ("a.com", "/v2/p", "q=1"),
    ),
    (
        "new host and query",
        RewriteAction(host="internal", query="src=${host}"),
        ("a.com", "/p", ""),
        ("internal", "/p", "src=a.com"),
    ),
    ("empty query", RewriteAction(query=""), ("a.com", "/p", "q=1"), ("a.com", "/p", "")),
]


@pytest.mark.parametrize(
    ("action", "req", "expected"),
    [c[1:] for c in REWRITE_CASES],
    ids=[c[0] for c in REWRITE_CASES],
)
def test_rewrite(
    action: RewriteAction, req: tuple[str, str, str], expected: tuple[str, str, str]
) -> None:
    assert rewrite(action, *req) == expected


# --------------------------------------------------------------------------- traffic limit


def allowed(lim: TrafficLimiter, action: TrafficLimitAction, n: int, ip: str = "127.0.0.1") -> int:
    return sum(lim.allow("r", action, ip) for _ in range(n))


def test_rule_qps_is_a_token_bucket() -> None:
    clock = FakeClock()
    lim = TrafficLimiter(clock)
    action = TrafficLimitAction(qps=10)
    assert allowed(lim, action, 15) == 10  # one second's burst
    clock.now += 0.5
    assert allowed(lim, action, 15) == 5  # half a second refills half
    clock.now += 10
    assert allowed(lim, action, 15) == 10  # never more than one second stored


def test_per_ip_limit_and_total_limit() -> None:
    clock = FakeClock()
    lim = TrafficLimiter(clock)
    action = TrafficLimitAction(qps=10, qps_per_ip=3)
    assert allowed(lim, action, 5, "127.0.1.1") == 3
    assert allowed(lim, action, 5, "127.0.1.2") == 3
    assert allowed(lim, action, 5, "127.0.1.3") == 3
    assert allowed(lim, action, 5, "127.0.1.4") == 1  # the rule's 10 are spent
    clock.now += 1
    assert allowed(lim, action, 5, "127.0.1.1") == 3


def test_rules_have_separate_buckets_and_share_divides() -> None:
    clock = FakeClock()
    lim = TrafficLimiter(clock, share=4)
    action = TrafficLimitAction(qps=20)
    assert sum(lim.allow("a", action, "127.0.0.1") for _ in range(10)) == 5
    assert sum(lim.allow("b", action, "127.0.0.1") for _ in range(10)) == 5


def test_tiny_share_still_lets_requests_through() -> None:
    clock = FakeClock()
    lim = TrafficLimiter(clock, share=4)
    action = TrafficLimitAction(qps=1)  # 0.25 a second in this worker
    assert allowed(lim, action, 3) == 1
    clock.now += 2
    assert allowed(lim, action, 3) == 0
    clock.now += 2
    assert allowed(lim, action, 3) == 1


def test_idle_ip_buckets_are_forgotten() -> None:
    clock = FakeClock()
    lim = TrafficLimiter(clock, max_ips=10)
    action = TrafficLimitAction(qps=1000, qps_per_ip=2)
    for i in range(10):
        lim.allow("r", action, f"127.0.2.{i}")
    clock.now += 5
    for i in range(50):
        assert lim.allow("r", action, f"127.0.3.{i}")
        clock.now += 0.01
    assert lim.tracked_ips <= 10
    lim.forget(frozenset())
    assert lim.tracked_ips == 0
