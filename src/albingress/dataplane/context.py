"""The state one worker process shares between its connections.

A :class:`WorkerContext` holds the live routing table (swapped as one reference when a new IR
arrives), the balancer, the traffic limiter, the upstream connection pool, the set of client
connections and the clock. Timeouts are not one timer per request: :meth:`WorkerContext.sweep`
runs every ``settings.sweep_interval`` seconds and checks every connection against the clock,
which tests call directly with a fake time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from albingress.dataplane.actions import TrafficLimiter
from albingress.dataplane.balancer import Balancer
from albingress.dataplane.request import MEMO_MAX_BYTES
from albingress.dataplane.routing import RoutingTable
from albingress.dataplane.settings import ProxySettings
from albingress.dataplane.upstream import Pool
from albingress.ir import IR, Rule

if TYPE_CHECKING:
    from albingress.dataplane.accesslog import AccessLog
    from albingress.dataplane.downstream import ClientConnection
    from albingress.dataplane.metrics import WorkerMetrics
    from albingress.dataplane.mirror import MirrorSink
    from albingress.dataplane.request import RequestShape

log = logging.getLogger("albingress.dataplane")

_HOST_PATH_ONLY = frozenset({"Host", "Path"})  # conditions that depend on host and path only
_ROUTE_CACHE_SIZE = 10_000
_SHAPES = 4096  # request shapes kept (WorkerContext.shapes), each at most MEMO_MAX_BYTES long


class WorkerContext:
    """Everything a connection of this worker needs; one instance per worker process."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        share: int = 1,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.loop = loop
        self.table: RoutingTable | None = None  # None until the first config: answer 503
        # (port, host, path) -> rule, when every rule depends on nothing else; else None
        self.route_cache: dict[tuple[int, str, str], Rule | None] | None = None
        self.version = -1
        self.ir: IR | None = None  # the config in use
        self.generation = 0  # moves with every table swapped in (memos of routing check it)
        self.shapes: dict[bytes, RequestShape] = {}  # fast-lane requests checked lately
        self.balancer = Balancer(clock=clock)
        self.limiter = TrafficLimiter(clock, share=share)
        self.pool = Pool(self)
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.mirrors: set[MirrorSink] = set()  # TrafficMirror copies in flight
        self.mirrors_answered = 0
        self.mirrors_failed = 0
        self.mirrors_skipped = 0
        self.requests = 0  # requests answered, for the log and tests
        self.metrics: WorkerMetrics | None = None  # counters and access log; None: neither
        self.access_log: AccessLog | None = None  # also makes requests carry an X-Request-Id

    def apply(self, ir: IR, version: int) -> None:
        """Swap in a new configuration: a new table, the balancer updated in place."""
        table = RoutingTable.build(ir)
        self.balancer.update(ir)
        cacheable = all(
            c.type in _HOST_PATH_ONLY
            for lst in ir.listeners
            for r in lst.rules
            for c in r.conditions
        )
        self.route_cache = {} if cacheable else None
        self.table = table  # one reference: requests already routed keep their rule
        self.generation += 1
        self.version = version
        self.ir = ir

    def apply_servers(self, ir: IR, version: int) -> None:
        """Swap in ``ir``, which differs from the config in use only in servers of groups: the
        balancer is updated; the table, its route cache and the connections' memos stay."""
        self.balancer.update(ir)
        self.version = version
        self.ir = ir

    def route(
        self,
        table: RoutingTable,
        port: int,
        host: str,
        path: str,
        method: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        client_ip: str,
    ) -> Rule | None:
        """``table.route``, remembered per (port, host, path) when nothing else can matter."""
        cache = self.route_cache
        if cache is None or table is not self.table:
            return table.route(port, host, path, method, query, headers, client_ip)
        key = (port, host, path)
        try:
            return cache[key]
        except KeyError:
            pass
        rule = table.route(port, host, path, method, query, headers, client_ip)
        if len(cache) >= _ROUTE_CACHE_SIZE:
            cache.clear()
        cache[key] = rule
        return rule

    def remember_shape(self, data: bytes, shape: RequestShape) -> None:
        """Keep ``shape`` for the same bytes from any client (small requests, a bounded set)."""
        if len(data) > MEMO_MAX_BYTES:
            return
        shapes = self.shapes
        if len(shapes) >= _SHAPES:
            shapes.clear()
        shapes[data] = shape

    def set_unhealthy(self, keys: frozenset[str]) -> None:
        self.balancer.set_unhealthy(keys)

    def sweep(self, now: float | None = None) -> None:
        """Close what has waited too long: idle clients, silent servers, stale pooled ones."""
        if now is None:
            now = self.clock()
        for conn in list(self.connections):
            conn.check_timeouts(now)
        for sink in list(self.mirrors):
            sink.check_timeout(now)
        self.pool.sweep(now)

    def start_drain(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their answer."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    @property
    def busy(self) -> int:
        """Client connections with a request in flight."""
        return sum(1 for c in self.connections if c.busy)
