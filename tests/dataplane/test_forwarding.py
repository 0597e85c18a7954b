"""Forwarding on fake transports: headers, framing, pipelining, streaming, back-pressure."""

from __future__ import annotations

import pytest

from albingress.dataplane.settings import ProxySettings
from albingress.diagnostics import ConfigError

from .harness import Harness, aio, feed, make_ir, response, split_head

SERVERS = [("127.0.1.1", 8001), ("127.0.1.2", 8002)]
GET = b"GET /a?x=1 HTTP/1.1\r\nHost: demo.example\r\nAccept: */*\r\n\r\n"
BYTEWISE = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])


@BYTEWISE
@aio
async def test_get_is_forwarded_with_forwarded_headers_and_without_hop_by_hop(bytewise: bool):
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    req = (
        b"GET /a?x=1 HTTP/1.1\r\nHost: demo.example\r\nConnection: keep-alive, X-Secret\r\n"
        b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: b\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n"
    )
    feed(client, req, bytewise=bytewise)
    await h.settle()
    up, ut = h.upstream()
    lines, body = split_head(ut.take())
    assert lines[0] == b"GET /a?x=1 HTTP/1.1"
    names = [ln.split(b":")[0].lower() for ln in lines[1:]]
    for hop in (b"connection", b"x-secret", b"keep-alive", b"te", b"proxy-authorization"):
        assert hop not in names
    assert b"X-Forwarded-For: 10.0.0.1, 127.0.0.9" in lines
    assert b"X-Forwarded-Proto: http" in lines
    assert b"X-Forwarded-Host: demo.example" in lines
    assert b"X-Forwarded-Port: 80" in lines
    assert b"Host: demo.example" in lines and b"Accept: */*" in lines
    assert body == b""
    feed(up, response(b"hello", headers="Connection: keep-alive\r\nX-B: 1\r\n"), bytewise=bytewise)
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection" not in out and b"X-B: 1\r\n" in out and out.endswith(b"\r\n\r\nhello")
    assert not ct.closing
    assert h.ctx.pool.idle[up.key] == [up]  # back in the pool


@aio
async def test_keep_alive_reuses_the_upstream_connection():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    for i in range(3):
        feed(client, GET)
        await h.settle()
        up, ut = h.upstream()
        assert ut.take().startswith(b"GET /a?x=1")
        feed(up, response(b"r%d" % i))
        assert ct.take().endswith(b"r%d" % i)
    assert len(h.upstreams) == 1


@BYTEWISE
@aio
async def test_pipelined_requests_are_answered_in_order(bytewise: bool):
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    reqs = (
        b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3))
        + b"POST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody"
    )
    feed(client, reqs, bytewise=bytewise)
    await h.settle()
    up, ut = h.upstream()
    for i in range(4):
        sent = ut.take()
        assert sent.startswith(b"GET /%d " % i if i < 3 else b"POST /3 "), sent
        if i < 3:
            assert not ct.reading or bytewise  # reading pauses while requests wait
        feed(up, response(b"resp%d" % i), bytewise=bytewise)
        await h.settle()
        assert ct.take().endswith(b"resp%d" % i)
    assert sent.endswith(b"\r\n\r\nbody")
    assert ct.reading and len(h.upstreams) == 1


@BYTEWISE
@aio
async def test_chunked_request_body_is_rechunked_upstream(bytewise: bool):
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    req = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    feed(client, req, bytewise=bytewise)
    await h.settle()
    up, ut = h.upstream()
    lines, body = split_head(ut.take())
    assert b"Transfer-Encoding: chunked" in lines
    decoded, rest = b"", body
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            assert rest == b"\r\n"
            break
        decoded += rest[:n]
        rest = rest[n + 2 :]
    assert decoded == b"hello world"
    feed(up, response(b"done"))
    assert ct.take().endswith(b"done")


@pytest.mark.parametrize(
    ("upstream_framing", "client_version", "expect_chunked", "expect_close"),
    [
        ("chunked", "1.1", True, False),
        ("until-close", "1.1", True, False),
        ("chunked", "1.0", False, True),
    ],
)
@aio
async def test_response_framing_without_length(
    upstream_framing: str, client_version: str, expect_chunked: bool, expect_close: bool
):
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    ka = b"Connection: keep-alive\r\n" if client_version == "1.0" else b""
    feed(client, b"GET / HTTP/%s\r\nHost: a\r\n%s\r\n" % (client_version.encode(), ka))
    await h.settle()
    up, ut = h.upstream()
    ut.take()
    if upstream_framing == "chunked":
        feed(up, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        feed(up, b"2\r\nde\r\n0\r\n\r\n")
    else:
        feed(up, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
        feed(up, b"de")
        up.connection_lost(None)
    out = ct.take()
    head, _, body = out.partition(b"\r\n\r\n")
    assert (b"Transfer-Encoding: chunked" in head) == expect_chunked
    assert (b"Connection: close" in head) == expect_close
    if expect_chunked:
        assert body == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    else:
        assert body == b"abcde"
    assert ct.closing == expect_close


@BYTEWISE
@aio
async def test_expect_100_continue_passes_the_servers_interim_answer(bytewise: bool):
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    feed(
        client,
        b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    await h.settle()
    up, ut = h.upstream()
    assert b"Expect: 100-continue" in ut.take()
    feed(up, b"HTTP/1.1 100 Continue\r\n\r\n", bytewise=bytewise)
    assert ct.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    feed(client, b"hello", bytewise=bytewise)
    assert ut.take() == b"hello"
    feed(up, response(b"stored", "201 Created"), bytewise=bytewise)
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 201 Created") and out.endswith(b"stored")
    assert not ct.closing


@BYTEWISE
@aio
async def test_head_and_204_and_304_have_no_body_and_keep_the_connection(bytewise: bool):
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    cases = [
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ]
    for method, resp in cases:
        feed(client, method + b" / HTTP/1.1\r\nHost: a\r\n\r\n", bytewise=bytewise)
        await h.settle()
        up, ut = h.upstream()
        ut.take()
        feed(up, resp, bytewise=bytewise)
        out = ct.take()
        assert out.endswith(b"\r\n\r\n") and b"Transfer-Encoding" not in out, out
        if method == b"HEAD" and b"1000" in resp:
            assert b"Content-Length: 1000" in out
    assert len(h.upstreams) == 1 and not ct.closing


@aio
async def test_large_bodies_stream_with_back_pressure_both_ways():
    settings = ProxySettings(write_high_water=64 * 1024, write_low_water=16 * 1024)
    h = Harness(make_ir(SERVERS[:1]), settings)
    client, ct = h.client()
    total = 4 * 1024 * 1024
    feed(client, b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % total)
    await h.settle()
    up, ut = h.upstream()
    ut.high = 64 * 1024  # the fake server reads only when the test says so
    sent = len(split_head(ut.take())[1])
    piece = b"x" * 16384
    fed = 0
    while fed < total:
        if not ct.reading:  # the server's buffer is full: the proxy stopped reading
            assert len(ut.buffer) > ut.high
            sent += len(ut.take())
            assert ct.reading
            continue
        feed(client, piece)
        fed += len(piece)
    sent += len(ut.take())
    assert sent == total and ct.read_pauses > 0
    # and the other way: a slow client pauses reading from the server
    feed(up, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
    got, pushed = 0, 0
    while pushed < total:
        if not ut.reading:
            got += len(ct.take())
            assert ut.reading
            continue
        feed(up, piece)
        pushed += len(piece)
    got += len(ct.take())
    assert got > total and ut.read_pauses > 0  # the head plus every body byte
    assert h.ctx.pool.idle[up.key] == [up]


@aio
async def test_slow_client_on_a_chunked_response_pauses_the_server():
    h = Harness(make_ir(SERVERS[:1]), ProxySettings(write_high_water=8192, write_low_water=1024))
    client, ct = h.client()
    feed(client, GET)
    await h.settle()
    up, ut = h.upstream()
    feed(up, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    ct.high = 8192
    for _ in range(3):
        feed(up, b"1000\r\n" + b"y" * 4096 + b"\r\n")
    assert not ut.reading
    ct.take()
    assert ut.reading


@aio
async def test_http10_client_without_keep_alive_gets_connection_close():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    feed(client, b"GET / HTTP/1.0\r\n\r\n")
    await h.settle()
    up, ut = h.upstream()
    lines, _ = split_head(ut.take())
    assert lines[0] == b"GET / HTTP/1.1" and b"Host: 127.0.1.1:8001" in lines
    feed(up, response(b"old"))
    out = ct.take()
    assert b"Connection: close" in out and out.endswith(b"old") and ct.closing


@aio
async def test_a_100_continue_and_the_final_answer_in_one_read():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    feed(client, b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
    await h.settle()
    up, _ = h.upstream()
    feed(up, b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"done"))
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert out.endswith(b"done") and h.ctx.pool.idle[up.key] == [up]


@aio
async def test_a_response_over_several_reads_goes_through_the_full_parser():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    feed(client, GET)
    await h.settle()
    up, _ = h.upstream()
    feed(up, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: keep-alive\r\n\r\n01234")
    feed(up, b"56789")
    out = ct.take()
    assert out.endswith(b"\r\n\r\n0123456789") and b"Connection" not in out
    feed(client, GET)  # and the next response on that connection is relayed whole
    await h.settle()
    feed(up, response(b"next", headers="Connection: keep-alive\r\n"))
    assert ct.take().endswith(b"\r\n\r\nnext")


def test_settings_refuse_unsafe_values():
    for bad in ({"connect_timeout": 0}, {"max_header_bytes": 10}, {"write_low_water": 10**9}):
        with pytest.raises(ConfigError):
            ProxySettings(**bad)
    assert ProxySettings().sweep_interval == 1.0
    assert ProxySettings(idle_timeout=0.2).sweep_interval == 0.05


@aio
async def test_fast_lane_forwards_a_simple_head_as_received_plus_forwarded_headers():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    head = b"GET /p?q=1 HTTP/1.1\r\nHost: demo.example\r\nAccept: */*\r\nUser-Agent: t/1\r\n"
    feed(client, head + b"\r\n")
    await h.settle()
    up, ut = h.upstream()
    assert ut.take() == head + (
        b"X-Forwarded-Host: demo.example\r\nX-Forwarded-For: 127.0.0.9\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\n\r\n"
    )
    feed(up, response(b"fast"))
    assert ct.take().endswith(b"fast")
    # then a request the fast lane leaves alone, on the same connection
    feed(
        client, b"GET /c HTTP/1.1\r\nHost: demo.example\r\nCookie: a=1\r\nConnection: close\r\n\r\n"
    )
    await h.settle()
    lines, _ = split_head(ut.take())
    assert lines[0] == b"GET /c HTTP/1.1" and b"Cookie: a=1" in lines
    assert not any(ln.lower().startswith(b"connection") for ln in lines)
    feed(up, response(b"slow"))
    out = ct.take()
    assert out.endswith(b"slow") and b"Connection: close" in out and ct.closing


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.0\r\nHost: a\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: x\r\n",
    ],
    ids=["http/1.0", "absolute-form", "x-forwarded-for", "te", "proxy-header"],
)
@aio
async def test_requests_the_fast_lane_must_not_take_are_rewritten(head: bytes):
    h = Harness(make_ir(SERVERS[:1]))
    client, _ = h.client()
    feed(client, head + b"\r\n")
    await h.settle()
    _, ut = h.upstream()
    sent = ut.take()
    assert sent.startswith(b"GET / HTTP/1.1\r\n")
    assert sent.lower().count(b"x-forwarded-for") == 1
    assert b"TE:" not in sent and b"Proxy-Authorization" not in sent
