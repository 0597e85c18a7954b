"""Clients and servers that misbehave over time: slowloris, slow bodies, half-closed connections,
floods of idle connections, and servers that answer garbage, too much, or half an answer.

The proxy runs with ``--idle-timeout 2 --response-timeout 2`` (see conftest): every case must end
with an answer or a closed connection within a few seconds, never a connection left hanging.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Serve
from tests.reliability.conftest import Stubs, serving
from tests.reliability.load import children
from tests.reliability.stubs import exchange, read_reply, request, status_of

pytestmark = pytest.mark.e2e

H = b"Host: r.example.com\r\n"


def test_slowloris_head_trickled_byte_by_byte_gets_408_within_the_idle_timeout(
    lb: Serve, stubs: Stubs
) -> None:
    """CWE-400 slowloris: bytes that keep coming do not keep a head alive past the timeout."""
    before = stubs.received()
    head = request("r.example.com", "/slowloris") + b"X-A: " + b"a" * 200
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
        got = b""
        for byte in head:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - started > 6:
                break
        reply = read_reply(s, 4)
        got = reply.raw
    elapsed = time.monotonic() - started
    print(f"slowloris: {status_of(got)} after {elapsed:.2f} s")
    assert status_of(got) == 408, got[:200]
    assert reply.closed and elapsed < 5.5
    assert stubs.received() == before


def test_slow_body_is_cut_off_and_the_connection_closed(lb: Serve, stubs: Stubs) -> None:
    """A body that stops coming: the exchange ends (408 or 504) within the timeouts."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
        s.sendall(b"POST /slow-body HTTP/1.1\r\n" + H + b"Content-Length: 1000\r\n\r\nabc")
        reply = read_reply(s, 8)
    elapsed = time.monotonic() - started
    print(f"slow body: {reply.status} after {elapsed:.2f} s, closed {reply.closed}")
    assert reply.closed, reply.raw[:200]
    assert reply.status in (408, 504, 0), reply.raw[:200]
    assert elapsed < 6


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(lb: Serve) -> None:
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
        s.sendall(request("r.example.com") + b"\r\n")
        first = s.recv(65536)
        assert status_of(first) == 200
        started = time.monotonic()
        reply = read_reply(s, 6)
    assert reply.closed and time.monotonic() - started < 4.5


def test_a_half_closed_client_still_gets_its_answer(lb: Serve) -> None:
    """The client sends its request then shuts its sending side (RFC 9112 9.6 half-close)."""
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
        s.sendall(request("r.example.com", "/half-closed") + b"\r\n")
        s.shutdown(socket.SHUT_WR)
        reply = read_reply(s, 5)
    assert reply.status == 200 and b"/half-closed" in reply.raw and reply.closed


def test_a_client_half_closing_mid_head_is_closed_without_forwarding(
    lb: Serve, stubs: Stubs
) -> None:
    before = stubs.received()
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
        s.sendall(b"GET /half-head HTTP/1.1\r\nHost: r.exa")
        s.shutdown(socket.SHUT_WR)
        reply = read_reply(s, 5)
    assert reply.closed and reply.status in (0, 400)
    assert stubs.received() == before


def test_a_client_resetting_mid_response_leaves_the_proxy_serving(lb: Serve) -> None:
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", lb.port), timeout=10)
        s.sendall(request("bad.example.com", "/slow?s=0.2") + b"\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST
    assert lb.get("r.example.com", "/")[0] == 200


BAD_SERVERS = {
    "a server answering garbage": "/garbage",
    "a server answering headers over the limit": "/longheaders",
    "rfc9112-6.1 a response with Content-Length and Transfer-Encoding": "/cl-te",
    "rfc9112-6.3 a response with two Content-Lengths": "/two-cl",
    "rfc9112-2.2 a response with bare LF": "/bare-lf",
    "rfc9112-4 a three-digit status it is not": "/bad-status",
    "rfc9110-5.5 a response header with NUL": "/nul-header",
    "a response with no status line": "/http09",
}


@pytest.mark.parametrize("path", BAD_SERVERS.values(), ids=BAD_SERVERS.keys())
def test_a_misbehaving_server_gives_the_client_502(lb: Serve, path: str) -> None:
    started = time.monotonic()
    reply = exchange(
        lb.port, request("bad.example.com", path, b"Connection: close\r\n") + b"\r\n", wait=6
    )
    assert reply.status == 502, reply.raw[:300]
    assert time.monotonic() - started < 5
    assert lb.get("r.example.com", "/")[0] == 200


def test_a_server_closing_mid_body_ends_the_client_connection(lb: Serve) -> None:
    """The head (200, Content-Length 1000) was relayed before the server left: the proxy cannot
    turn it into a 502 any more, so it closes the client's connection short of the length, the
    one signal HTTP/1.1 has for a truncated body (RFC 9112 8)."""
    started = time.monotonic()
    reply = exchange(lb.port, request("bad.example.com", "/cut") + b"\r\n", wait=6)
    body = reply.raw.partition(b"\r\n\r\n")[2]
    print(f"cut mid-body: {reply.status}, {len(body)} of 1000 body bytes, closed {reply.closed}")
    assert reply.closed and time.monotonic() - started < 3
    if reply.status == 200:
        body = reply.raw.partition(b"\r\n\r\n")[2]
        assert len(body) < 1000
    else:
        assert reply.status == 502, reply.raw[:300]


def test_an_invalid_chunk_from_a_server_ends_the_client_connection_unterminated(lb: Serve) -> None:
    """RFC 9112 7.1: the head was relayed before the bad chunk size came; the client's chunked
    body then ends without its last chunk, by a close: never a well-formed message."""
    reply = exchange(lb.port, request("bad.example.com", "/bad-chunk") + b"\r\n", wait=6)
    assert reply.closed
    if reply.status == 200:
        assert not reply.raw.endswith(b"0\r\n\r\n") and b"zz" not in reply.raw
    else:
        assert reply.status == 502, reply.raw[:300]


def test_a_server_that_hangs_gives_504_after_the_response_timeout(lb: Serve) -> None:
    started = time.monotonic()
    reply = exchange(
        lb.port, request("bad.example.com", "/hang", b"Connection: close\r\n") + b"\r\n", wait=8
    )
    elapsed = time.monotonic() - started
    print(f"hanging server: {reply.status} after {elapsed:.2f} s")
    assert reply.status == 504, reply.raw[:300]
    assert 1.5 < elapsed < 3.5


@pytest.fixture
def capped(tmp_path: Path, stubs: Stubs) -> Iterator[Serve]:
    with serving(tmp_path, stubs, 1, ("--max-connections", "20", "--idle-timeout", "30")) as serve:
        yield serve


def test_a_flood_of_idle_connections_hits_the_cap_with_a_clear_503(capped: Serve) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", capped.port), timeout=5)
            held.append(s)
        time.sleep(0.3)
        refused = exchange(capped.port, request("r.example.com") + b"\r\n", wait=3)
        assert refused.status == 503 and refused.closed, refused.raw[:300]
        assert b"too many connections" in refused.raw
        # the held connections are served
        held[0].sendall(request("r.example.com", "/held") + b"\r\n")
        assert status_of(held[0].recv(65536)) == 200
    finally:
        for s in held:
            with contextlib.suppress(OSError):
                s.close()
    time.sleep(0.3)
    assert capped.get("r.example.com", "/")[0] == 200


def _workers_rss(serve: Serve) -> int:
    assert serve.proc is not None
    total = 0
    for pid in children(serve.proc.pid):
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return total


@pytest.mark.parametrize("host", [b"nothing.example.net", b"r.example.com"], ids=["404", "proxied"])
def test_a_client_pipelining_without_reading_is_stopped_with_bounded_memory(
    lb: Serve, host: bytes
) -> None:
    """CWE-400: requests pipelined for 4 s by a client that never reads its answers. The proxy
    stops reading from it once answers pile up (the client's send blocks), so what it takes in,
    and its memory, stay bounded."""
    before = _workers_rss(lb)
    req = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
        s.setblocking(False)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                sent += s.send(req * 1000)
            except BlockingIOError:
                time.sleep(0.02)
        grown = _workers_rss(lb) - before
    print(f"pipelining without reading ({host.decode()}): {sent / 1e6:.1f} MB taken, "
          f"workers grew {grown / 2**20:.1f} MiB")  # fmt: skip
    assert sent < 40_000_000
    assert grown < 64 * 2**20
    assert lb.get("r.example.com", "/")[0] == 200
