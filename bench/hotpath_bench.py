"""The data plane's Python hot path per request, without sockets: CPU microseconds per request.

    uv run python bench/hotpath_bench.py [--requests N]

One client connection and two pooled upstream connections on in-memory transports (writes are
kept in a list, nothing is sent anywhere), the benchmark's rule (host demo.domain.ingress.top,
prefix /path, 80/20 over two server groups). Each request is fed to the client connection as
wrk sends it, and an nginx-like response to the upstream connection that got it. Measured with
``time.process_time`` (CPU time of this process), best of 7 batches, for:

- ``repeat``: the same request every time (keep-alive clients, wrk): the request and response
  memos of the fast lane;
- ``varying``: two requests in turn (the memo never matches): the fast lane's checks each time;
- ``repeat+metrics`` and ``repeat+metrics+log``: ``repeat`` with the worker's counters, and with
  the access log as well (records kept in memory and written to /dev/null).

What a real worker adds on top (uvloop's reads and writes, the system calls) is measured by
``bench/run.py``; this isolates the part albingress's own Python code costs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from albingress.dataplane.accesslog import AccessLog
from albingress.dataplane.context import WorkerContext
from albingress.dataplane.downstream import ClientConnection
from albingress.dataplane.metrics import WorkerMetrics
from albingress.dataplane.settings import ProxySettings
from albingress.dataplane.upstream import UpstreamConnection
from albingress.ir import (
    IR,
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
    server_key,
)

HOST = "demo.domain.ingress.top"
REQUEST = b"GET /path HTTP/1.1\r\nHost: demo.domain.ingress.top\r\n\r\n"
OTHER = b"GET /path/x HTTP/1.1\r\nHost: demo.domain.ingress.top\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 06:17:45 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nA"
)


class MemoryTransport:
    """Enough of an asyncio transport for the proxy's connections; keeps what is written."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.written.extend(parts)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return self.peer if name == "peername" else None


def bench_ir() -> IR:
    groups = tuple(
        ServerGroup(gid, gid, GroupSource.SERVER_GROUP, Protocol.HTTP, Scheduler.WRR, (server,))
        for gid, server in (
            ("sgp-a", Server("127.0.1.1", 8080, 100, "a")),
            ("sgp-b", Server("127.0.1.2", 8080, 100, "b")),
        )
    )
    forward = ForwardAction((WeightedGroup("sgp-a", 80), WeightedGroup("sgp-b", 20)))
    rule = Rule("bench/r0", "bench", 10, HOST, PathMatch(PathType.PREFIX, "/path"), (), (forward,))
    return IR((Listener(80, "HTTP", (rule,)),), groups)


async def measure(mode: str, requests: int) -> float:
    """CPU microseconds per request in ``mode`` (see the module docstring)."""
    ctx = WorkerContext(ProxySettings())
    ctx.apply(bench_ir(), 1)
    log = None
    if mode.endswith("+log"):
        log = AccessLog(path="/dev/null")
        ctx.access_log = log
    if "+metrics" in mode:
        ctx.metrics = WorkerMetrics(metrics=True, access_log=log)
    client = ClientConnection(ctx, 80)
    client_transport = MemoryTransport(("127.0.0.1", 50000))
    client.connection_made(client_transport)  # type: ignore[arg-type]
    ir = bench_ir()
    for key in (server_key(g.id, s.address, s.port) for g in ir.server_groups for s in g.servers):
        conn = UpstreamConnection(ctx.pool, key)
        conn.connection_made(MemoryTransport(("127.0.1.1", 8080)))  # type: ignore[arg-type]
        ctx.pool.put(conn)
    sequence = [REQUEST, OTHER] if mode == "varying" else [REQUEST]

    def one(i: int) -> None:
        client.data_received(sequence[i % len(sequence)])
        ex = client.current
        assert ex is not None and ex.upstream is not None
        ex.upstream.data_received(RESPONSE)
        if len(client_transport.written) > 1000:
            client_transport.written.clear()
            for conns in ctx.pool.idle.values():
                for conn in conns:
                    assert conn.transport is not None
                    conn.transport.written.clear()  # type: ignore[attr-defined]

    for i in range(2000):  # warm-up: memos and caches filled
        one(i)
    batch = max(1, requests // 7)
    best = float("inf")
    for _ in range(7):
        start = time.process_time()
        for i in range(batch):
            one(i)
        best = min(best, time.process_time() - start)
    assert client.current is None and ctx.requests >= 2000 + 7 * batch
    if log is not None:
        log.close()
    return best / batch * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=140_000, help="per mode (140000)")
    args = parser.parse_args()
    print("mode                     CPU us per request")
    for mode in ("repeat", "varying", "repeat+metrics", "repeat+metrics+log"):
        us = asyncio.run(measure(mode, args.requests))
        print(f"{mode:<24} {us:8.2f}")


if __name__ == "__main__":
    main()
