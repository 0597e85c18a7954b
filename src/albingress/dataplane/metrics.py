"""Worker-side counters: what each finished request adds, and the snapshot sent to the supervisor.

The hot path is one call per finished request (:meth:`WorkerMetrics.done`, from
:mod:`.exchange`): one dict lookup keyed by a tuple ``(listener port, rule name, server key,
status)`` finds a list holding two fixed-bucket histograms (the whole request, and the part from
sending to the server to the end of its answer), where one bucket of each is incremented; the
request count is the sum of the first one's buckets. No label strings are built and no lock is
taken: each worker is single-threaded and owns its counters. :func:`merge` turns the series into
the totals by rule, by server and by status class that are rendered.

Every second, and whenever the supervisor asks (``{"type": "metrics"}`` on the control channel),
the worker writes a cumulative snapshot (:meth:`WorkerMetrics.snapshot`) as one JSON line on its
stdout. The supervisor keeps the latest snapshot of each worker and adds them up
(:func:`merge`); :mod:`albingress.api.metrics` turns the sum into Prometheus text.

Series of rules and servers that a new config no longer has are dropped here
(:meth:`WorkerMetrics.prune`) and filtered again where they are rendered.

Status 499 stands for "the client went away before an answer was sent" (nginx's convention).
"""

from __future__ import annotations

import collections
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from albingress.dataplane.native import speedups
from albingress.ir import IR, server_key

if TYPE_CHECKING:
    from albingress.dataplane.accesslog import AccessLog
    from albingress.dataplane.balancer import Pick
    from albingress.dataplane.exchange import Exchange

# Upper bounds (seconds) of the latency histogram buckets; one more bucket counts the rest (+Inf).
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_NB = len(BUCKETS) + 1  # counts per histogram, the last one for +Inf
RECENT_ERRORS = 20  # errors each worker remembers for the live page
CLIENT_GONE = 499

RequestKey = tuple[int, str, str, str, int]  # port, rule, group id, server key, status
RuleKey = tuple[int, str]  # port, rule


_UP = _NB + 1  # where the upstream histogram starts in a series' list


class WorkerMetrics:
    """The counters of one worker process, and its access log (both optional)."""

    def __init__(
        self,
        *,
        metrics: bool = True,
        access_log: AccessLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = metrics
        self.access_log = access_log
        self.clock = clock
        self.wall = wall
        # (port, rule, server key, status) -> both histograms, one list: _NB request-duration
        # bucket counts, their sum, _NB upstream-duration bucket counts, their sum. The request
        # count is the sum of the first buckets: one dict lookup per request counts everything.
        self.series: dict[tuple[int, str, str, int], list[float]] = {}
        self.retries: dict[RuleKey, int] = {}
        self.errors: collections.deque[list[Any]] = collections.deque(maxlen=RECENT_ERRORS)
        self.seq = 0
        # the same bookkeeping in C when it was built (see _speedups.c): ``done`` is its method
        self.native = _native_observer(self) if clock is time.monotonic else None
        if self.native is not None:
            self.done = self.native.done  # type: ignore[method-assign]

    # ----------------------------------------------------------------- the hot path

    def done(
        self,
        ex: Exchange,
        pick: Pick | None,
        _bisect: Callable[[Sequence[float], float], int] = bisect_left,
        _buckets: tuple[float, ...] = BUCKETS,
    ) -> None:
        """``ex`` is finished; ``pick`` is the server that answered it, if any."""
        now = self.clock()
        status = ex.status or CLIENT_GONE
        rule = ex.rule
        skey = pick.key if pick is not None else ""
        duration = now - ex.started
        sent = ex.sent_at
        upstream = now - sent if sent else -1.0
        if self.enabled:
            port = ex.client.listener_port
            rname = rule.name if rule is not None else ""
            key = (port, rname, skey, status)
            hist = self.series.get(key)
            if hist is None:
                hist = self.series[key] = [0] * _NB + [0.0] + [0] * _NB + [0.0]
            hist[_bisect(_buckets, duration)] += 1
            hist[_NB] += duration
            if upstream >= 0.0:
                hist[_UP + _bisect(_buckets, upstream)] += 1
                hist[_UP + _NB] += upstream
            if ex.attempts > 1 or status >= 500:
                self.rare(ex, pick, status)
        log = self.access_log
        if log is not None:
            log.record(ex, pick, status, duration, upstream, now)

    def rare(self, ex: Exchange, pick: Pick | None, status: int) -> None:
        """What few requests add: retries, and the recent errors the live page shows."""
        port = ex.client.listener_port
        rule = ex.rule
        rname = rule.name if rule is not None else ""
        if ex.attempts > 1:
            rkey = (port, rname)
            self.retries[rkey] = self.retries.get(rkey, 0) + ex.attempts - 1
        if status >= 500:
            skey = pick.key if pick is not None else ""
            self.errors.append(
                [
                    round(self.wall(), 3),
                    port,
                    rname,
                    skey.rpartition("|")[0],
                    skey,
                    status,
                    ex.reason,
                    ex.method,
                    ex.host.decode("latin-1"),
                    ex.path,
                ]
            )

    # ----------------------------------------------------------------- upkeep

    def prune(self, ir: IR) -> None:
        """Forget the series of rules and servers ``ir`` no longer has."""
        rules = {r.name for lst in ir.listeners for r in lst.rules} | {""}
        servers = {
            server_key(g.id, s.address, s.port) for g in ir.server_groups for s in g.servers
        } | {""}
        series = self.series  # changed in place: the C observer holds it
        for key in [k for k in series if k[1] not in rules or k[2] not in servers]:
            del series[key]
        self.retries = {k: v for k, v in self.retries.items() if k[1] in rules}

    def snapshot(self, connections: int = 0, busy: int = 0) -> dict[str, Any]:
        """Everything counted so far (cumulative), JSON-ready."""
        self.seq += 1
        log = self.access_log
        return {
            "type": "metrics",
            "seq": self.seq,
            "connections": connections,
            "busy": busy,
            "series": [[*k, v] for k, v in self.series.items()],
            "retries": [[*k, v] for k, v in self.retries.items()],
            "errors": list(self.errors),
            "log": log.stats() if log is not None else None,
        }


def _native_observer(metrics: WorkerMetrics) -> Any:
    """The C observer doing ``metrics.done`` (and its access log's ``record``), or None: not
    built, or turned off with ALBINGRESS_PURE_PYTHON=1 (to compare, or to rule it out)."""
    native = speedups()
    if native is None:
        return None
    from albingress.dataplane import accesslog
    from albingress.dataplane.balancer import Pick
    from albingress.dataplane.exchange import Exchange

    log = metrics.access_log
    observer = native.Observer(
        exchange_type=Exchange,
        pick_type=Pick,
        buckets=BUCKETS,
        series=metrics.series if metrics.enabled else None,
        rare=metrics.rare,
        log=log is not None,
        part_of=accesslog.exchange_part,
        id_of=log.id_of if log is not None else str,
        head_size=accesslog.head_size,
        encode=accesslog.encode_json,
        flush=log.flush if log is not None else _nothing,
        no_pick=accesslog.NO_PICK,
        flush_lines=accesslog.FLUSH_LINES,
        prefix=log.prefix if log is not None else "",
        record=log.record if log is not None else _nothing,
    )
    if log is not None:
        log.attach(observer)
    return observer


def _nothing() -> None:
    return None


# --------------------------------------------------------------------------- adding up workers


@dataclass(slots=True)
class Totals:
    """The sum of worker snapshots (mutable: built by :func:`merge`)."""

    requests: dict[RequestKey, int] = field(default_factory=dict)
    request_seconds: dict[RuleKey, list[float]] = field(default_factory=dict)
    upstream_seconds: dict[str, list[float]] = field(default_factory=dict)
    retries: dict[RuleKey, int] = field(default_factory=dict)
    errors: list[list[Any]] = field(default_factory=list)
    connections: int = 0
    busy: int = 0
    log_lines: int = 0
    log_dropped: int = 0
    log_failures: int = 0
    log_error: str = ""

    def as_snapshot(self) -> dict[str, Any]:
        """A snapshot-shaped dict of these totals (to keep the counts of a retired worker)."""
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "request_seconds": [[*k, v] for k, v in self.request_seconds.items()],
            "upstream_seconds": [[k, v] for k, v in self.upstream_seconds.items()],
            "retries": [[*k, v] for k, v in self.retries.items()],
            "errors": self.errors,
            "log": {
                "lines": self.log_lines,
                "dropped": self.log_dropped,
                "failures": self.log_failures,
                "error": "",
            },
        }


def _add_hist(into: dict[Any, list[float]], key: Any, values: Sequence[float]) -> None:
    if len(values) != _NB + 1:
        return
    have = into.get(key)
    if have is None:
        into[key] = [float(v) for v in values]
    else:
        for i, v in enumerate(values):
            have[i] += v


def merge(snapshots: Iterable[Mapping[str, Any]], live: bool = True) -> Totals:
    """Add up snapshots; a malformed entry is skipped (a worker's bug must not break a scrape).

    ``live``: whether the gauges (connections) of these snapshots count.
    """
    t = Totals()
    errors: list[list[Any]] = []
    for snap in snapshots:
        try:
            for port, rule, skey, status, values in snap.get("series", ()):
                if len(values) != 2 * _UP:
                    continue
                count = int(sum(values[:_NB]))
                key = (int(port), str(rule), str(skey).rpartition("|")[0], str(skey), int(status))
                t.requests[key] = t.requests.get(key, 0) + count
                _add_hist(t.request_seconds, (int(port), str(rule)), values[:_UP])
                if skey and any(values[_UP : _UP + _NB]):
                    _add_hist(t.upstream_seconds, str(skey), values[_UP:])
            for *k, v in snap.get("requests", ()):  # totals kept for replaced workers
                key = (int(k[0]), str(k[1]), str(k[2]), str(k[3]), int(k[4]))
                t.requests[key] = t.requests.get(key, 0) + int(v)
            for port, rule, values in snap.get("request_seconds", ()):
                _add_hist(t.request_seconds, (int(port), str(rule)), values)
            for skey, values in snap.get("upstream_seconds", ()):
                _add_hist(t.upstream_seconds, str(skey), values)
            for port, rule, n in snap.get("retries", ()):
                rkey = (int(port), str(rule))
                t.retries[rkey] = t.retries.get(rkey, 0) + int(n)
            errors.extend(snap.get("errors", ()))
            if live:
                t.connections += int(snap.get("connections", 0))
                t.busy += int(snap.get("busy", 0))
            log = snap.get("log")
            if isinstance(log, Mapping):
                t.log_lines += int(log.get("lines", 0))
                t.log_dropped += int(log.get("dropped", 0))
                t.log_failures += int(log.get("failures", 0))
                t.log_error = str(log.get("error") or t.log_error)
        except (TypeError, ValueError, IndexError):
            continue
    errors.sort(key=lambda e: e[0] if e and isinstance(e[0], int | float) else 0)
    t.errors = errors[-50:]
    return t
