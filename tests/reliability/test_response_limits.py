"""A server's response head over ``max_header_bytes`` is a 502, whichever way it arrives: in
pieces (the full parser) or whole in one read (the fast lane). In-process, fake transports."""

from __future__ import annotations

import pytest

from tests.dataplane.harness import Harness, aio, make_ir

SERVERS = [("127.0.1.1", 8001)]
BIG = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\nok"


@pytest.mark.parametrize("piece", [len(BIG), 4096, 1], ids=["one read", "4 KiB reads", "bytewise"])
@aio
async def test_an_oversized_response_head_gives_502(piece: int) -> None:
    h = Harness(make_ir(SERVERS))
    client, ct = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await h.settle()
    conn, ut = h.upstream()
    step = piece if piece > 1 else 997  # bytewise would take long: odd-sized small reads
    for i in range(0, len(BIG), step):
        if ut.closing:
            break
        conn.data_received(BIG[i : i + step])
    await h.settle()
    out = ct.take()
    assert out.startswith(b"HTTP/1.1 502 "), out[:100]
    assert ut.closing  # the server connection is dropped, not reused
