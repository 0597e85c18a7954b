"""The admin HTTP server: routing, keep-alive, pipelining, limits, timeouts, errors."""

from __future__ import annotations

import asyncio
import logging

import pytest

from albingress.api import server as server_mod
from albingress.api.server import AdminRequest, AdminResponse, AdminServer


async def echo(req: AdminRequest) -> AdminResponse:
    text = f"{req.method} {req.path} {sorted(req.query.items())} {len(req.body)} {req.headers.get('x-k', '')}"
    return AdminResponse(200, "text/plain", text.encode(), {"x-served": "yes"})


async def boom(req: AdminRequest) -> AdminResponse:
    raise RuntimeError("secret detail")


async def slow(req: AdminRequest) -> AdminResponse:
    await asyncio.sleep(5)
    return AdminResponse()


async def exchange(srv: AdminServer, data: bytes, expect: int = 1) -> list[bytes]:
    """Send raw bytes, read ``expect`` responses (or until the server closes)."""
    host, port = srv.bound
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    out: list[bytes] = []
    try:
        for _ in range(expect):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            out.append(head + body)
    except asyncio.IncompleteReadError:
        pass
    writer.close()
    return out


def test_routes_query_and_body() -> None:
    async def main() -> None:
        srv = AdminServer("127.0.0.1", 0)
        srv.route("POST", "/echo", echo)
        await srv.start()
        try:
            (resp,) = await exchange(
                srv,
                b"POST /echo?a=1&b=x%20y HTTP/1.1\r\nHost: h\r\nX-K: v\r\nContent-Length: 3\r\n\r\nabc",
            )
            assert resp.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"x-served: yes" in resp
            assert resp.endswith(b"POST /echo [('a', '1'), ('b', 'x y')] 3 v")
        finally:
            await srv.stop()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: h\r\n\r\n", b"404"),
        (b"DELETE /echo HTTP/1.1\r\nHost: h\r\n\r\n", b"405"),
        (b"GET /boom HTTP/1.1\r\nHost: h\r\n\r\n", b"500"),
        (b"BLAH\r\n\r\n", b"400"),
        (b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", b"413"),
        (b"GET /echo HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
    ],
    ids=[
        "unknown-path",
        "wrong-method",
        "handler-error",
        "garbage",
        "body-too-large",
        "head-too-large",
    ],
)
def test_error_statuses(request_bytes: bytes, status: bytes) -> None:
    async def main() -> None:
        srv = AdminServer("127.0.0.1", 0)
        srv.route("POST", "/echo", echo)
        srv.route("GET", "/echo", echo)
        srv.route("GET", "/boom", boom)
        await srv.start()
        try:
            (resp,) = await exchange(srv, request_bytes)
            assert resp.split(b" ")[1] == status
            assert b"secret detail" not in resp
        finally:
            await srv.stop()

    asyncio.run(main())


def test_keep_alive_and_pipelining_in_order() -> None:
    async def main() -> None:
        srv = AdminServer("127.0.0.1", 0)
        srv.route("GET", "/echo", echo)
        await srv.start()
        try:
            reqs = b"".join(
                f"GET /echo?n={i} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for i in range(3)
            )
            resps = await exchange(srv, reqs, expect=3)
            assert [r.rsplit(b"\r\n\r\n", 1)[1].split(b" ")[2] for r in resps] == [
                b"[('n',",
                b"[('n',",
                b"[('n',",
            ]
            assert [b"'%d'" % i in r for i, r in enumerate(resps)] == [True, True, True]
            assert all(b"connection: keep-alive" in r for r in resps)
            (closing,) = await exchange(
                srv, b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            assert b"connection: close" in closing
        finally:
            await srv.stop()

    asyncio.run(main())


def test_slow_handler_and_incomplete_request_time_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "HANDLER_TIMEOUT", 0.2)
    monkeypatch.setattr(server_mod, "REQUEST_TIMEOUT", 0.2)

    async def main() -> None:
        srv = AdminServer("127.0.0.1", 0)
        srv.route("GET", "/slow", slow)
        await srv.start()
        try:
            (resp,) = await exchange(srv, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
            assert resp.split(b" ")[1] == b"503"
            (partial,) = await exchange(
                srv, b"POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab"
            )
            assert partial.split(b" ")[1] == b"408"
        finally:
            await srv.stop()

    asyncio.run(main())


def test_warns_when_not_on_loopback(caplog: pytest.LogCaptureFixture) -> None:
    """The warning comes before binding; the bind itself is stubbed (tests stay on loopback)."""
    bound: list[str] = []

    async def fake_create_server(*args: object, **kwargs: object) -> None:
        bound.append(str(args[1]))
        raise OSError("not binding outside loopback in tests")

    async def main() -> None:
        srv = AdminServer("192.0.2.1", 0)
        loop = asyncio.get_running_loop()
        loop.create_server = fake_create_server  # type: ignore[method-assign,assignment]
        with caplog.at_level(logging.WARNING), pytest.raises(OSError):
            await srv.start()

    asyncio.run(main())
    assert bound == ["192.0.2.1"]
    assert any("outside loopback" in r.getMessage() for r in caplog.records)


def test_no_warning_on_loopback(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        srv = AdminServer("127.0.0.1", 0)
        with caplog.at_level(logging.WARNING):
            await srv.start()
        assert srv.bound[0] == "127.0.0.1" and srv.bound[1] > 0
        await srv.stop()

    asyncio.run(main())
    assert not any("outside loopback" in r.getMessage() for r in caplog.records)


def test_request_fed_byte_by_byte_and_expect_continue() -> None:
    async def main() -> None:
        srv = AdminServer("127.0.0.1", 0)
        srv.route("POST", "/echo", echo)
        await srv.start()
        try:
            host, port = srv.bound
            reader, writer = await asyncio.open_connection(host, port)
            data = (
                b"POST /echo?q=1 HTTP/1.1\r\nHost: h\r\nX-K: split\r\n"
                b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"
            )
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK")
            body = await asyncio.wait_for(reader.read(200), 5)
            assert body == b"POST /echo [('q', '1')] 5 split"
            writer.close()
        finally:
            await srv.stop()

    asyncio.run(main())


def test_long_pipeline_is_answered_in_order() -> None:
    """More pipelined requests than the queue bound: reading pauses and resumes, none is lost."""

    async def main() -> None:
        srv = AdminServer("127.0.0.1", 0)
        srv.route("GET", "/echo", echo)
        await srv.start()
        try:
            n = server_mod.MAX_PIPELINE * 3
            reqs = b"".join(
                f"GET /echo?n={i} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for i in range(n)
            )
            resps = await exchange(srv, reqs, expect=n)
            assert len(resps) == n
            assert all(b"[('n', '%d')]" % i in r for i, r in enumerate(resps))
        finally:
            await srv.stop()

    asyncio.run(main())


def test_connection_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "MAX_CONNECTIONS", 2)

    async def main() -> None:
        srv = AdminServer("127.0.0.1", 0)
        srv.route("GET", "/echo", echo)
        await srv.start()
        try:
            host, port = srv.bound
            held = [await asyncio.open_connection(host, port) for _ in range(2)]
            await asyncio.sleep(0.05)
            (resp,) = await exchange(srv, b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
            assert resp.split(b" ")[1] == b"503"
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.05)
            (resp,) = await exchange(srv, b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
            assert resp.split(b" ")[1] == b"200"
        finally:
            await srv.stop()

    asyncio.run(main())
