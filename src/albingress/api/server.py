"""The admin HTTP server: small, bounded, routes registered by the caller.

asyncio and httptools, HTTP/1.1 with keep-alive, one request at a time per connection (pipelined
requests queue behind the one being answered). Limits: request head and body sizes (413/431),
an idle timeout between requests and a deadline for receiving a whole request (408), and a
handler deadline (503). A handler error becomes a 500 with no detail (the log has it). Binding an
address outside loopback logs a warning: the admin API changes what the load balancer forwards.

    server = AdminServer("127.0.0.1", 0)
    server.route("GET", "/healthz", handler)   # async def handler(req: AdminRequest) -> AdminResponse
    await server.start(); host, port = server.bound; ...; await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl

import httptools

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes
MAX_HEAD = 64 << 10  # bytes of request line and headers
MAX_HEADERS = 100
MAX_CONNECTIONS = 256  # more are answered 503 and closed
MAX_PIPELINE = 8  # requests queued on one connection before reading pauses
IDLE_TIMEOUT = 30.0  # seconds between requests on a kept-alive connection
REQUEST_TIMEOUT = 30.0  # seconds to receive one whole request
HANDLER_TIMEOUT = 60.0  # seconds a handler may take


@dataclass(frozen=True, slots=True)
class AdminRequest:
    method: str  # upper case
    path: str  # percent-decoded is NOT applied: the path as sent, without the query
    query: dict[str, str]  # decoded; the last value wins for a repeated key
    headers: dict[str, str]  # lowercase names; repeated headers joined with ","
    body: bytes
    client: tuple[str, int]  # peer address
    raw_query: str = ""  # the query string as sent


@dataclass(frozen=True, slots=True)
class AdminResponse:
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # extra headers


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


def _plain(status: int, text: str, close: bool = False) -> AdminResponse:
    return AdminResponse(
        status,
        "text/plain; charset=utf-8",
        text.encode() + b"\n",
        {"connection": "close"} if close else {},
    )


def encode_response(resp: AdminResponse, keep_alive: bool, head_only: bool = False) -> bytes:
    try:
        reason = HTTPStatus(resp.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {resp.status} {reason}"]
    lines.append(f"content-type: {resp.content_type}")
    lines.append(f"content-length: {len(resp.body)}")
    for name, value in resp.headers.items():
        if name.lower() in ("content-length", "content-type", "connection"):
            continue
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            continue
        lines.append(f"{name}: {value}")
    lines.append("connection: keep-alive" if keep_alive else "connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return head if head_only else head + resp.body


class _RequestTooLarge(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Connection(asyncio.Protocol):
    """One client connection: parser callbacks record state, a task answers requests in order."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] = ("", 0)
        self.queue: asyncio.Queue[tuple[AdminRequest, bool] | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()  # cleared while the transport's buffer is full
        self.writable.set()
        self.reading = True
        self._reset_message()
        self.head_size = 0

    def _reset_message(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.head_size = 0

    # ----------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        if len(self.server.connections) >= MAX_CONNECTIONS:
            log.warning("admin server: too many connections, refusing %s", self.client[0])
            self.transport.write(
                encode_response(_plain(503, "too many connections"), keep_alive=False)
            )
            self.transport.close()
            return
        self.server.connections.add(self)
        self.task = asyncio.get_running_loop().create_task(self._answer())
        self._arm(IDLE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._disarm()
        if self.task is not None:
            self.task.cancel()
        self.transport = None

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except _RequestTooLarge as exc:
            self._fail(exc.status, "request too large")
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrades are not supported")
        except httptools.HttpParserError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, _RequestTooLarge):
                self._fail(cause.status, "request too large")
            else:
                self._fail(400, "malformed request")

    # ----------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._reset_message()
        self._arm(REQUEST_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            raise _RequestTooLarge(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_HEAD or len(self.headers) >= MAX_HEADERS:
            raise _RequestTooLarge(431)
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        for name, value in self.headers:
            if name == "content-length" and value.strip().isdigit() and int(value) > MAX_BODY:
                raise _RequestTooLarge(413)
        for name, value in self.headers:
            if name == "expect" and value.strip().lower() == "100-continue" and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            raise _RequestTooLarge(413)

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self.url)
        raw_query = (parsed.query or b"").decode("latin-1")
        headers: dict[str, str] = {}
        for name, value in self.headers:
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        request = AdminRequest(
            method=self.parser.get_method().decode("ascii", "replace").upper(),
            path=(parsed.path or b"/").decode("latin-1"),
            query=dict(parse_qsl(raw_query, keep_blank_values=True)),
            headers=headers,
            body=bytes(self.body),
            client=self.client,
            raw_query=raw_query,
        )
        self.queue.put_nowait((request, self.parser.should_keep_alive()))
        if self.queue.qsize() >= MAX_PIPELINE and self.transport is not None and self.reading:
            self.transport.pause_reading()
            self.reading = False
        self._disarm()
        self._reset_message()

    # ----------------------------------------------------------------- answering

    async def _answer(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None or self.transport is None:
                return
            request, keep_alive = item
            if not self.reading and self.queue.qsize() < MAX_PIPELINE // 2 and self.transport:
                self.transport.resume_reading()
                self.reading = True
            response = await self.server.dispatch(request)
            keep_alive = keep_alive and response.headers.get("connection") != "close"
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            await self.writable.wait()
            if transport.is_closing():
                return
            transport.write(encode_response(response, keep_alive, request.method == "HEAD"))
            if not keep_alive:
                transport.close()
                return
            if self.queue.empty():
                self._arm(IDLE_TIMEOUT)

    def _fail(self, status: int, text: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_response(_plain(status, text), keep_alive=False))
            transport.close()
        self.queue.put_nowait(None)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._timeout)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timeout(self) -> None:
        self.timer = None
        if self.head_size or self.body or self.url:
            self._fail(408, "request timeout")
        elif self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class AdminServer:
    """The admin HTTP server; register routes, then ``await start()``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._routes: dict[tuple[str, str], Handler] = {}
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._routes[(method.upper(), path)] = handler

    @property
    def bound(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the admin server is not started")
        name = self._server.sockets[0].getsockname()
        return (str(name[0]), int(name[1]))

    async def start(self) -> None:
        if not _is_loopback(self.host):
            log.warning(
                "the admin API listens on %s, outside loopback: anyone who can reach it and holds "
                "an access key can change where traffic goes",
                self.host,
            )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):
            conn.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None

    async def dispatch(self, request: AdminRequest) -> AdminResponse:
        method = "GET" if request.method == "HEAD" else request.method
        handler = self._routes.get((method, request.path))
        if handler is None:
            if any(path == request.path for _, path in self._routes):
                return _plain(405, "method not allowed")
            return _plain(404, "not found")
        try:
            return await asyncio.wait_for(handler(request), HANDLER_TIMEOUT)
        except TimeoutError:
            log.error("admin handler for %s %s timed out", request.method, request.path)
            return _plain(503, "handler timed out")
        except Exception:
            log.exception("admin handler for %s %s failed", request.method, request.path)
            return _plain(500, "internal error")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
