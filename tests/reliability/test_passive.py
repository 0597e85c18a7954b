"""A server that hangs leaves rotation by the passive check, health checks or not: a response
timeout ejects it like a refused connection does (in-process, fake clock)."""

from __future__ import annotations

from albingress.dataplane.settings import ProxySettings
from tests.dataplane.harness import Harness, aio, make_ir, response

SERVERS = [("127.0.1.1", 8001), ("127.0.1.2", 8001)]
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


@aio
async def test_a_response_timeout_ejects_the_server_that_hung() -> None:
    h = Harness(make_ir(SERVERS), ProxySettings(response_timeout=5, idle_timeout=60))
    client, ct = h.client()
    client.data_received(GET)
    await h.settle()
    hung, _ = h.upstream()
    h.ctx.sweep(h.clock.now + 6)
    assert ct.take().startswith(b"HTTP/1.1 504 ")
    assert h.ctx.balancer.is_ejected(hung.key)
    for _ in range(6):  # the next requests all go to the other server
        client.data_received(GET)
        await h.settle()
        conn, _ = h.upstream()
        assert conn.key != hung.key
        conn.data_received(response())
        await h.settle()
        assert ct.take().startswith(b"HTTP/1.1 200 ")
