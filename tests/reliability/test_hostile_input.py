"""Hostile input from clients, sent as exact bytes to a running ``albingress serve``.

Every malformed or ambiguous request is refused (400; 431 for an oversized head; 505 for an
unknown HTTP version; 405 for CONNECT), its connection closed, and nothing reaches a server: the
stub servers record every request head they get, and the count must not move. Each case is named
after the RFC 9112 (or RFC 9110) section or the CVE class it comes from.
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import Serve
from tests.reliability.conftest import Stubs
from tests.reliability.stubs import exchange, request

pytestmark = pytest.mark.e2e

H = b"Host: r.example.com\r\n"

REFUSED: dict[str, tuple[bytes, int]] = {
    # Request smuggling (CL.TE / TE.CL / TE.TE desync, CVE class CWE-444)
    "rfc9112-6.1 CL.TE content-length with transfer-encoding": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n",
        400,
    ),
    "rfc9112-6.1 TE.CL transfer-encoding then content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "rfc9112-6.1 TE.TE chunked then gzip": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    "rfc9112-6.1 TE.TE unknown coding only": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nabc",
        400,
    ),
    "rfc9112-6.1 TE.TE xchunked": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "rfc9112-6.1 TE.TE vertical tab before chunked": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "rfc9112-6.1 TE.TE chunked then identity on two lines": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity"
        b"\r\n\r\n0\r\n\r\n",
        400,
    ),
    "rfc9112-6.1 transfer-encoding in http/1.0": (
        b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "rfc9112-6.3 conflicting content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "rfc9112-6.3 duplicate equal content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "rfc9112-6.3 content-length list": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc",
        400,
    ),
    "rfc9112-6.3 signed content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc",
        400,
    ),
    "rfc9112-6.3 negative content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\nabc",
        400,
    ),
    "rfc9112-6.3 hex content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc",
        400,
    ),
    "rfc9112-6.3 content-length overflow": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\nabc",
        400,
    ),
    "rfc9112-7.1 invalid chunk size": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "rfc9112-7.1 chunk size overflow": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "rfc9112-7.1 negative chunk size": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    # Message syntax (RFC 9112 sections 2, 3, 5)
    "rfc9112-5.2 obs-fold": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    "rfc9112-5.2 obs-fold of host": (b"GET / HTTP/1.1\r\nHost:\r\n r.example.com\r\n\r\n", 400),
    "rfc9112-5.1 whitespace before colon": (b"GET / HTTP/1.1\r\nHost : r.example.com\r\n\r\n", 400),
    "rfc9112-5.1 space in a header name": (b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n", 400),
    "rfc9112-2.2 bare LF": (b"GET / HTTP/1.1\nHost: r.example.com\n\n", 400),
    "rfc9112-2.2 bare CR in a value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    "rfc9112-3.2 no host": (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    "rfc9112-3.2 two hosts": (b"GET / HTTP/1.1\r\n" + H + b"Host: other\r\n\r\n", 400),
    "rfc9112-3 extra token in the request line": (b"GET / HTTP/1.1 x\r\n" + H + b"\r\n", 400),
    "rfc9112-3 lowercase method": (b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "rfc9112-3 method with a control byte": (b"G\x01T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "rfc9112-3.2 relative target": (b"GET foo HTTP/1.1\r\n" + H + b"\r\n", 400),
    "rfc9112-3.2 space in the target": (b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "rfc9112-3.2 NUL in the target": (b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "rfc9112-3.2 DEL in the target": (b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n", 400),
    "rfc9112-2.3 HTTP/0.9 request": (b"GET /\r\n\r\n", 505),
    "rfc9112-2.6 HTTP/2.0 in the request line": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    "rfc9112-2.6 HTTP/1.2": (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400),
    "rfc9110-5.5 NUL in a header value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    "rfc9110-5.5 control byte in a header value": (
        b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n",
        400,
    ),
    "rfc9110-5.1 NUL in a header name": (b"GET / HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n", 400),
    "rfc9110-9.3.6 CONNECT (no open proxy)": (
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
        405,
    ),
    # Resource exhaustion (CWE-400)
    "rfc9112-3 oversized request line (431)": (
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n" + H + b"\r\n",
        431,
    ),
    "rfc6585-5 oversized header value (431)": (
        b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        431,
    ),
    "rfc6585-5 too many header fields (431)": (
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n",
        431,
    ),
    # Other protocols on the plain port
    "rfc9113-3.4 HTTP/2 prior-knowledge preface": (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        400,
    ),
    "TLS ClientHello on the plain port": (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),
        400,
    ),
}


@pytest.mark.parametrize(("data", "code"), REFUSED.values(), ids=REFUSED.keys())
def test_malformed_requests_are_refused_closed_and_never_forwarded(
    lb: Serve, stubs: Stubs, data: bytes, code: int
) -> None:
    before = stubs.received()
    reply = exchange(lb.port, data)
    assert reply.status == code, reply.raw[:300]
    assert reply.closed, "the connection must be closed after a refusal"
    assert stubs.received() == before, "a refused request reached a server"


NOT_FORWARDED: dict[str, bytes] = {
    "a Host matching no rule": request("evil.example.net") + b"\r\n",
    "rfc9112-3.2.2 absolute-form to a host matching no rule": (
        b"GET http://evil.example.net/x HTTP/1.1\r\n" + H + b"\r\n"
    ),
    "rfc9112-3.2.2 absolute-form to a loopback address": (
        b"GET http://127.0.7.1:8080/ HTTP/1.1\r\nHost: 127.0.7.1:8080\r\n\r\n"
    ),
    "a Host naming a server's own address": request("127.0.7.1:8080") + b"\r\n",
}


@pytest.mark.parametrize("data", NOT_FORWARDED.values(), ids=NOT_FORWARDED.keys())
def test_no_open_proxy_a_host_matching_no_rule_is_404(lb: Serve, stubs: Stubs, data: bytes) -> None:
    before = stubs.received()
    reply = exchange(lb.port, data, wait=1.0)
    assert reply.status == 404, reply.raw[:300]
    assert stubs.received() == before


def test_absolute_form_authority_replaces_the_host_header(lb: Serve, stubs: Stubs) -> None:
    """RFC 9112 3.2.2: the target's authority wins over Host, and the server sees that Host."""
    before = stubs.g1.count(b"/abs-form") + stubs.g2.count(b"/abs-form")
    reply = exchange(
        lb.port,
        b"GET http://r.example.com/abs-form HTTP/1.1\r\nHost: evil.example.net\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert reply.status == 200, reply.raw[:300]
    heads = [h for s in (stubs.g1, stubs.g2) for h in s.heads if b"/abs-form" in h]
    assert len(heads) == before + 1
    assert heads[-1].startswith(b"GET /abs-form HTTP/1.1\r\n")
    assert b"evil.example.net" not in heads[-1] and b"r.example.com" in heads[-1]


def test_a_smuggled_request_after_a_refusal_is_never_answered(lb: Serve, stubs: Stubs) -> None:
    """CL.TE: the bytes after the refused request are not read as a second request."""
    data = REFUSED["rfc9112-6.1 CL.TE content-length with transfer-encoding"][0]
    reply = exchange(lb.port, data)
    assert reply.raw.count(b"HTTP/1.1 ") == 1
    assert stubs.g1.count(b"/smuggled") + stubs.g2.count(b"/smuggled") == 0


def test_a_bad_request_pipelined_behind_good_ones_is_answered_after_them(
    lb: Serve, stubs: Stubs
) -> None:
    good = request("r.example.com", "/pipe") + b"\r\n"
    reply = exchange(lb.port, good * 3 + b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00\r\n\r\n" + good)
    statuses = [int(p[:3]) for p in reply.raw.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [200, 200, 200, 400] and reply.closed


def test_valid_edge_cases_are_served(lb: Serve) -> None:
    """What must not be refused: chunked with extensions and trailers, TE in mixed case, a
    header at just under the limit, HTTP/1.0 without Host."""
    cases = [
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 60_000 + b"\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ]
    for i, data in enumerate(cases):
        reply = exchange(lb.port, data)
        assert reply.status in (200, 404), (i, reply.raw[:300])
        assert reply.closed
    assert exchange(lb.port, cases[0]).status == 200
    assert exchange(lb.port, cases[1]).status == 200


def test_extra_spaces_in_the_request_line_are_normalised_before_forwarding(
    lb: Serve, stubs: Stubs
) -> None:
    """RFC 9112 section 3 lets a recipient split the request line on whitespace; what matters for
    smuggling is that the server gets one unambiguous line: the proxy rewrites it with single SPs."""
    reply = exchange(lb.port, b"GET  /two-spaces  HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert reply.status == 200, reply.raw[:300]
    heads = [h for s in (stubs.g1, stubs.g2) for h in s.heads if b"/two-spaces" in h]
    assert heads and heads[-1].startswith(b"GET /two-spaces HTTP/1.1\r\n")


H2C_UPGRADES = {
    "h2c": b"h2c",
    "h2c in capitals": b"H2C",
    "h2c after websocket in a list": b"websocket, h2c",
    "h2 (the TLS token)": b"h2",
}


@pytest.mark.parametrize("token", H2C_UPGRADES.values(), ids=H2C_UPGRADES.keys())
def test_h2c_smuggling_an_h2c_upgrade_is_never_tunnelled(
    lb: Serve, stubs: Stubs, token: bytes
) -> None:
    """h2c smuggling (CWE-444 class; Bishop Fox's 2020 "h2c Smuggling" write-up): a server that
    accepts ``Upgrade: h2c`` through a proxy gets an HTTP/2 connection whose requests no rule
    sees. The request is answered over HTTP/1.1, the server never sees Upgrade, the connection
    closes; the HTTP/2 preface sent after it goes nowhere."""
    before = len(stubs.bad.heads)
    reply = exchange(
        lb.port,
        b"GET /switch HTTP/1.1\r\nHost: bad.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: " + token + b"\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    )
    assert reply.status == 200 and reply.closed, reply.raw[:300]
    assert b"tunnelled" not in reply.raw
    heads = stubs.bad.heads[before:]
    assert len(heads) == 1
    assert b"upgrade" not in heads[0].lower() and b"http2-settings" not in heads[0].lower()


def test_a_websocket_upgrade_is_still_tunnelled(lb: Serve, stubs: Stubs) -> None:
    reply = exchange(
        lb.port,
        b"GET /switch HTTP/1.1\r\nHost: bad.example.com\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nhello",
        wait=1.0,
    )
    assert reply.status == 101 and b"tunnelled" in reply.raw, reply.raw[:300]
