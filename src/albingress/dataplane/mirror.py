"""TrafficMirror: a copy of a request to a server of each mirror group, its answer discarded.

A mirror never delays, changes or fails the request it copies: it is sent once the main request
is routed, over the same connection pools, and whatever happens to it (refused, timed out,
malformed answer) is only counted. What is copied: requests without a body, and requests whose
whole body (at most ``settings.body_buffer_limit`` bytes) was read before the request started;
a request still streaming its body is not mirrored (``WorkerContext.mirrors_skipped``). At most
``MAX_IN_FLIGHT`` mirrors per worker are in flight; beyond that new ones are skipped too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from albingress.dataplane.balancer import PickContext
from albingress.dataplane.upstream import UpstreamConnection

if TYPE_CHECKING:
    from albingress.dataplane.context import WorkerContext
    from albingress.dataplane.exchange import Exchange

MAX_IN_FLIGHT = 1000


class _NoFlow:
    """A mirror has no client: back-pressure from its server pauses nothing."""

    def flow_pause(self, reason: int) -> None:
        pass

    def flow_resume(self, reason: int) -> None:
        pass


_NO_FLOW = _NoFlow()


class MirrorSink:
    """Receives a mirror's response on an upstream connection and throws it away."""

    plain = True  # a whole plain response may skip the parser
    upgrade = b""

    def __init__(self, ctx: WorkerContext, key: str, head_only: bool) -> None:
        self.ctx = ctx
        self.key = key
        self.head_only = head_only
        self.plain = not head_only
        self.conn: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = False

    @property
    def client(self) -> _NoFlow:
        return _NO_FLOW

    def send(self, conn: UpstreamConnection, data: bytes) -> None:
        self.conn = conn
        conn.begin(self, self.head_only, self.ctx.clock())
        if conn.transport is not None:
            conn.transport.write(data)

    def _end(self, ok: bool) -> None:
        if self.done:
            return
        self.done = True
        self.conn = None
        self.ctx.mirrors.discard(self)
        if ok:
            self.ctx.mirrors_answered += 1
        else:
            self.ctx.mirrors_failed += 1

    # what an upstream connection calls
    def response_informational(self, conn: UpstreamConnection) -> None:
        pass

    def response_head(self, conn: UpstreamConnection) -> None:
        pass

    def response_body(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def response_complete(self) -> None:
        self._end(True)

    def relay_plain(self, data: bytes) -> None:
        self._end(True)

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        self._end(conn.got_bytes and conn.until_close)

    def upstream_broken(self, conn: UpstreamConnection, code: int, reason: str) -> None:
        self._end(False)

    def start_tunnel(self, rest: bytes) -> None:  # never asked for: upgrade is empty
        self._end(False)

    def tunnel_to_client(self, data: bytes) -> None:
        pass

    def check_timeout(self, now: float) -> None:
        conn = self.conn
        timeout = self.ctx.settings.response_timeout
        if conn is not None and not conn.got_bytes and now - conn.sent_at > timeout:
            conn.abort()
            self._end(False)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.conn is not None:
            self.conn.abort()
        self._end(False)


def mirror(ex: Exchange, group_ids: tuple[str, ...]) -> None:
    """Send a copy of ``ex`` to one server of each group in ``group_ids``."""
    ctx = ex.client.ctx
    body: list[bytes] = []
    if ex.body_buf_size or ex.chunked or ex.upgrade:
        if not ex.req_done or ex.upgrade or ex.body_buf is None:
            ctx.mirrors_skipped += len(group_ids)
            return
        body = ex.body_buf
    client = ex.client
    pctx = PickContext(client.client_ip, ex.path, ex.query, None)
    for group_id in group_ids:
        if len(ctx.mirrors) >= MAX_IN_FLIGHT:
            ctx.mirrors_skipped += 1
            continue
        pick = ctx.balancer.pick_in_group(group_id, pctx)
        if pick is None:
            ctx.mirrors_failed += 1
            continue
        data = b"".join([*ex.head_parts(pick.server), *body])
        sink = MirrorSink(ctx, pick.key, ex.head_only)
        ctx.mirrors.add(sink)
        conn = ctx.pool.take(pick.key, pick.tls)
        if conn is not None:
            sink.send(conn, data)
        else:
            sink.task = asyncio.get_running_loop().create_task(
                _connect(sink, pick.server.address, pick.server.port, data, pick.tls)
            )


async def _connect(sink: MirrorSink, host: str, port: int, data: bytes, tls: bool) -> None:
    try:
        conn = await sink.ctx.pool.connect(sink.key, host, port, tls)
    except (OSError, TimeoutError):
        sink.task = None
        sink._end(False)
        return
    sink.task = None
    if sink.done:
        conn.close()
        return
    sink.send(conn, data)
