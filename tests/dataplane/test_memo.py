"""The fast lane's memos: a repeated request (client side) and a repeated response head (server
side) skip the checks only when the bytes are the same; anything else takes the full path."""

from __future__ import annotations

from dataclasses import replace

from albingress.dataplane.settings import ProxySettings

from .harness import Harness, aio, feed, make_ir, response

SERVERS = [("127.0.1.1", 8001), ("127.0.1.2", 8002)]
GET = b"GET /a?x=1 HTTP/1.1\r\nHost: demo.example\r\nAccept: */*\r\n\r\n"
FORWARDED = (
    b"X-Forwarded-Host: demo.example\r\nX-Forwarded-For: 127.0.0.9\r\n"
    b"X-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\n\r\n"
)
NGINX_LIKE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\n"
)


async def _round(h: Harness, client, ct, request: bytes, answer: bytes) -> tuple[bytes, bytes]:
    """One request and its answer: (what the server got, what the client got)."""
    feed(client, request)
    await h.settle()
    up, ut = h.upstream()
    sent = ut.take()
    feed(up, answer)
    return sent, ct.take()


@aio
async def test_a_repeated_request_is_sent_as_the_first_one_was():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    for i in range(3):
        sent, got = await _round(h, client, ct, GET, response(b"r%d" % i))
        assert sent == GET[:-2] + FORWARDED
        assert got.endswith(b"r%d" % i)
    assert client.memo is not None and client.memo.data == GET
    assert len(h.upstreams) == 1 and h.ctx.requests == 3


@aio
async def test_the_request_memo_follows_a_new_configuration():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    await _round(h, client, ct, GET, response(b"one"))
    h.ctx.apply(make_ir(SERVERS[1:]), 2)  # the same rule now forwards to another server
    sent, got = await _round(h, client, ct, GET, response(b"two"))
    assert sent == GET[:-2] + FORWARDED and got.endswith(b"two")
    assert [key.rsplit("|", 1)[-1] for key, _, _ in h.upstreams] == [
        "127.0.1.1:8001",
        "127.0.1.2:8002",
    ]
    h.ctx.apply(make_ir(SERVERS[1:], path="/other"), 3)  # and then no rule matches
    feed(client, GET)
    await h.settle()
    assert ct.take().startswith(b"HTTP/1.1 404 ")


@aio
async def test_a_different_request_on_the_same_connection_is_checked_again():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    await _round(h, client, ct, GET, response(b"one"))
    other = GET.replace(b"/a?x=1", b"/b")
    sent, _ = await _round(h, client, ct, other, response(b"two"))
    assert sent.startswith(b"GET /b HTTP/1.1\r\n")
    # the same length as the remembered request but malformed: refused, not relayed
    bad = GET.replace(b"Accept: */*", b"Accept */*:")
    assert len(bad) == len(GET)
    feed(client, bad)
    await h.settle()
    assert ct.take().startswith(b"HTTP/1.1 400 ") and ct.closing


@aio
async def test_a_request_that_needs_rewriting_after_a_remembered_one_is_rewritten():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    await _round(h, client, ct, GET, response(b"one"))
    with_xff = GET[:-2] + b"X-Forwarded-For: 10.0.0.1\r\n\r\n"
    sent, got = await _round(h, client, ct, with_xff, response(b"two"))
    assert b"X-Forwarded-For: 10.0.0.1, 127.0.0.9\r\n" in sent
    assert sent.count(b"X-Forwarded-For") == 1 and got.endswith(b"two")


@aio
async def test_a_repeated_response_head_is_relayed_without_its_connection_line():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    expected = NGINX_LIKE.replace(b"Connection: keep-alive\r\n", b"")
    for body in (b"ab", b"cd", b"ef"):
        _, got = await _round(h, client, ct, GET, NGINX_LIKE + body)
        assert got == expected + body
    up, _ = h.upstream()
    assert up.memo_head == NGINX_LIKE and h.ctx.pool.idle[up.key] == [up]


@aio
async def test_a_repeated_head_with_other_framing_takes_the_full_parser():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    await _round(h, client, ct, GET, NGINX_LIKE + b"ab")
    # the same head, the body in two reads: not the remembered size, parsed
    feed(client, GET)
    await h.settle()
    up, _ = h.upstream()
    feed(up, NGINX_LIKE + b"c")
    assert up.exchange is not None  # still waiting for the rest
    feed(up, b"d")
    assert ct.take().endswith(b"\r\n\r\ncd") and up.exchange is None
    # the same head followed by bytes nobody asked for: the connection is not reused
    feed(client, GET)
    await h.settle()
    up, _ = h.upstream()
    feed(up, NGINX_LIKE + b"ab" + b"XY")
    assert ct.take().endswith(b"ab")
    assert up not in h.ctx.pool.idle.get(up.key, [])


@aio
async def test_a_repeated_head_is_not_taken_for_a_head_request():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    await _round(h, client, ct, GET, NGINX_LIKE + b"ab")
    head = GET.replace(b"GET ", b"HEAD ")
    feed(client, head)
    await h.settle()
    up, _ = h.upstream()
    feed(up, NGINX_LIKE)
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n")
    assert b"Content-Length: 2\r\n" in out and b"Connection" not in out


@aio
async def test_memos_respect_a_header_limit_lowered_by_no_one():
    # the memo is per connection and per worker settings: a request over the limit never
    # becomes a memo, so the same bytes again are refused again
    h = Harness(make_ir(SERVERS[:1]), ProxySettings(max_headers=2))
    many = GET[:-2] + b"A: 1\r\nB: 2\r\n\r\n"
    for _ in range(2):
        client, ct = h.client()
        feed(client, many)
        await h.settle()
        assert ct.take().startswith(b"HTTP/1.1 431 ") and client.memo is None


@aio
async def test_a_repeated_head_request_keeps_its_bodyless_framing():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    head = GET.replace(b"GET ", b"HEAD ")
    for _ in range(2):
        sent, got = await _round(h, client, ct, head, NGINX_LIKE)
        assert sent.startswith(b"HEAD /a?x=1 HTTP/1.1\r\n")
        assert got.endswith(b"Content-Length: 2\r\n\r\n") and b"Connection" not in got
    assert client.memo is not None and len(h.upstreams) == 1


@aio
async def test_a_repeated_request_opens_a_connection_when_the_pool_is_empty():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    await _round(h, client, ct, GET, response(b"one"))
    up, ut = h.upstream()
    ut.close()
    up.connection_lost(None)  # the server closed the idle connection
    sent, got = await _round(h, client, ct, GET, response(b"two"))
    assert sent == GET[:-2] + FORWARDED and got.endswith(b"two")
    assert len(h.upstreams) == 2


@aio
async def test_a_repeated_request_without_a_usable_server_gets_503():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    await _round(h, client, ct, GET, response(b"one"))
    h.ctx.set_unhealthy(frozenset(key for key, _, _ in h.upstreams))
    feed(client, GET)
    await h.settle()
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 503 ") and b"no healthy server" in out
    assert not ct.closing  # an answer of our own keeps the connection
    h.ctx.set_unhealthy(frozenset())
    _, got = await _round(h, client, ct, GET, response(b"back"))
    assert got.endswith(b"back")


@aio
async def test_a_repeated_request_while_draining_closes_after_its_answer():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    await _round(h, client, ct, GET, response(b"one"))
    h.ctx.draining = True
    _, got = await _round(h, client, ct, GET, response(b"last"))
    assert got.endswith(b"last") and b"Connection: close\r\n" in got and ct.closing


@aio
async def test_a_repeated_request_carries_a_new_request_id_when_logging(tmp_path):
    h = Harness(make_ir(SERVERS[:1]))
    log = h.log_to(str(tmp_path / "a.log"), "p" * 16)
    client, ct = h.client()
    for n in (1, 2, 3):
        sent, got = await _round(h, client, ct, GET, response(b"r%d" % n))
        assert sent == GET[:-2] + FORWARDED[:-2] + b"X-Request-Id: " + b"p" * 16 + b"%x\r\n\r\n" % n
        assert got.endswith(b"r%d" % n)
    given = GET[:-2] + b"X-Request-Id: mine\r\n\r\n"
    for _ in range(2):  # the client's own id is kept, none added
        sent, _ = await _round(h, client, ct, given, response(b"x"))
        assert sent == given[:-2] + FORWARDED
    assert client.memo is not None and client.memo.data == given
    log.close()


@aio
async def test_a_request_checked_for_one_client_is_known_to_the_others():
    h = Harness(make_ir(SERVERS[:1]))
    first, ct1 = h.client(("127.0.0.9", 40000))
    await _round(h, first, ct1, GET, response(b"one"))
    assert list(h.ctx.shapes) == [GET]
    marked = GET[:-2].replace(b"/a?x=1", b"/marked")  # proof that the kept shape is used
    h.ctx.shapes[GET] = replace(h.ctx.shapes[GET], raw_head=marked)
    second, ct2 = h.client(("127.0.0.10", 40001))
    sent, _ = await _round(h, second, ct2, GET, response(b"two"))
    assert sent == marked + FORWARDED.replace(b"127.0.0.9", b"127.0.0.10")
    h.ctx.shapes.clear()
    third, ct3 = h.client(("127.0.0.11", 40002))
    sent, got = await _round(h, third, ct3, GET, response(b"three"))
    assert b"X-Forwarded-For: 127.0.0.11\r\n" in sent and got.endswith(b"three")


@aio
async def test_only_small_requests_the_fast_lane_took_are_kept_and_the_set_is_bounded():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    with_cookie = GET[:-2] + b"Cookie: a=1\r\n\r\n"
    await _round(h, client, ct, with_cookie, response(b"c"))
    big = GET[:-2] + b"X-Pad: " + b"p" * 3000 + b"\r\n\r\n"
    await _round(h, client, ct, big, response(b"b"))
    assert not h.ctx.shapes  # the full parser took the first, the second is too large
    for i in range(4096 + 10):
        h.ctx.remember_shape(b"GET /%d HTTP/1.1\r\n\r\n" % i, h.ctx.shapes.get(GET) or _shape())
    assert 0 < len(h.ctx.shapes) <= 4096


def _shape():
    from albingress.dataplane.request import RequestShape

    return RequestShape("GET", b"/", "/", "", b"h", b"GET / HTTP/1.1\r\nHost: h\r\n", "")


@aio
async def test_a_long_request_is_forwarded_but_not_remembered():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    long = GET[:-2] + b"X-Pad: " + b"p" * 2100 + b"\r\n\r\n"
    for _ in range(2):
        sent, got = await _round(h, client, ct, long, response(b"ok"))
        assert sent == long[:-2] + FORWARDED and got.endswith(b"ok")
    assert client.memo is None and not h.ctx.shapes


@aio
async def test_a_long_response_head_is_relayed_but_not_remembered():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    padded = NGINX_LIKE.replace(b"Server: nginx", b"Server: " + b"n" * 5000)
    for body in (b"ab", b"cd"):
        _, got = await _round(h, client, ct, GET, padded + body)
        assert got == padded.replace(b"Connection: keep-alive\r\n", b"") + body
    up, _ = h.upstream()
    assert up.memo_head == b""


@aio
async def test_an_empty_client_request_id_is_replaced_not_doubled(tmp_path):
    h = Harness(make_ir(SERVERS[:1]))
    log = h.log_to(str(tmp_path / "a.log"), "e" * 16)
    client, ct = h.client()
    for n, empty in enumerate((b"X-Request-Id:\r\n", b"x-request-id:  \t\r\n"), 1):
        request = GET[:-2] + empty + b"\r\n"
        sent, _ = await _round(h, client, ct, request, response(b"x"))
        ids = [x for x in sent.split(b"\r\n") if x.lower().startswith(b"x-request-id:")]
        assert ids == [b"X-Request-Id: " + b"e" * 16 + b"%x" % n], sent
    log.close()
