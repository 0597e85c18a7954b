"""Bad input from clients and servers: 400/431/505 and close, 502, nothing forwarded.

Request-smuggling cases are named after the section of RFC 9112 they come from.
"""

from __future__ import annotations

import pytest

from albingress.dataplane.settings import ProxySettings

from .harness import Harness, aio, feed, make_ir, response

SERVERS = [("127.0.1.1", 8001)]

SMUGGLING = {
    "rfc9112-6.1 content-length with transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
    ),
    "rfc9112-6.1 transfer-encoding then content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "rfc9112-6.1 transfer-encoding in http/1.0": (
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "rfc9112-6.1 chunked not last": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    "rfc9112-6.1 unknown transfer coding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        400,
    ),
    "rfc9112-6.3 duplicate content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "rfc9112-6.3 same content-length twice": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "rfc9112-6.3 content-length list": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
        400,
    ),
    "rfc9112-6.3 signed content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        400,
    ),
    "rfc9112-5.2 obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
    "rfc9112-5.1 whitespace before colon": (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    "rfc9112-2.2 bare lf": (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    "rfc9112-3.2 no host": (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    "rfc9112-3.2 two hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "rfc9112-2.6 http/2.0 request line": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "rfc9110-9.3.6 connect": (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
    "nul in a header value": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize(("data", "code"), SMUGGLING.values(), ids=SMUGGLING.keys())
@aio
async def test_rejected_requests_are_answered_and_never_forwarded(
    data: bytes, code: int, bytewise: bool
):
    h = Harness(make_ir(SERVERS))
    client, ct = h.client()
    feed(client, data, bytewise=bytewise)
    await h.settle()
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 %d " % code), out
    assert b"Connection: close" in out and ct.closing
    assert h.connects == []  # nothing reached a server


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize(("data", "code"), SMUGGLING.values(), ids=SMUGGLING.keys())
@aio
async def test_rejected_requests_are_counted_and_logged_once(
    data: bytes, code: int, bytewise: bool, tmp_path
):
    import json

    h = Harness(make_ir(SERVERS))
    log = h.log_to(str(tmp_path / "a.log"), "r")
    client, ct = h.client()
    feed(client, data, bytewise=bytewise)
    await h.settle()
    assert ct.take().startswith(b"HTTP/1.1 %d " % code)
    counted = {status: sum(v[:15]) for _, _, _, status, v in h.ctx.metrics.snapshot()["series"]}
    assert counted == {code: 1}
    log.close()
    (line,) = [json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines()]
    assert line["status"] == code and line["upstream_status"] is None and line["server"] == ""
    assert line["bytes_in"] in (0, len(data)) and line["bytes_out"] > 0  # 0: refused whole
    assert line["request_id"] == "r1"


@aio
async def test_invalid_chunk_size_after_the_head_aborts_the_upstream_request():
    """RFC 9112 7.1: a bad chunk size; the part already sent is cut off, the client gets 400."""
    h = Harness(make_ir(SERVERS))
    client, ct = h.client()
    feed(client, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await h.settle()
    _up, ut = h.upstream()
    ut.take()
    feed(client, b"0x5\r\nhello\r\n0\r\n\r\n")
    assert ut.aborted
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 400 ") and ct.closing


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
@aio
async def test_oversized_headers_get_431(bytewise: bool):
    h = Harness(make_ir(SERVERS), ProxySettings(max_header_bytes=2048))
    client, ct = h.client()
    feed(
        client,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 4096 + b"\r\n\r\n",
        bytewise=bytewise,
    )
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 431 ") and ct.closing and h.connects == []


@aio
async def test_a_header_that_never_ends_is_cut_off_at_the_limit():
    h = Harness(make_ir(SERVERS), ProxySettings(max_header_bytes=2048))
    client, ct = h.client()
    feed(client, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    for _ in range(10):
        if ct.closing:
            break
        feed(client, b"v" * 1024)
    assert ct.take().startswith(b"HTTP/1.1 431 ") and ct.closing


@aio
async def test_a_bad_request_behind_a_good_one_is_answered_after_it():
    h = Harness(make_ir(SERVERS))
    client, ct = h.client()
    feed(client, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost : a\r\n\r\n")
    await h.settle()
    up, ut = h.upstream()
    assert ut.take().startswith(b"GET /ok ")
    assert ct.take() == b"" and not ct.closing
    feed(up, response(b"first"))
    out = ct.take()
    first, _, second = out.partition(b"first")
    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 400 ")
    assert ct.closing


BAD_RESPONSES = {
    "not http": b"SSH-2.0-OpenSSH\r\n",
    "bad status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "two content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "too many headers": b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 300 + b"Content-Length: 0\r\n\r\n",
    "unasked 101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("data", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
@aio
async def test_a_malformed_response_gives_502_and_drops_the_server_connection(
    data: bytes, bytewise: bool
):
    h = Harness(make_ir(SERVERS))
    client, ct = h.client()
    feed(client, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await h.settle()
    up, ut = h.upstream()
    feed(up, data, bytewise=bytewise)
    out = ct.take()
    if out.startswith(b"HTTP/1.1 200 "):  # the head was fine, the body was not: cut off
        assert ct.aborted
    else:
        assert out.startswith(b"HTTP/1.1 502 "), out
        assert b"malformed" in out or b"switched protocols" in out
    assert ut.closing and h.ctx.pool.idle.get(up.key, []) == []
    # the worker keeps serving
    client2, ct2 = h.client()
    feed(client2, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await h.settle()
    up2, _ = h.upstream()
    feed(up2, response(b"fine"))
    assert ct2.take().endswith(b"fine")


@aio
async def test_too_many_connections_are_refused_clearly():
    h = Harness(make_ir(SERVERS), ProxySettings(max_connections=2))
    conns = [h.client() for _ in range(3)]
    assert not conns[0][1].closing and not conns[1][1].closing
    out = conns[2][1].take()
    assert out.startswith(b"HTTP/1.1 503 ") and b"too many connections" in out
    assert conns[2][1].closing


@aio
async def test_too_many_header_fields_get_431():
    h = Harness(make_ir(SERVERS), ProxySettings(max_headers=20))
    client, ct = h.client()
    feed(client, b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 30 + b"\r\n")
    assert ct.take().startswith(b"HTTP/1.1 431 ") and ct.closing and h.connects == []
