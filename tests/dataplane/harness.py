"""Protocol test harness: the proxy's connections on fake transports, a fake clock, no sockets.

:class:`FakeTransport` keeps what is written, calls ``pause_writing`` / ``resume_writing`` on its
protocol around a high-water mark like asyncio does, and records pause/resume of reading.
:class:`Harness` builds a :class:`WorkerContext` for an IR whose new upstream connections are
fake ones too (``Harness.upstreams``), or refused for the server keys in ``Harness.refuse``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from albingress.dataplane.accesslog import AccessLog
from albingress.dataplane.context import WorkerContext
from albingress.dataplane.downstream import ClientConnection
from albingress.dataplane.metrics import WorkerMetrics
from albingress.dataplane.settings import ProxySettings
from albingress.dataplane.upstream import UpstreamConnection
from albingress.ir import (
    IR,
    Action,
    ForwardAction,
    GroupSource,
    Listener,
    PathMatch,
    PathType,
    Protocol,
    Rule,
    Scheduler,
    Server,
    ServerGroup,
    WeightedGroup,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    def __init__(self, peer: tuple[str, int] = ("127.0.0.9", 40000)) -> None:
        self.protocol: Any = None
        self.peer = peer
        self.buffer = bytearray()
        self.high = 64 * 1024
        self.low = 16 * 1024
        self.write_paused = False
        self.reading = True
        self.read_pauses = 0
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.buffer += data
        if not self.write_paused and len(self.buffer) > self.high:
            self.write_paused = True
            self.protocol.pause_writing()

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def take(self) -> bytes:
        """Everything written so far; the peer read it all (the buffer empties)."""
        data = bytes(self.buffer)
        self.buffer.clear()
        if self.write_paused:
            self.write_paused = False
            self.protocol.resume_writing()
        return data

    def pause_reading(self) -> None:
        self.reading = False
        self.read_pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True
        self.aborted = True

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.high, self.low = high, low

    def get_extra_info(self, name: str) -> Any:
        return self.peer if name == "peername" else None


def make_ir(
    servers: list[tuple[str, int]],
    *,
    groups: int = 1,
    pre: tuple[Action, ...] = (),
    final: Action | None = None,
    host: str = "",
    path: str = "/",
) -> IR:
    """One listener (80), one Prefix rule, ``groups`` server groups splitting ``servers``."""
    sgs = []
    for g in range(groups):
        mine = tuple(Server(a, p, 100, a) for a, p in servers[g::groups])
        sgs.append(
            ServerGroup(
                f"sgp-{g}", f"g{g}", GroupSource.SERVER_GROUP, Protocol.HTTP, Scheduler.WRR, mine
            )
        )
    fwd = ForwardAction(tuple(WeightedGroup(sg.id, 100) for sg in sgs))
    rule = Rule(
        "default/web/rules/0/paths/0",
        "default/web",
        10,
        host,
        PathMatch(PathType.PREFIX, path),
        (),
        (*pre, final or fwd),
    )
    return IR((Listener(80, "HTTP", (rule,)),), tuple(sgs))


class Harness:
    def __init__(self, ir: IR | None, settings: ProxySettings | None = None) -> None:
        self.clock = FakeClock()
        self.ctx = WorkerContext(settings or ProxySettings(), clock=self.clock)
        if ir is not None:
            self.ctx.apply(ir, 1)
        self.upstreams: list[tuple[str, UpstreamConnection, FakeTransport]] = []
        self.refuse: set[str] = set()
        self.hang: set[str] = set()  # connects to these never finish
        self.script: list[str] = []  # per connect, in order: "refuse", "hang" or "ok"
        self.cancelled: list[str] = []
        self.connects: list[str] = []
        self.ctx.pool.connect = self._connect  # type: ignore[method-assign]

    async def _connect(
        self, key: str, host: str, port: int, tls: bool = False
    ) -> UpstreamConnection:
        self.connects.append(key)
        await asyncio.sleep(0)
        what = self.script.pop(0) if self.script else "ok"
        if key in self.refuse or what == "refuse":
            raise ConnectionRefusedError(111, "Connection refused")
        if key in self.hang or what == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(key)
                raise
        conn = UpstreamConnection(self.ctx.pool, key)
        t = FakeTransport((host, port))
        t.protocol = conn
        conn.connection_made(t)  # type: ignore[arg-type]
        conn.tls = tls  # a fake transport has no TLS to find
        self.upstreams.append((key, conn, t))
        return conn

    def client(
        self, peer: tuple[str, int] = ("127.0.0.9", 40000)
    ) -> tuple[ClientConnection, FakeTransport]:
        conn = ClientConnection(self.ctx, 80)
        t = FakeTransport(peer)
        t.protocol = conn
        conn.connection_made(t)  # type: ignore[arg-type]
        return conn, t

    def log_to(self, path: str, prefix: str) -> AccessLog:
        """Count requests and write their access log lines to ``path`` (written at each flush:
        not started), request ids made with ``prefix``."""
        log = AccessLog(path=path, prefix=prefix)
        self.ctx.access_log = log
        self.ctx.metrics = WorkerMetrics(access_log=log)
        return log

    @staticmethod
    async def settle(rounds: int = 5) -> None:
        for _ in range(rounds):
            await asyncio.sleep(0)

    def upstream(self) -> tuple[UpstreamConnection, FakeTransport]:
        """The upstream connection serving a request now (else the newest one)."""
        for _, conn, t in reversed(self.upstreams):
            if conn.exchange is not None:
                return conn, t
        _, conn, t = self.upstreams[-1]
        return conn, t


def feed(protocol: Any, data: bytes, *, bytewise: bool = False) -> None:
    if bytewise:
        for i in range(len(data)):
            protocol.data_received(data[i : i + 1])
    else:
        protocol.data_received(data)


def response(body: bytes = b"ok", status: str = "200 OK", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def aio(fn: Any) -> Any:
    """Run an async test function in a fresh event loop."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def split_head(data: bytes) -> tuple[list[bytes], bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), rest
