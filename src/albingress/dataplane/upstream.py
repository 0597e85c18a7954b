"""Connections to servers (pods, VMs, remote servers) and their keep-alive pool.

An :class:`UpstreamConnection` carries one request at a time. Its parser callbacks only record
the response (status, headers) and hand body bytes to the :class:`~.exchange.Exchange` it
serves; the work happens after ``feed_data`` returns: the output for the client is flushed as one
write, and a finished connection goes back to the :class:`Pool` before the exchange is told, so
the next request may reuse it at once.

The hot path: a read that is exactly one complete final response with nothing to rewrite is
relayed as received (``_plain``: llhttp checks it without per-header callbacks, then the head is
scanned for hop-by-hop fields). Its head is remembered per connection; a later read that starts
with the very same head and has the same length is framed the same way (Content-Length, or no
body for 204/304) and is relayed without being parsed again. A server that answers with the
same headers (only the body differs) pays for the checks once per change of head (nginx: once
a second, when its Date header changes).

The pool keeps, per server key (``ir.server_key``), a LIFO list of idle connections (the most
recently used first: the one least likely to have been closed by the server), bounded by
``settings.pool_idle_per_server``; :meth:`Pool.sweep` closes those idle for too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from typing import TYPE_CHECKING, Any, Protocol, cast

import httptools

from albingress.dataplane.flow import PEER_FULL, TUNNEL_PEER_FULL, FlowControl
from albingress.dataplane.wire import plain_head

if TYPE_CHECKING:
    from albingress.dataplane.context import WorkerContext


class _FlowTarget(Protocol):
    def flow_pause(self, reason: int) -> None: ...
    def flow_resume(self, reason: int) -> None: ...


class Exchange(Protocol):
    """What an upstream connection serves: a client's exchange, or a mirror's sink."""

    plain: bool
    upgrade: bytes

    @property
    def client(self) -> _FlowTarget: ...
    def response_informational(self, conn: UpstreamConnection) -> None: ...
    def response_head(self, conn: UpstreamConnection) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def response_complete(self) -> None: ...
    def relay_plain(self, data: bytes) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection) -> None: ...
    def upstream_broken(self, conn: UpstreamConnection, code: int, reason: str) -> None: ...
    def start_tunnel(self, rest: bytes) -> None: ...
    def tunnel_to_client(self, data: bytes) -> None: ...


_MEMO_MAX_HEAD = 4096  # response heads longer than this are not remembered


class _Validator:
    """Callbacks of the validating parser: how many messages began, whether one ended."""

    __slots__ = ("begun", "done")

    def __init__(self) -> None:
        self.begun = 0
        self.done = False

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_message_complete(self) -> None:
        self.done = True


class ResponseTooLarge(Exception):
    """More response header fields than ``settings.max_headers``."""


class UnexpectedUpgrade(Exception):
    """A 101 answer to a request that did not ask to switch protocols."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to one server."""

    def __init__(self, pool: Pool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.validator = _Validator()
        self.checker = httptools.HttpResponseParser(self.validator)  # no per-header callbacks
        self.exchange: Exchange | None = None
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.got_bytes = False  # any response byte for the current request
        self.complete = False  # the final response ended (set by the parser)
        self.head_only = False  # the request was HEAD: the response has no body
        self.until_close = False  # the response body ends when the server closes
        self.informational = False  # the message being parsed is a 1xx
        self.in_head = False  # a response head is being parsed
        self.head_fed = 0  # bytes fed to the parser since that head began
        self.head_bytes = 0  # bytes of the header fields parsed so far in that head
        self.reusable = True
        self.closed = False
        self.tls = False  # spoken over TLS (a group with protocol HTTPS)
        self.tunnel = False  # after a 101: raw bytes both ways
        self.fresh = True  # the parser holds no part of a message
        self.idle_since = 0.0
        self.sent_at = 0.0  # when the current request was written (response timeout)
        self.requests = 0
        # the last response relayed byte for byte: its head, whole size and head for the client
        self.memo_head = b""
        self.memo_size = 0
        self.memo_out: bytes | None = None  # None: the head is relayed unchanged

    # ----------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(transport)
        s = self.pool.ctx.settings
        transport.set_write_buffer_limits(s.write_high_water, s.write_low_water)
        self.tls = transport.get_extra_info("sslcontext") is not None
        if self.tls:
            # While reading is paused (a slow client), uvloop's TLS layer would go on reading
            # the socket into its own buffer and, on the server's close, drop what it holds: the
            # response's end would be lost. With no read buffer, the close waits in the kernel
            # until reading resumes, as over plain TCP.
            with contextlib.suppress(AttributeError, NotImplementedError):
                transport.set_read_buffer_limits(1, 0)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for: this connection cannot be trusted
            self.close()
            return
        if self.tunnel:
            ex.tunnel_to_client(data)
            return
        self.got_bytes = True
        if self.fresh and ex.plain:
            memo = self.memo_head
            if memo and len(data) == self.memo_size and data.startswith(memo):
                # the same head as the last plain response, and the same length: llhttp would
                # find it exactly as valid and as complete, so it is relayed without parsing
                cut = self.memo_out
                self.exchange = None
                self.pool.put(self)
                ex.relay_plain(data if cut is None else cut + data[len(memo) :])
                return
            out = self._plain(data) if data[:9] == b"HTTP/1.1 " and data[9:10] in b"2345" else None
            if out is not None:  # the common case: relayed as it came
                self.exchange = None
                self.pool.put(self)
                ex.relay_plain(out)
                return
        self.fresh = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            if self.status == 101 and ex.upgrade:
                self.tunnel = True
                self.reusable = False
                ex.flush()
                ex.start_tunnel(data[offset:])
                return
            self._malformed(ex, "the server switched protocols without being asked")
            return
        except httptools.HttpParserError as exc:
            self._malformed(ex, f"malformed response from the server ({exc})")
            return
        if self.in_head:
            self.head_fed += len(data)
            if self.head_fed > self.pool.ctx.settings.max_header_bytes:
                self._malformed(ex, "the server's response head is too large")
                return
        if self.complete:
            self._finish(ex)
        else:
            ex.flush()

    def _plain(self, data: bytes) -> bytes | None:
        """``data`` for the client if it is exactly one complete final response that needs no
        rewriting. llhttp validates it with no per-header callback; on any doubt the full parser
        takes the same bytes from the start."""
        v = self.validator
        v.begun = 0
        v.done = False
        try:
            self.checker.feed_data(data)
        except httptools.HttpParserError:
            ok = False
        else:
            ok = v.done and v.begun == 1
        if not ok:
            self.checker = httptools.HttpResponseParser(v)
            return None
        settings = self.pool.ctx.settings
        if len(data) > settings.max_header_bytes and (
            data.find(b"\r\n\r\n") > settings.max_header_bytes
        ):
            return None  # the full parser refuses the head: 502
        out = plain_head(data, settings.max_headers)
        if out is not None:
            # remember the head: a response that starts with it and has the same length is
            # framed the same way (Content-Length, or none for 204/304), so needs no new check
            end = data.find(b"\r\n\r\n") + 4
            if end <= _MEMO_MAX_HEAD:
                self.memo_head = data[:end]
                self.memo_size = len(data)
                cut = len(data) - len(out)
                self.memo_out = None if not cut else out[: end - cut]
            else:  # too large to keep on every pooled connection
                self.memo_head, self.memo_size, self.memo_out = b"", 0, None
        return out

    def _malformed(self, ex: Exchange, reason: str) -> None:
        self.reusable = False
        self.exchange = None
        self.close()
        ex.upstream_broken(self, 502, reason)

    def _finish(self, ex: Exchange) -> None:
        self.complete = False
        self.fresh = True
        self.exchange = None
        keep = self.reusable and not self.until_close
        if self.head_only:  # llhttp cannot be told a response has no body: start afresh
            self.parser = httptools.HttpResponseParser(self)
        if keep:
            self.pool.put(self)
        else:
            self.close()
        ex.response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(self)

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.flow_pause(TUNNEL_PEER_FULL if self.tunnel else PEER_FULL)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.flow_resume(TUNNEL_PEER_FULL if self.tunnel else PEER_FULL)

    # ----------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers = []
        self.in_head = True
        self.head_fed = 0
        self.head_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        settings = self.pool.ctx.settings
        if len(headers) > settings.max_headers:
            raise ResponseTooLarge("the server sent too many header fields")
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > settings.max_header_bytes:
            raise ResponseTooLarge("the server's response head is too large")

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.status = status = self.parser.get_status_code()
        ex = self.exchange
        if ex is None:
            return
        if status == 101 and not ex.upgrade:
            raise UnexpectedUpgrade("the server switched protocols without being asked")
        if 100 <= status < 200 and status != 101:
            self.informational = True
            ex.response_informational(self)
            return
        ex.response_head(self)
        if self.head_only or status in (204, 304):
            self.complete = True
            if not self.parser.should_keep_alive():
                self.reusable = False

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a body after a HEAD response's head: do not reuse
            self.reusable = False
            return
        ex = self.exchange
        if ex is not None:
            ex.response_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        if not self.parser.should_keep_alive():
            self.reusable = False

    # ----------------------------------------------------------------- use

    def begin(self, ex: Exchange, head_only: bool, now: float) -> None:
        """Serve ``ex`` next: reset the per-response state."""
        self.exchange = ex
        self.head_only = head_only
        self.got_bytes = False
        self.complete = False
        self.until_close = False
        self.informational = False
        self.sent_at = now
        self.requests += 1

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()


TLS_SHUTDOWN_TIMEOUT = 2.0  # seconds a closing TLS connection waits for the server's close_notify


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The client context for HTTPS server groups: TLS 1.2 or newer; like ALB, the server's
    certificate is not verified (servers on a private network often carry self-signed ones)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store: nothing is verified
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Pool:
    """Idle keep-alive connections per server key, and how new ones are opened."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.idle: dict[str, list[UpstreamConnection]] = {}
        self.opened = 0  # connections opened so far (tests read it to see reuse)

    def take(self, key: str, tls: bool = False) -> UpstreamConnection | None:
        """An idle connection to ``key`` spoken as the group now says (plain or TLS: a group's
        protocol may have changed since the connection was opened), or None."""
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn.tls is tls:
                return conn
            conn.close()
        return None

    def put(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        conns = self.idle.get(conn.key)
        if conns is None:
            conns = self.idle[conn.key] = []
        if len(conns) >= self.ctx.settings.pool_idle_per_server or self.ctx.draining:
            conn.close()
            return
        conn.idle_since = self.ctx.clock()
        flow = conn.flow
        if flow is not None and flow.reasons:
            flow.resume(PEER_FULL | TUNNEL_PEER_FULL)
        conns.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    async def connect(
        self, key: str, host: str, port: int, tls: bool = False
    ) -> UpstreamConnection:
        """A new connection, over TLS for an HTTPS group; raises OSError (refused, unreachable,
        a failed handshake) or TimeoutError (the handshake counts in the connect timeout)."""
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {}
        if tls:
            options = {"ssl": _tls_context(), "ssl_shutdown_timeout": TLS_SHUTDOWN_TIMEOUT}
        try:
            async with asyncio.timeout(self.ctx.settings.connect_timeout):
                _, proto = await loop.create_connection(
                    lambda: UpstreamConnection(self, key), host, port, **options
                )
        except ssl.SSLError as exc:  # an OSError too; said as what it is
            raise ConnectionError(0, f"TLS handshake failed ({exc.reason or exc})") from exc
        except ConnectionRefusedError:
            raise
        except ConnectionError as exc:
            if not tls:
                raise
            reason = exc.strerror or type(exc).__name__  # the server closed in the handshake
            raise ConnectionError(0, f"TLS handshake failed ({reason})") from exc
        self.opened += 1
        return proto

    def sweep(self, now: float) -> None:
        limit = now - self.ctx.settings.pool_idle_timeout
        for conns in self.idle.values():
            while conns and conns[0].idle_since < limit:
                conns.pop(0).close()

    def close_all(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
