"""Retries, timeouts (fake clock), answers of the proxy's own, rule actions, tunnels, drain."""

from __future__ import annotations

from albingress.dataplane.settings import ProxySettings
from albingress.ir import (
    FixedResponseAction,
    InsertHeaderAction,
    RedirectAction,
    RemoveHeaderAction,
    RewriteAction,
    TrafficLimitAction,
)

from .harness import Harness, aio, feed, make_ir, response, split_head

SERVERS = [("127.0.1.1", 8001), ("127.0.1.2", 8002), ("127.0.1.3", 8003)]
GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


@aio
async def test_a_refused_connection_is_reported_and_retried_on_another_server():
    h = Harness(make_ir(SERVERS))
    h.refuse = {"sgp-0|127.0.1.1:8001"}
    client, ct = h.client()
    for _ in range(3):
        feed(client, GET)
        await h.settle(10)
        up, ut = h.upstream()
        ut.take()
        feed(up, response(b"ok"))
        assert ct.take().endswith(b"ok")
    # round robin reached the refusing server once; then it was out of rotation
    assert h.connects.count("sgp-0|127.0.1.1:8001") == 1
    assert h.ctx.balancer.is_ejected("sgp-0|127.0.1.1:8001")
    for _, up, _ in h.upstreams:
        assert h.ctx.balancer.active(up.key) == 0


@aio
async def test_when_every_server_refuses_the_client_gets_502_with_the_reason():
    h = Harness(make_ir(SERVERS), ProxySettings(max_retries=2))
    h.refuse = {f"sgp-0|{a}:{p}" for a, p in SERVERS}
    client, ct = h.client()
    feed(client, GET)
    await h.settle(20)
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 502 ") and b"Connection refused" in out
    assert len(h.connects) == 3  # one try and two retries
    feed(client, GET)  # the connection stays usable; now nothing is left in rotation
    await h.settle(20)
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 503 ") and b"no healthy server" in out


@aio
async def test_a_client_leaving_during_a_retry_cancels_the_retrys_connect():
    h = Harness(make_ir(SERVERS))
    h.script = ["refuse", "hang"]
    client, _ = h.client()
    feed(client, GET)
    await h.settle(10)
    assert len(h.connects) == 2 and h.connects[0] != h.connects[1]  # refused, a retry hangs
    client.connection_lost(None)
    await h.settle(10)
    assert h.cancelled == [h.connects[1]]
    for key in h.connects:
        assert h.ctx.balancer.active(key) == 0


async def _one_pooled(h: Harness):
    """A client whose first request was answered: its server connection is in the pool."""
    client, ct = h.client()
    feed(client, GET)
    await h.settle()
    up, ut = h.upstream()
    feed(up, response(b"one"))
    ct.take()
    ut.take()
    return client, ct, up, ut


@aio
async def test_a_pooled_connection_closed_by_the_server_is_retried_transparently():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct, up, ut = await _one_pooled(h)
    feed(client, GET)  # goes to the pooled connection...
    await h.settle()
    assert ut.take().startswith(b"GET /x")
    up.connection_lost(None)  # ...which the server had closed
    await h.settle(10)
    up2, ut2 = h.upstream()
    assert up2 is not up and ut2.take().startswith(b"GET /x")
    feed(up2, response(b"two"))
    assert ct.take().endswith(b"two")
    assert not h.ctx.balancer.is_ejected(up.key)


@aio
async def test_a_server_that_restarted_costs_no_request_however_many_connections_were_pooled():
    # the server closed every kept-alive connection (it restarted): a retry that took the next
    # pooled one would find it closed too and use up the retries; it takes a new connection
    h = Harness(make_ir(SERVERS[:1]), ProxySettings(max_retries=1))
    clients = [h.client() for _ in range(3)]
    for client, _ in clients:
        feed(client, GET)
    await h.settle()
    pooled = [up for _, up, _ in h.upstreams]
    assert len(pooled) == 3
    for up in pooled:
        feed(up, response(b"one"))
    assert len(h.ctx.pool.idle[pooled[0].key]) == 3
    client, ct = clients[0]
    ct.take()
    feed(client, GET)
    await h.settle()
    for _ in range(3):  # whichever pooled connection it was sent on is found closed
        for up in pooled:
            if up.exchange is not None:
                up.connection_lost(None)
        await h.settle(10)
    fresh = [up for _, up, _ in h.upstreams if up not in pooled]
    assert len(fresh) == 1
    feed(fresh[0], response(b"two"))
    assert ct.take().endswith(b"two")


@aio
async def test_a_chunked_request_whose_last_chunk_was_sent_is_not_retried():
    # a retry would send the head again but not the body's end: the server would wait for it
    h = Harness(make_ir(SERVERS[:1]), ProxySettings(max_retries=0))
    client, ct, up, ut = await _one_pooled(h)
    feed(client, b"DELETE /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    await h.settle()
    feed(client, b"0\r\n\r\n")
    assert ut.take().endswith(b"\r\n\r\n0\r\n\r\n")  # on the pooled connection
    up.connection_lost(None)  # which the server had closed
    await h.settle(10)
    assert len(h.upstreams) == 1  # not tried again
    assert ct.take().startswith(b"HTTP/1.1 502 ")


@aio
async def test_a_post_whose_body_was_sent_is_not_retried():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    feed(client, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    await h.settle()
    up, _ = h.upstream()
    up.connection_lost(ConnectionResetError())
    await h.settle()
    assert ct.take().startswith(b"HTTP/1.1 502 ") and len(h.upstreams) == 1


@aio
async def test_response_timeout_gives_504_and_idle_clients_are_closed():
    h = Harness(make_ir(SERVERS[:1]), ProxySettings(response_timeout=5, idle_timeout=10))
    client, ct = h.client()
    feed(client, GET)
    await h.settle()
    up, ut = h.upstream()
    h.ctx.sweep(h.clock.now + 4)
    assert ct.take() == b""
    h.ctx.sweep(h.clock.now + 6)
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 504 ") and b"within 5 s" in out
    assert ut.aborted and h.ctx.balancer.active(up.key) == 0
    h.clock.now += 6
    h.ctx.sweep()
    assert not ct.closing  # idle for 0 s
    h.ctx.sweep(h.clock.now + 11)
    assert ct.closing


@aio
async def test_a_half_sent_request_head_times_out_with_408():
    h = Harness(make_ir(SERVERS[:1]), ProxySettings(idle_timeout=10))
    client, ct = h.client()
    from albingress.dataplane.metrics import WorkerMetrics

    h.ctx.metrics = WorkerMetrics(clock=h.clock)
    feed(client, b"GET / HTTP/1.1\r\nHo")
    h.ctx.sweep(h.clock.now + 11)
    assert ct.take().startswith(b"HTTP/1.1 408 ") and ct.closing
    (series,) = h.ctx.metrics.snapshot()["series"]  # counted, as any request
    assert series[3] == 408 and sum(series[4][:15]) == 1


@aio
async def test_a_response_cut_short_aborts_the_client_connection():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    feed(client, GET)
    await h.settle()
    up, _ = h.upstream()
    feed(up, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    up.connection_lost(ConnectionResetError())
    assert ct.aborted and ct.take().endswith(b"partial")


@aio
async def test_a_client_that_leaves_releases_its_server():
    h = Harness(make_ir(SERVERS[:1]))
    client, _ct = h.client()
    feed(client, GET)
    await h.settle()
    up, ut = h.upstream()
    assert h.ctx.balancer.active(up.key) == 1
    client.connection_lost(None)
    assert ut.aborted and h.ctx.balancer.active(up.key) == 0
    assert client not in h.ctx.connections


@aio
async def test_no_rule_404_and_no_config_503():
    h = Harness(make_ir(SERVERS[:1], host="demo.example"))
    client, ct = h.client()
    feed(client, b"GET /x HTTP/1.1\r\nHost: other.example\r\n\r\n")
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 404 ") and b"other.example" in out and not ct.closing
    feed(client, b"HEAD /x HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert ct.take().endswith(b"\r\n\r\n")  # no body for HEAD
    h2 = Harness(None)
    client2, ct2 = h2.client()
    feed(client2, GET)
    assert ct2.take().startswith(b"HTTP/1.1 503 ")


@aio
async def test_redirect_and_fixed_response_are_answered_by_the_proxy():
    redirect = RedirectAction(protocol="https", port="443", http_code=301)
    h = Harness(make_ir(SERVERS[:1], final=redirect))
    client, ct = h.client()
    feed(client, b"GET /p?q=1 HTTP/1.1\r\nHost: demo.example\r\n\r\n")
    lines, _ = split_head(ct.take())
    assert lines[0] == b"HTTP/1.1 301 Moved Permanently"
    assert b"Location: https://demo.example/p?q=1" in lines
    fixed = FixedResponseAction(content="maintenance", content_type="text/plain", http_code=503)
    h = Harness(make_ir(SERVERS[:1], final=fixed))
    client, ct = h.client()
    feed(client, GET)
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 503 ") and out.endswith(b"\r\n\r\nmaintenance")
    assert out.count(b"Content-Length") == 1 and h.connects == []


@aio
async def test_header_actions_and_rewrite_change_the_upstream_request():
    pre = (
        InsertHeaderAction("X-Source", "ClientSrcIp", "SystemDefined"),
        RemoveHeaderAction("X-Drop"),
        RewriteAction(host="backend.internal", path="/v2${path}"),
    )
    h = Harness(make_ir(SERVERS[:1], pre=pre))
    client, _ = h.client()
    feed(client, b"GET /x?y=2 HTTP/1.1\r\nHost: demo.example\r\nX-Drop: 1\r\n\r\n")
    await h.settle()
    _, ut = h.upstream()
    lines, _ = split_head(ut.take())
    assert lines[0] == b"GET /v2/x?y=2 HTTP/1.1"
    assert b"Host: backend.internal" in lines and b"Host: demo.example" not in lines
    assert b"X-Source: 127.0.0.9" in lines and b"X-Drop: 1" not in lines


@aio
async def test_traffic_limit_answers_503():
    h = Harness(make_ir(SERVERS[:1], pre=(TrafficLimitAction(qps=1),)))
    client, ct = h.client()
    feed(client, GET)
    await h.settle()
    up, _ = h.upstream()
    feed(up, response(b"first"))
    assert ct.take().endswith(b"first")
    feed(client, GET)  # same instant: over one request per second
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 503 ") and b"traffic limit" in out


@aio
async def test_websocket_upgrade_is_tunnelled_after_the_101():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    feed(
        client,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\nearly",
    )
    await h.settle()
    up, ut = h.upstream()
    lines, _ = split_head(ut.take())
    assert b"Upgrade: websocket" in lines and b"Connection: upgrade" in lines
    feed(
        up,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: a\r\n\r\nfrom-server",
    )
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 101 ") and out.endswith(b"\r\n\r\nfrom-server")
    assert b"Upgrade: websocket" in out
    assert ut.take() == b"early"
    feed(client, b"\x81\x05hello")
    assert ut.take() == b"\x81\x05hello"
    feed(up, b"\x81\x02hi")
    assert ct.take() == b"\x81\x02hi"
    up.connection_lost(None)
    assert ct.closing and h.ctx.balancer.active(up.key) == 0


@aio
async def test_a_client_closing_its_side_ends_the_tunnel():
    h = Harness(make_ir(SERVERS[:1]))
    client, _ = h.client()
    feed(
        client, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    await h.settle()
    up, ut = h.upstream()
    feed(
        up, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    assert client.eof_received() is False  # asyncio closes the client side then
    client.connection_lost(None)
    assert ut.closing and h.ctx.balancer.active(up.key) == 0


@aio
async def test_an_upgrade_refused_by_the_server_is_relayed_then_closed():
    h = Harness(make_ir(SERVERS[:1]))
    client, ct = h.client()
    feed(
        client, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    await h.settle()
    up, ut = h.upstream()
    ut.take()
    feed(up, response(b"no ws here", "400 Bad Request"))
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in out and ct.closing


@aio
async def test_drain_closes_idle_connections_and_finishes_busy_ones():
    h = Harness(make_ir(SERVERS[:1]))
    _idle, it = h.client()
    busy, bt = h.client(("127.0.0.10", 1))
    feed(busy, GET)
    await h.settle()
    up, _ = h.upstream()
    h.ctx.start_drain()
    assert it.closing and not bt.closing
    feed(up, response(b"last"))
    out = bt.take()
    assert out.endswith(b"last") and bt.closing


def _mirror_ir():
    from albingress.ir import (
        IR,
        ForwardAction,
        GroupSource,
        Listener,
        PathMatch,
        PathType,
        Protocol,
        Rule,
        Scheduler,
        Server,
        ServerGroup,
        TrafficMirrorAction,
        WeightedGroup,
    )

    def group(gid: str, addr: str) -> ServerGroup:
        return ServerGroup(
            gid,
            gid,
            GroupSource.SERVER_GROUP,
            Protocol.HTTP,
            Scheduler.WRR,
            (Server(addr, 8000, 100, addr),),
        )

    rule = Rule(
        "default/m/rules/0/paths/0",
        "default/m",
        10,
        "",
        PathMatch(PathType.PREFIX, "/"),
        (),
        (TrafficMirrorAction(("sgp-shadow",)), ForwardAction((WeightedGroup("sgp-main", 100),))),
    )
    return IR(
        (Listener(80, "HTTP", (rule,)),),
        (group("sgp-main", "127.0.1.1"), group("sgp-shadow", "127.0.1.9")),
    )


def _mirror_ends(h: Harness):
    """The connections (protocol, transport) to the main server and to the mirror's."""
    by_key = {key: (up, t) for key, up, t in h.upstreams}
    return by_key["sgp-main|127.0.1.1:8000"], by_key["sgp-shadow|127.0.1.9:8000"]


@aio
async def test_traffic_mirror_sends_a_copy_and_discards_its_answer():
    h = Harness(_mirror_ir())
    client, ct = h.client()
    feed(client, b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
    await h.settle()
    (main_up, main_t), (shadow_up, shadow_t) = _mirror_ends(h)
    copy = shadow_t.take()
    assert copy.startswith(b"POST /m HTTP/1.1\r\n") and copy.endswith(b"\r\n\r\nbody")
    assert main_t.take() == copy  # the same request
    feed(shadow_up, response(b"shadow answer"))
    assert ct.take() == b""  # nothing of the mirror reaches the client
    feed(main_up, response(b"main answer"))
    assert ct.take().endswith(b"main answer")
    assert h.ctx.mirrors_answered == 1 and not h.ctx.mirrors
    assert h.ctx.pool.idle["sgp-shadow|127.0.1.9:8000"] == [shadow_up]  # reused next time


@aio
async def test_a_failing_mirror_changes_nothing_for_the_client():
    h = Harness(_mirror_ir())
    h.refuse = {"sgp-shadow|127.0.1.9:8000"}
    client, ct = h.client()
    feed(client, GET)
    await h.settle()
    up, _ = h.upstream()
    feed(up, response(b"fine"))
    assert ct.take().endswith(b"fine")
    assert h.ctx.mirrors_failed == 1
    h.refuse = set()
    feed(client, GET)  # now the mirror connects, and its server never answers
    await h.settle()
    shadow = [(up, t) for key, up, t in h.upstreams if key.startswith("sgp-shadow")]
    assert len(shadow) == 1 and len(h.ctx.mirrors) == 1
    main = [up for key, up, _ in h.upstreams if key.startswith("sgp-main")]
    feed(main[0], response(b"fine again"))
    assert ct.take().endswith(b"fine again")
    h.ctx.sweep(h.clock.now + 1000)
    assert shadow[0][1].aborted and not h.ctx.mirrors and h.ctx.mirrors_failed == 2


@aio
async def test_a_mirror_copy_carries_the_request_id_the_server_and_the_log_get(tmp_path):
    import json

    h = Harness(_mirror_ir())
    log = h.log_to(str(tmp_path / "a.log"), "m" * 16)
    client, ct = h.client()
    feed(client, b"GET /m HTTP/1.1\r\nHost: a\r\n\r\n")
    await h.settle()
    (main_up, main_t), (_, shadow_t) = _mirror_ends(h)
    rid = b"X-Request-Id: " + b"m" * 16 + b"1\r\n"
    assert main_t.take().count(rid) == 1 and shadow_t.take().count(rid) == 1
    feed(main_up, response(b"main answer"))
    assert ct.take().endswith(b"main answer")
    log.close()
    (line,) = (tmp_path / "a.log").read_text().splitlines()
    assert json.loads(line)["request_id"] == "m" * 16 + "1"
