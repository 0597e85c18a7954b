"""Nothing a client or a server sends can raise out of the proxy's protocol callbacks."""

from __future__ import annotations

import asyncio
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import Harness, make_ir

SERVERS = [("127.0.1.1", 8001)]

# pieces of plausible HTTP, so that the fuzzer gets past the request line often
TOKENS = [
    b"GET / HTTP/1.1\r\n",
    b"POST /p HTTP/1.1\r\n",
    b"HEAD / HTTP/1.0\r\n",
    b"Host: a\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"Expect: 100-continue\r\n",
    b"\r\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b" ",
    b":",
    b"\n",
]
chunks = st.lists(
    st.one_of(st.sampled_from(TOKENS), st.binary(max_size=20)), min_size=1, max_size=25
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_parts=chunks, server_parts=chunks, cut=st.integers(min_value=1, max_value=7))
def test_arbitrary_bytes_from_both_sides_never_raise(
    client_parts: list[bytes], server_parts: list[bytes], cut: int
) -> None:
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logger = logging.getLogger("albingress.dataplane")

    async def run() -> None:
        h = Harness(make_ir(SERVERS))
        client, ct = h.client()
        data = b"".join(client_parts)
        for i in range(0, len(data), cut):
            if ct.closing:
                break
            client.data_received(data[i : i + cut])
            await h.settle(2)
        for _, up, ut in list(h.upstreams):
            reply = b"".join(server_parts)
            for i in range(0, len(reply), cut):
                if ut.closing:
                    break
                up.data_received(reply[i : i + cut])
            up.connection_lost(None)
        client.connection_lost(None)
        for _, up, _ in h.upstreams:
            assert h.ctx.balancer.active(up.key) == 0  # every pick was released

    logger.addHandler(handler)
    try:
        asyncio.run(run())
    finally:
        logger.removeHandler(handler)
    assert errors == []  # no internal error was logged either
