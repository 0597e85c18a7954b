"""One request and its response, from the rule's actions to the last byte.

An :class:`Exchange` is made by the client connection once a request's head is parsed. When the
requests before it are answered, :meth:`Exchange.start` routes it and carries out the rule's
actions (:mod:`.dispatch`); a ForwardGroup picks a server through the balancer
(``dispatch.forward``) and :meth:`Exchange.attach` sends the request over a pooled or new
connection. Response heads are built by :mod:`.response`.

Failure handling: a connection that cannot be opened is reported (``report_failure``: the server
is ejected for a while) and the request goes to another server (``PickContext.exclude``), up to
``settings.max_retries`` more times, as long as nothing of it was sent. A server that does not
answer within ``settings.response_timeout`` is reported too (504; the request was sent, so it is
not retried). A pooled connection that closes before answering an
idempotent request without a body is retried the same way (the server closed an idle
connection; nothing is reported). Every pick is ``acquire``-d and ``release``-d exactly once.

Answers of the proxy itself: 404 (no rule), 503 (no usable server, traffic limit, no
configuration yet), 502 (connection refused or reset, malformed response), 504 (connect or
response timeout), each with the reason in the body.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from albingress.dataplane import dispatch
from albingress.dataplane.balancer import Pick
from albingress.dataplane.flow import BUFFERING, PEER_FULL
from albingress.dataplane.response import final_head, informational_head
from albingress.dataplane.upstream import UpstreamConnection
from albingress.dataplane.wire import LAST_CHUNK, chunk, error_body, request_head, simple_response
from albingress.ir import Rule, Server

if TYPE_CHECKING:
    import msgspec

    from albingress.dataplane.downstream import ClientConnection

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Exchange:
    """One request/response pair on a client connection."""

    # What every request sets is a slot, set in __init__; what few requests change is a class
    # attribute (the default, shared) that a request overrides in its own __dict__, made only then.
    # Not one plain instance dict for all: CPython shares an instance dict's keys among the
    # instances of a class only up to 30 names, and past that every new instance pays a whole
    # dict and slower attribute reads (0.4 us a request here, measured in bench/hotpath_bench.py).
    __slots__ = (
        "__dict__",
        "attempts",
        "body_in",
        "bytes_out",
        "client",
        "close_after",
        "connect_task",
        "finished",
        "head_only",
        "headers",
        "host",
        "keep_alive",
        "log_part",
        "method",
        "out",
        "path",
        "pick",
        "plain",
        "query",
        "raw_head",
        "raw_headers",
        "req_done",
        "request_id",
        "resp_done",
        "resp_started",
        "reused",
        "rid_line",
        "rule",
        "sent_at",
        "started",
        "status",
        "target",
        "upstream",
        "upstream_status",
        "wire_head",
    )

    # rarely changed: defaults shared by every instance (immutable)
    xff = b""  # X-Forwarded-For received
    cookie = b""  # Cookie headers, joined
    connection_tokens = b""
    version_10 = False
    upgrade = b""  # the Upgrade header when the request asks to switch protocols
    h2c_dropped = False  # it asked for h2c: answered over HTTP/1.1 instead, then closed
    chunked = False  # the request body is chunked (re-chunked upstream)
    tried: frozenset[str] = frozenset()  # server keys that refused this request
    body_buf: list[bytes] | None = None  # request body read while no server is attached
    tunnel_buf: list[bytes] | None = None  # bytes after an Upgrade request, before the 101
    body_buf_size = 0
    body_sent = False
    resp_chunked = False
    reason = ""  # why the proxy answered an error itself
    connect_error = ""  # why the last server tried could not be connected to
    fresh = False  # the next try takes a new connection (a pooled one was found closed)

    def __init__(
        self,
        client: ClientConnection,
        method: str,
        target: bytes,
        path: str,
        query: str,
        raw_headers: list[tuple[bytes, bytes]],
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.client = client
        self.method = method
        self.head_only = method == "HEAD"  # the response has no body
        self.target = target  # origin-form request target sent upstream
        self.path = path
        self.query = query
        self.raw_headers = raw_headers  # as received: what rules match
        self.headers = headers  # to forward: hop-by-hop and X-Forwarded-* removed
        self.started = client.ctx.clock()
        self.host = b""  # the Host header (or the absolute-form authority)
        self.keep_alive = True
        self.plain = False  # the response may be relayed byte for byte (see wire.plain_response)
        self.rule: Rule | None = None
        self.pick: Pick | None = None
        self.attempts = 0
        self.reused = False
        self.connect_task: asyncio.Task[None] | None = None
        self.upstream: UpstreamConnection | None = None
        self.raw_head: bytes | None = None  # the fast lane: the request head as received
        self.wire_head: bytes | None = None  # the fast lane: raw_head plus X-Forwarded-*
        self.out: list[bytes] | None = None  # response bytes for the client, flushed per read
        self.req_done = False
        self.resp_started = False
        self.resp_done = False
        self.close_after = False
        self.finished = False
        # for the metrics and the access log (see .metrics, .accesslog)
        self.status = 0  # the status sent to the client (0: none yet)
        self.upstream_status = 0  # the status the server answered (0: no server answered)
        self.sent_at = 0.0  # when the request was sent to the (last) server, ctx.clock()
        self.bytes_out = 0  # response bytes for the client (tunnels not counted)
        self.body_in = 0  # request body bytes received
        # X-Request-Id, when an access log is written: the client's or a generated one; "" when the
        # client sent none (the fast lane looks when it reads the head), None when not looked for
        self.request_id: str | None = None
        self.rid_line = b""  # an X-Request-Id header line generated here, added upstream
        self.log_part: msgspec.Raw | None = (
            None  # the request's part of its access log line, once made
        )

    # ----------------------------------------------------------------- the rule's actions

    def start(self) -> None:
        """Route this request and carry out its rule's actions (see :mod:`.dispatch`)."""
        dispatch.start(self)

    def start_simple(self) -> bool:
        """``start`` for the fast lane: False (and nothing done) unless the rule only forwards."""
        return dispatch.start_simple(self)

    # ----------------------------------------------------------------- forwarding

    def forward(self) -> None:
        """Pick a server for this request and send it there (see ``dispatch.forward``)."""
        dispatch.forward(self)

    def attach(self, conn: UpstreamConnection, *, reused: bool) -> None:
        """Send the request head (and any body read so far) on ``conn``."""
        client = self.client
        self.upstream = conn
        self.reused = reused
        ctx = client.ctx
        if reused and self.attempts == 1 and self.wire_head is not None:
            now = self.started  # the fast lane: received and sent in the same callback
        else:
            now = ctx.clock()
        self.sent_at = now
        conn.begin(self, self.head_only, now)
        access_log = ctx.access_log
        if access_log is not None and not self.request_id and not self.rid_line:
            self.rid_line = access_log.request_id(self)
        pick = self.pick
        self.plain = (
            self.keep_alive
            and not self.head_only
            and not self.version_10
            and not self.upgrade
            and not client.ctx.draining
            and (pick is None or (pick.set_cookie is None and not pick.cookie_name))
        )
        if client.flow.write_paused and conn.flow is not None:
            conn.flow.pause(PEER_FULL)
        wire = self.wire_head
        if wire is not None and not self.rid_line:  # the fast lane: precomputed
            if conn.transport is not None:
                conn.transport.write(wire)
            return
        parts = self.head_parts(self.pick.server if self.pick is not None else None)
        if self.body_buf:
            parts += self.body_buf
            self.body_sent = True
            self.body_buf = None
            self.body_buf_size = 0
        if conn.transport is not None:
            conn.transport.write(b"".join(parts))
        if client.flow.reasons & BUFFERING:
            client.flow_resume(BUFFERING)

    def head_parts(self, server: Server | None) -> list[bytes]:
        """The request head for a server (see ``wire.request_head``)."""
        return request_head(self, server)

    def body(self, data: bytes) -> None:
        """A piece of the request body (decoded when chunked)."""
        if self.resp_done or self.finished:
            return
        self.body_in += len(data)
        piece = chunk(data) if self.chunked else data
        conn = self.upstream
        if conn is not None:
            conn.write(piece)
            self.body_sent = True
        else:
            if self.body_buf is None:
                self.body_buf = []
            self.body_buf.append(piece)
            self.body_buf_size += len(piece)
            if self.body_buf_size > self.client.ctx.settings.body_buffer_limit:
                self.client.flow_pause(BUFFERING)

    def request_complete(self) -> None:
        self.req_done = True
        if self.chunked and not self.resp_done:
            if self.upstream is not None:
                self.upstream.write(LAST_CHUNK)
                self.body_sent = True  # a retry would send the head without it: none
            else:
                self.body_buf = [*(self.body_buf or ()), LAST_CHUNK]
        self.maybe_done()

    def request_broken(self, code: int = 400, reason: str = "malformed request body") -> None:
        """The rest of the request body was malformed (or over the body limit: 413): the server
        must not see more of it."""
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()
        self.close_after = True
        if not self.resp_started:
            self.fail(code, reason)
        else:
            self.client.abort()
            self._finish()

    # ----------------------------------------------------------------- the response

    def response_informational(self, conn: UpstreamConnection) -> None:
        if not self.version_10:  # HTTP/1.0 clients do not understand 1xx
            self._emit(informational_head(conn))

    def response_head(self, conn: UpstreamConnection) -> None:
        pick = self.pick
        if pick is not None and self.attempts:
            self.client.ctx.balancer.report_success(pick.key)
        self.resp_started = True
        self.status = self.upstream_status = conn.status
        self._emit(final_head(self, conn))

    def relay_plain(self, data: bytes) -> None:
        """The whole response, as the server sent it (see ``UpstreamConnection._plain``)."""
        self.upstream = None
        client = self.client
        self.resp_started = self.resp_done = True
        self.status = self.upstream_status = int(data[9:12])
        self.bytes_out += len(data)
        transport = client.transport
        if transport is not None and not client.closed:
            transport.write(data)
        pick = self.pick
        if self.req_done and not self.finished:  # the usual end, without the general path
            self.finished = True
            if pick is not None:
                self.pick = None
                client.ctx.balancer.answered(pick.key)
            metrics = client.ctx.metrics
            if metrics is not None:
                metrics.done(self, pick)
            client.exchange_done(self)
            return
        if pick is not None:
            client.ctx.balancer.report_success(pick.key)
        if not self.req_done:
            self.close_after = True
        self.maybe_done()

    def response_body(self, data: bytes) -> None:
        self._emit(chunk(data) if self.resp_chunked else data)

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = None
            self.client.write_many(out)

    def _emit(self, data: bytes) -> None:
        self.bytes_out += len(data)
        out = self.out
        if out is None:
            self.out = [data]
        else:
            out.append(data)

    def response_complete(self) -> None:
        self.upstream = None
        if self.resp_chunked:
            self._emit(LAST_CHUNK)
        self.flush()
        self.resp_done = True
        if not self.req_done:
            self.close_after = True
        self.maybe_done()

    # ----------------------------------------------------------------- failures

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        """``conn`` closed while serving this exchange."""
        self.upstream = None
        if self.finished:
            return
        if conn.tunnel:
            self.client.close()
            self._finish()
            return
        if self.resp_started:
            if conn.until_close:
                self.response_complete()
            else:  # the response was cut short: the client must see it too
                self.flush()
                self.client.abort()
                self._finish()
            return
        ctx = self.client.ctx
        pick = self.pick
        # a kept-alive connection found closed (the server closed it idle, or restarted) is not
        # the server's failure: the request is tried again, on a new connection, without using
        # up a retry (the next pooled one may be closed too); a new connection lost counts
        stale = self.reused
        retry = (
            not conn.got_bytes
            and not self.body_sent
            and not self.upgrade
            and self.method in IDEMPOTENT
            and (stale or self.attempts <= ctx.settings.max_retries)
        )
        if pick is not None:
            ctx.balancer.release(pick.key)
            self.pick = None
            if not stale:
                ctx.balancer.report_failure(pick.key)
                self.tried = self.tried | {pick.key}
        if retry:
            if stale:
                self.attempts -= 1
                self.fresh = True
            self.forward()
        else:
            self.fail(502, "the server closed the connection before answering")

    def upstream_broken(self, conn: UpstreamConnection, code: int, reason: str) -> None:
        self.upstream = None
        if self.finished:
            return
        if self.resp_started:
            self.flush()
            self.client.abort()
            self._finish()
        else:
            self.fail(code, reason)

    def check_timeout(self, now: float) -> None:
        conn = self.upstream
        if conn is None or conn.got_bytes or conn.tunnel:
            return
        timeout = self.client.ctx.settings.response_timeout
        if now - conn.sent_at > timeout:
            self.upstream = None
            conn.abort()
            # a server that hangs leaves rotation like one that refuses (passive check)
            self.client.ctx.balancer.report_failure(conn.key)
            self.fail(504, f"no response from {conn.key} within {timeout:g} s")

    def client_lost(self) -> None:
        """The client went away: stop everything for this exchange."""
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            if conn.tunnel:
                conn.exchange = None
                conn.close()
            else:
                conn.abort()
        self._finish()

    # ----------------------------------------------------------------- answers of our own

    def respond(self, code: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
        """Answer here (a Redirect, a FixedResponse, an error)."""
        if self.resp_started or self.finished:
            return
        close = (
            not self.keep_alive
            or not self.req_done
            or self.client.ctx.draining
            or bool(self.upgrade)
            or self.close_after
        )
        self.status = code
        self._emit(simple_response(code, body, close=close, extra=extra, head_only=self.head_only))
        self.flush()
        self.resp_started = self.resp_done = True
        self.close_after = close
        self.maybe_done()

    def fail(self, code: int, reason: str) -> None:
        self.reason = reason
        if self.resp_started:
            self.client.abort()
            self._finish()
            return
        self.respond(code, error_body(code, reason), [])

    # ----------------------------------------------------------------- tunnel (after a 101)

    def tunnel_to_server(self, data: bytes) -> None:
        conn = self.upstream
        if conn is not None and conn.tunnel:
            conn.write(data)
        else:
            if self.tunnel_buf is None:
                self.tunnel_buf = []
            self.tunnel_buf.append(data)
            self.client.flow_pause(BUFFERING)

    def tunnel_to_client(self, data: bytes) -> None:
        self.client.write(data)

    def start_tunnel(self, rest: bytes) -> None:
        conn = self.upstream
        assert conn is not None
        if self.pick is not None:
            self.client.ctx.balancer.report_success(self.pick.key)
        if rest:
            self.client.write(rest)
        if self.tunnel_buf:
            conn.write(b"".join(self.tunnel_buf))
            self.tunnel_buf = None
        self.client.start_tunnel(self)

    # ----------------------------------------------------------------- the end

    def maybe_done(self) -> None:
        if self.resp_done and (self.req_done or self.close_after) and not self.finished:
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        pick = self.pick
        ctx = self.client.ctx
        if pick is not None:
            self.pick = None
            ctx.balancer.release(pick.key)
        metrics = ctx.metrics
        if metrics is not None:
            metrics.done(self, pick)
        self.client.exchange_done(self)
