"""The client side: one :class:`ClientConnection` per accepted connection.

Parser callbacks only record the request (target, headers, body pieces, completion) into an
:class:`~.exchange.Exchange`; after ``feed_data`` returns, :meth:`ClientConnection._pump` starts
the oldest waiting exchange once the one before it is answered. Pipelined requests wait in a
queue and reading pauses while any wait, so memory stays bounded.

Requests are read and checked by :mod:`.request` (the RFC 9112 checks are listed there).
Every rejection answers in order (after the requests before it) and closes the connection.
Idle and header timeouts use one timestamp, ``idle_since``, set and cleared in
:meth:`ClientConnection._set_idle` (inlined on the hot path: ``data_received`` and
``exchange_done``), checked by the worker's periodic sweep.

The hot path: a read that is exactly one bodyless request goes to the fast lane
(``_simple``: llhttp checks it without per-header callbacks). Once a fast-lane request was
routed to a rule that only forwards, its bytes are remembered (:class:`~.request.RequestMemo`):
the same bytes again on this connection, while the same routing table is live, are neither
parsed nor routed again (llhttp and the header scan would find them exactly as valid, routing
is pure) and go to :func:`~.dispatch.forward_again`. Keep-alive clients that repeat
their request (load balancer health probes, polling, benchmarks) take this path.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import cast

import httptools

from albingress.dataplane.balancer import PickContext
from albingress.dataplane.context import WorkerContext
from albingress.dataplane.dispatch import forward_again
from albingress.dataplane.exchange import Exchange
from albingress.dataplane.flow import OWN_FULL, PEER_FULL, QUEUED, TUNNEL_PEER_FULL, FlowControl
from albingress.dataplane.request import (
    MEMO_MAX_BYTES,
    RequestMemo,
    RequestRejected,
    RequestShape,
    RequestValidator,
    parse_head,
    remember,
    simple_shape,
)
from albingress.dataplane.wire import error_response

log = logging.getLogger("albingress.dataplane")


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order."""

    def __init__(self, ctx: WorkerContext, listener_port: int, scheme: str = "http") -> None:
        self.ctx = ctx
        self.listener_port = listener_port
        self.scheme = scheme
        self.forwarded_const = b"X-Forwarded-Proto: %s\r\nX-Forwarded-Port: %d\r\n" % (
            scheme.encode(),
            listener_port,
        )
        self.forwarded_end = self.forwarded_const + b"\r\n"
        self.xff_line = b""
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl = None  # type: ignore[assignment]  # set in connection_made
        self.parser = httptools.HttpRequestParser(self)
        self.validator = RequestValidator()
        self.checker = httptools.HttpRequestParser(self.validator)  # for the fast lane
        self.validator.checker = self.checker
        self.client_ip = ""
        self.client_port = 0
        self.ip_bytes = b""
        self.current: Exchange | None = None  # being answered
        self.queue: collections.deque[Exchange] = collections.deque()  # parsed, waiting
        self.parsing: Exchange | None = None  # its body is being read
        self.tunnel: Exchange | None = None  # after a 101: raw bytes to this exchange
        self.upgrading: Exchange | None = None  # bytes after an Upgrade request go here
        self.error: bytes = b""  # a rejection to send once the requests before it are answered
        self.stopped = False  # no more requests are read (error, Connection: close, upgrade)
        self.closed = False
        self.pumping = False
        self.idle_since: float | None = None
        self.last_pick_context: PickContext | None = None  # reused while path and query repeat
        self.memo: RequestMemo | None = None  # the last fast-lane request, checked and routed
        # the request head being parsed
        self.in_head = False
        self.head_fed = 0
        self.head_bytes = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    # ----------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(transport)
        ctx = self.ctx
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client_ip, self.client_port = str(peer[0]), int(peer[1])
        self.ip_bytes = self.client_ip.encode()
        self.xff_line = b"X-Forwarded-For: " + self.ip_bytes + b"\r\n"
        ctx.connections.add(self)
        s = ctx.settings
        if len(ctx.connections) > s.max_connections or ctx.draining:
            why = "shutting down" if ctx.draining else "too many connections"
            transport.write(error_response(503, why, close=True))
            self.close()
            return
        transport.set_write_buffer_limits(s.write_high_water, s.write_low_water)
        self._set_idle(True)

    def data_received(self, data: bytes) -> None:
        if self.stopped:  # also set before a tunnel (or an upgrade waiting for its answer)
            if self.tunnel is not None:
                self.tunnel.tunnel_to_server(data)
            elif self.upgrading is not None:
                self.upgrading.tunnel_to_server(data)
            return
        memo = self.memo
        if (
            memo is not None
            and data == memo.data
            and self.current is None
            and not self.in_head
            and not self.queue
            and memo.generation == self.ctx.generation
        ):  # the same request again: already checked and routed on this connection
            ex = memo.exchange(self)
            self.current = ex
            self.idle_since = None
            forward_again(ex, memo.action, memo.pick_context)
            return
        if (
            data[-4:] == b"\r\n\r\n"
            and self.current is None
            and not self.in_head
            and not self.queue
            and self.ctx.route_cache is not None
            and self._simple(data)
        ):
            return
        if self.in_head:
            self.head_fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] if exc.args else len(data) :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRejected):
                self._reject(cause.code, cause.reason)
            else:
                log.exception("request handling failed", exc_info=cause)
                self._reject(500, "internal error")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")
        else:
            if self.in_head and self.head_fed > self.ctx.settings.max_header_bytes:
                self._reject(431, "request header fields too large")
        if self.current is None or self.queue or self.error or self.stopped:
            self._pump()

    def eof_received(self) -> bool | None:
        self.stopped = True
        if self.tunnel is not None or self.upgrading is not None:
            return False  # a tunnel ends with either side: close, and the server's side too
        # keep the socket open for the answer to a request already read
        return bool(self.current is not None or self.queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        ex = self.current
        self.current = None
        self.queue.clear()
        if ex is not None:
            ex.client_lost()

    def pause_writing(self) -> None:
        self.flow.write_paused = True
        if self.parsing is None and not self.stopped:
            # between requests (never in a body, which the client may have to finish before it
            # reads, nor in a tunnel): read no more requests until the client reads its answers
            self.flow.pause(OWN_FULL)
        ex = self.current
        conn = ex.upstream if ex is not None else None
        if conn is not None and conn.flow is not None:
            conn.flow.pause(TUNNEL_PEER_FULL if conn.tunnel else PEER_FULL)

    def resume_writing(self) -> None:
        self.flow.write_paused = False
        if self.flow.reasons & OWN_FULL:
            self.flow.resume(OWN_FULL)
        ex = self.current
        conn = ex.upstream if ex is not None else None
        if conn is not None and conn.flow is not None:
            conn.flow.resume(TUNNEL_PEER_FULL | PEER_FULL)

    # ----------------------------------------------------------------- parser callbacks

    def on_url(self, url: bytes) -> None:
        # the first callback of a request (llhttp has no on_message_begin worth a call)
        if self.in_head:
            self.url += url
            self.head_bytes += len(url)
        else:
            self.in_head = True
            self.head_fed = 0
            self.url = url
            self.head_bytes = len(url)
        if self.head_bytes > self.ctx.settings.max_header_bytes:
            raise RequestRejected(431, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value) + 4
        s = self.ctx.settings
        if self.head_bytes > s.max_header_bytes or len(self.headers) > s.max_headers:
            raise RequestRejected(431, "request header fields too large")

    def on_headers_complete(self) -> None:
        self.in_head = False
        limit = self.ctx.settings.max_body_bytes
        if limit and _declared_length(self.headers) > limit:
            raise RequestRejected(413, "request body larger than the limit")
        ex = self._exchange()
        self.headers = []
        self.parsing = ex
        self.queue.append(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            limit = self.ctx.settings.max_body_bytes
            if limit and ex.body_in + len(body) > limit:  # chunked: no length was declared
                raise RequestRejected(413, "request body larger than the limit")
            ex.body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            if not ex.keep_alive:
                self.stopped = True
            ex.request_complete()

    # ----------------------------------------------------------------- requests

    def _simple(self, data: bytes) -> bool:
        """The fast lane: ``data`` is exactly one bodyless HTTP/1.1 request whose head can be
        forwarded as it came (plus X-Forwarded-*), to a rule that only forwards. llhttp checks it
        with no per-header callback; on any doubt, False, and the full parser takes ``data`` from
        the start, as if this had not been tried."""
        ctx = self.ctx
        shape = ctx.shapes.get(data)
        if shape is None:  # not seen lately by this worker: check it
            shape = self._check_simple(data)
            if shape is None:
                return False
            ctx.remember_shape(data, shape)
        ex = shape.exchange(self)
        self.current = ex
        self._set_idle(False)
        generation = self.ctx.generation  # of the table start_simple routes by
        if ex.start_simple():
            self.memo = remember(data, ex, generation) if len(data) <= MEMO_MAX_BYTES else None
            return True
        self.current = None
        self._set_idle(True)
        return False

    def _check_simple(self, data: bytes) -> RequestShape | None:
        """The fast lane's checks of ``data``: its shape, or None (then the full parser)."""
        settings = self.ctx.settings
        if (
            data.find(b"\r\n\r\n") != len(data) - 4
            or len(data) > settings.max_header_bytes
            or data.count(b"\n") > settings.max_headers + 2
        ):
            return None
        v = self.validator
        v.begun = 0
        v.done = False
        try:
            self.checker.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            ok = False
        else:
            ok = v.done and v.begun == 1
        if not ok:
            self.checker = v.checker = httptools.HttpRequestParser(v)
            return None
        if not v.keep_alive:
            return None
        return simple_shape(data)

    def _exchange(self) -> Exchange:
        return parse_head(self, self.parser, self.url, self.headers)

    def _pump(self) -> None:
        """Start waiting exchanges, oldest first, while none is being answered."""
        if self.pumping:
            return
        self.pumping = True
        try:
            while self.current is None and self.queue and not self.closed:
                ex = self.queue.popleft()
                self.current = ex
                self._set_idle(False)
                ex.start()
            if self.current is None and not self.queue:
                if self.error:
                    self._send_error()
                elif self.stopped and self.parsing is None and self.upgrading is None:
                    self.close()
        finally:
            self.pumping = False
        if self.queue:
            self.flow.pause(QUEUED)
        else:
            self.flow.resume(QUEUED)

    def exchange_done(self, ex: Exchange) -> None:
        """``ex`` is answered (or given up): go on with the next request, or close."""
        if self.current is ex:
            self.current = None
        if self.tunnel is ex:
            self.tunnel = None
        self.ctx.requests += 1
        if ex.close_after or self.ctx.draining:
            self.close()
            return
        if self.queue or self.error or self.stopped:
            self._pump()
        else:
            self.idle_since = self.ctx.clock()  # _set_idle(True), inlined: the hot path
            if self.flow.reasons & QUEUED:
                self.flow.resume(QUEUED)

    def _upgraded(self, rest: bytes) -> None:
        """The parser saw an Upgrade request; what follows belongs to the tunnel."""
        self.stopped = True
        ex = self.queue[-1] if self.queue else self.current
        if ex is not None and ex.h2c_dropped:
            return  # answered over HTTP/1.1, then closed: nothing after it is read
        if ex is None or not ex.upgrade:
            self._reject(400, "unexpected protocol switch")
            return
        self.upgrading = ex
        if rest:
            ex.tunnel_to_server(rest)

    def start_tunnel(self, ex: Exchange) -> None:
        self.upgrading = None
        self.tunnel = ex
        self.flow.resume(0xFF)

    def _reject(self, code: int, reason: str) -> None:
        self.stopped = True
        self.in_head = False
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            if ex is self.current:
                ex.request_broken(code, reason)
                return
            if ex in self.queue:
                self.queue.remove(ex)
        self.error = error_response(code, reason, close=True)
        self._count_refused(code, reason, len(self.error))

    def _count_refused(self, code: int, reason: str, sent: int) -> None:
        """A request refused before it became an exchange (a malformed or too large head, one
        too slow to arrive) is counted and logged like any other, with what is known of it: no
        method, path or rule, and the answer's size; its bytes_in is 0 (llhttp does not say
        where in a read a refused head began, so its size is not known)."""
        metrics = self.ctx.metrics
        if metrics is None:
            return
        ex = Exchange(self, "", b"", "", "", [], [])
        ex.status = code
        ex.reason = reason
        ex.bytes_out = sent
        ex.finished = True
        metrics.done(ex, None)

    def _send_error(self) -> None:
        data, self.error = self.error, b""
        self.write(data)
        self.close()

    # ----------------------------------------------------------------- output and lifecycle

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def write_many(self, parts: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            if len(parts) == 1:
                transport.write(parts[0])
            else:
                transport.writelines(parts)

    def flow_pause(self, reason: int) -> None:
        if not self.closed:
            self.flow.pause(reason)

    def flow_resume(self, reason: int) -> None:
        if not self.closed:
            self.flow.resume(reason)

    def _set_idle(self, idle: bool) -> None:
        """The one place the idle (keep-alive and header) timer is armed and cancelled."""
        self.idle_since = self.ctx.clock() if idle else None

    def check_timeouts(self, now: float) -> None:
        ex = self.current
        if ex is not None:
            ex.check_timeout(now)
            return
        since = self.idle_since
        if since is not None and now - since > self.ctx.settings.idle_timeout:
            if self.in_head:
                answer = error_response(408, "request not received in time", close=True)
                self.write(answer)
                self._count_refused(408, "request not received in time", len(answer))
            self.close()

    def drain(self) -> None:
        """Shutdown: close now when idle, otherwise after the answer in flight."""
        if self.current is None and not self.queue and not self.in_head:
            self.close()

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.queue)

    def close(self) -> None:
        self.stopped = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def abort(self) -> None:
        self.stopped = True
        transport = self.transport
        if transport is not None:
            transport.abort()


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The request's Content-Length (llhttp has checked there is at most one, all digits)."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            return int(value)
    return 0
