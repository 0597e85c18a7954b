"""The proxy as real processes on loopback: backends, run_ir (supervisor + workers), clients."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from albingress.ir import to_json
from tests.reliability.load import children as live_children

from .conftest import get, ir_for

pytestmark = pytest.mark.e2e


def test_forwarding_spreads_and_reuses_upstream_connections(backend, proxy):
    _, p1 = backend("a", "127.0.1.1")
    _, p2 = backend("b", "127.0.1.2")
    _, port = proxy(ir_for([[("127.0.1.1", p1), ("127.0.1.2", p2)]]))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seen: Counter[tuple[str, str]] = Counter()
    for _ in range(40):
        status, headers, body = get(port, "/hello", conn)
        assert status == 200
        assert body.decode() == headers["x-backend"]
        seen[(headers["x-backend"], headers["x-conn"])] += 1
    conn.close()
    assert {b for b, _ in seen} == {"a", "b"}
    assert sum(seen.values()) == 40
    assert len(seen) == 2  # one upstream connection per backend, reused 20 times each


def test_forwarded_headers_reach_the_backend(backend, proxy):
    _, p1 = backend("a", "127.0.1.1")
    _, port = proxy(ir_for([[("127.0.1.1", p1)]]))
    status, _, body = get(
        port, "/headers?x=1", headers={"Host": "demo.example", "Connection": "keep-alive"}
    )
    assert status == 200
    data = json.loads(body)
    names = {k.lower(): v for k, v in data["headers"]}
    assert data["target"] == "/headers?x=1"
    assert names["x-forwarded-for"] == "127.0.0.1"
    assert names["x-forwarded-host"] == "demo.example"
    assert names["x-forwarded-proto"] == "http" and names["x-forwarded-port"] == "80"
    assert "connection" not in names


def test_streaming_both_ways(backend, proxy):
    _, p1 = backend("a", "127.0.1.1")
    _, port = proxy(ir_for([[("127.0.1.1", p1)]]))
    payload = os.urandom(1024) * 6 * 1024  # 6 MiB, chunked upload echoed back chunked
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/echo",
        body=iter([payload[i : i + 65536] for i in range(0, len(payload), 65536)]),
        encode_chunked=True,
    )
    r = conn.getresponse()
    assert r.status == 200 and r.read() == payload
    status, headers, body = get(port, "/big?n=20000000", conn)
    assert status == 200 and len(body) == 20_000_000 and headers["content-length"] == "20000000"
    conn.close()


def test_websocket_upgrade_is_tunnelled(backend, proxy):
    _, p1 = backend("a", "127.0.1.1")
    _, port = proxy(ir_for([[("127.0.1.1", p1)]]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101 ")
        for word in (b"hello", b"tunnel", b"x" * 100000):
            s.sendall(word)
            got = b""
            while len(got) < len(word):
                got += s.recv(65536)
            assert got == word.upper()


def _load(port: int, stop: threading.Event, results: list[int], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            status, _, _ = get(port, "/", conn)
            results.append(status)
        except Exception as exc:
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


def _run_load(port: int, seconds: float, action, threads: int = 4) -> tuple[list[int], list[str]]:
    stop = threading.Event()
    results: list[int] = []
    errors: list[str] = []
    workers = [
        threading.Thread(target=_load, args=(port, stop, results, errors)) for _ in range(threads)
    ]
    for w in workers:
        w.start()
    try:
        time.sleep(seconds / 3)
        action()
        time.sleep(seconds * 2 / 3)
    finally:
        stop.set()
        for w in workers:
            w.join(15)
    return results, errors


def test_a_killed_backend_costs_no_client_request(backend, proxy):
    b1, p1 = backend("a", "127.0.1.1")
    _, p2 = backend("b", "127.0.1.2")
    _, port = proxy(ir_for([[("127.0.1.1", p1), ("127.0.1.2", p2)]]))
    results, errors = _run_load(port, 3.0, lambda: b1.proc.send_signal(signal.SIGKILL))
    assert errors == [] and len(results) > 100
    assert set(results) == {200}


def test_a_config_published_under_load_fails_no_request(backend, proxy, tmp_path: Path):
    _, p1 = backend("a", "127.0.1.1")
    _, p2 = backend("b", "127.0.1.2")
    runner, port = proxy(ir_for([[("127.0.1.1", p1)]]), workers=2)

    def publish() -> None:
        for weights in ([100, 0], [50, 50], [0, 100]):
            ir = ir_for([[("127.0.1.1", p1)], [("127.0.1.2", p2)]], weights)
            (tmp_path / "ir.json").write_text(json.dumps(to_json(ir)))
            runner.proc.send_signal(signal.SIGHUP)
            time.sleep(0.4)

    results, errors = _run_load(port, 3.0, publish)
    assert errors == [] and len(results) > 100 and set(results) == {200}
    for _ in range(5):
        assert get(port, "/")[1]["x-backend"] == "b"  # the last config is live everywhere


def test_sigterm_drains_the_request_in_flight_then_exits_0(backend, proxy):
    _, p1 = backend("a", "127.0.1.1")
    runner, port = proxy(ir_for([[("127.0.1.1", p1)]]))
    got: list[tuple[int, bytes]] = []
    t = threading.Thread(target=lambda: got.append(get(port, "/slow?s=1.0")[::2]))
    t.start()
    time.sleep(0.3)
    runner.proc.send_signal(signal.SIGTERM)
    t.join(10)
    assert got == [(200, b"a slow")]
    assert runner.proc.wait(10) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_worker_killed_is_restarted_and_the_others_keep_serving(backend, proxy):
    _, p1 = backend("a", "127.0.1.1")
    runner, port = proxy(ir_for([[("127.0.1.1", p1)]]), workers=2)
    pids = runner.info["pids"]
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    for _ in range(50):  # new connections keep being served meanwhile
        assert get(port, "/")[0] == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = live_children(runner.pid)
        if len(children) == 2 and pids[0] not in children:
            break
        time.sleep(0.1)
    assert len(children) == 2 and pids[1] in children and pids[0] not in children
    for _ in range(50):
        assert get(port, "/")[0] == 200


def _read_responses(s: socket.socket, count: int) -> list[bytes]:
    """``count`` Content-Length framed responses from ``s``."""
    buf = b""
    out: list[bytes] = []
    while len(out) < count:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b"\r\n\r\n" in buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                break
            out.append(head + b"\r\n\r\n" + rest[:length])
            buf = rest[length:]
    return out


def test_pipelined_requests_and_a_malformed_one_over_a_real_socket(backend, proxy):
    _, p1 = backend("a", "127.0.1.1")
    _, port = proxy(ir_for([[("127.0.1.1", p1)]]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"".join(b"GET /headers?n=%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5)))
        answers = _read_responses(s, 5)
        assert len(answers) == 5
        for i, answer in enumerate(answers):
            assert answer.startswith(b"HTTP/1.1 200 ") and b'"/headers?n=%d"' % i in answer
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        rest = s.recv(65536)
        assert rest.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in rest
        assert s.recv(65536) == b""  # closed
    assert get(port, "/")[0] == 200  # the worker carries on


def test_sticky_session_type_server_follows_the_servers_own_cookie(backend, proxy):
    """Real processes: the server's Set-Cookie comes back marked, requests with it stay on that
    server (which sees its own value), requests without it are spread."""
    import dataclasses

    from albingress.ir import StickySession

    ports = [backend(f"b{i}", f"127.0.1.{i}")[1] for i in (1, 2, 3)]
    ir = ir_for([[(f"127.0.1.{i}", p) for i, p in zip((1, 2, 3), ports, strict=True)]])
    sticky = StickySession(enabled=True, type="Server", cookie="SESSION")
    ir = dataclasses.replace(
        ir, server_groups=(dataclasses.replace(ir.server_groups[0], sticky=sticky),)
    )
    _, port = proxy(ir)
    status, headers, _ = get(port, "/login")
    assert status == 200
    owner = headers["x-backend"]
    cookie = headers["set-cookie"].split(";")[0]
    name, _, value = cookie.partition("=")
    assert name == "SESSION" and value.startswith("alb.") and value.endswith(f".{owner}-1")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(9):
            status, headers, body = get(port, "/headers", conn, headers={"Cookie": cookie})
            assert status == 200 and headers["x-backend"] == owner
            seen = dict(json.loads(body)["headers"])
            assert seen["Cookie"] == f"SESSION={owner}-1"  # the value the server set
    finally:
        conn.close()
    spread = {get(port, "/")[1]["x-backend"] for _ in range(6)}
    assert spread == {"b1", "b2", "b3"}


def test_an_https_server_group_is_spoken_to_over_tls(backend, proxy):
    """Real processes: a group with protocol HTTPS reaches its server over TLS (the server's
    self-signed certificate is accepted, as ALB does); a plain server in such a group is a 502
    (each handshake fails: nothing is sent to it in clear)."""
    import dataclasses

    from albingress.ir import Protocol

    _, secure = backend("b-tls", "127.0.1.5", tls=True)
    _, plain = backend("b-plain", "127.0.1.6")
    ir = ir_for([[("127.0.1.5", secure)]])
    https = dataclasses.replace(ir.server_groups[0], protocol=Protocol.HTTPS)
    _, port = proxy(dataclasses.replace(ir, server_groups=(https,)))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(3):  # kept alive: the TLS connection is reused
            status, _, body = get(port, "/x", conn)
            assert (status, body) == (200, b"b-tls")
        assert len({get(port, "/x", conn)[1]["x-conn"] for _ in range(3)}) == 1
    finally:
        conn.close()
    ir2 = ir_for([[("127.0.1.6", plain)]])
    wrong = dataclasses.replace(ir2.server_groups[0], protocol=Protocol.HTTPS)
    _, port2 = proxy(dataclasses.replace(ir2, server_groups=(wrong,)))
    status, _, body = get(port2, "/x")
    assert status == 502 and b"accepted the connection" in body, body  # handshakes all failed
    assert b"TLS handshake failed" in body, body


def test_a_failed_handshake_is_said_as_such() -> None:
    import asyncio

    from albingress.dataplane.context import WorkerContext
    from albingress.dataplane.settings import ProxySettings

    async def scenario() -> str:
        async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)  # a ClientHello, answered in HTTP
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(plain, "127.0.1.6", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(OSError) as caught:
                await WorkerContext(ProxySettings()).pool.connect("k", "127.0.1.6", port, True)
            return str(caught.value.strerror)
        finally:
            server.close()

    assert asyncio.run(scenario()).startswith("TLS handshake failed")


def test_a_slow_client_gets_all_of_a_close_delimited_body_from_an_https_server(proxy):
    """uvloop's TLS layer reads ahead while the proxy pauses reading for a slow client; a
    server's abrupt close must not cut the body short (the proxy gives TLS connections no read
    buffer). The server here closes the way many do: all sent, then the socket closed."""
    import dataclasses
    import ssl

    from albingress.ir import Protocol

    n = 8 << 20
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_dir = Path(__file__).parent / "tls"
    context.load_cert_chain(tls_dir / "backend.crt", tls_dir / "backend.key")
    listener = socket.create_server(("127.0.1.7", 0))
    server_port = listener.getsockname()[1]

    def serve_one(raw: socket.socket) -> None:
        with context.wrap_socket(raw, server_side=True) as conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"c" * n)

    def accept() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(raw,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        ir = ir_for([[("127.0.1.7", server_port)]])
        https = dataclasses.replace(ir.server_groups[0], protocol=Protocol.HTTPS)
        _, port = proxy(dataclasses.replace(ir, server_groups=(https,)))
        assert [_slow_read(port, n) for _ in range(2)] == [n, n]
    finally:
        listener.close()


def _slow_read(port: int, n: int) -> int:
    """Body bytes a client reading 16 KiB a millisecond gets of a close-delimited body."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(1.0)  # every buffer fills: the proxy pauses reading from the server, which closes
    data = bytearray()
    client.settimeout(10)
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = client.recv(16384)
        if not chunk:
            break
        data += chunk
        time.sleep(0.001)  # slow all along: the proxy pauses and resumes many times
    client.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    received = 0
    while True:  # de-chunk
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        received += len(body[:size])
        body = body[size + 2 :]
    return received
