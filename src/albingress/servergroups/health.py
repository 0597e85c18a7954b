"""Active health checks: one asyncio loop in the supervisor probes every server of every group.

The supervisor owns one :class:`HealthChecker`. It hands it each new IR with :meth:`update`,
runs :meth:`HealthChecker.run` as a task, and forwards the set of unhealthy server keys
(:func:`albingress.ir.server_key`) that ``on_change`` receives to every worker, which takes
those servers out of rotation. ``ListServerGroupServers`` reads :meth:`HealthChecker.status`.

What a check is, per :class:`albingress.ir.HealthCheck` of the server's group:

- ``HTTP``: a fresh TCP connection to ``address:connect_port`` (0 = the server's port), one
  HTTP/1.0-style request ``METHOD path`` with ``Host: host`` (or the server address) and
  ``Connection: close``; success when the status line arrives within ``timeout`` and its class
  (``http_2xx`` ... ``http_5xx``) is in ``codes``. Only the status line is read.
- ``HTTPS``: the same over TLS, without certificate or host name verification (as ALB does).
- ``TCP``: success when the connection is accepted within ``timeout``.
- ``gRPC``: checked like ``TCP`` (a connect only): this checker speaks no HTTP/2, so it cannot
  send a gRPC health request; a server that accepts connections counts as healthy.

A refused connection, a reset, a timeout, or an unparsable status line are failures.
``unhealthy_threshold`` consecutive failures make a healthy server unhealthy;
``healthy_threshold`` consecutive successes make an unhealthy one healthy again.

**New servers start healthy.** ALB keeps a new server out of rotation until it has passed
``healthy_threshold`` checks; we choose the opposite so that a fresh start (or a supervisor
restart) never black-holes traffic while the first checks run. A server that is down is
therefore taken out within ``interval x unhealthy_threshold`` (plus one interval for the first
check to come around), the same bound as for a server that goes down later. (A server that
hangs rather than refuses adds the check ``timeout`` to that bound: the last failing check has to
time out first.) Checks run at a fixed rate: each is due one interval after the previous one was
due, whatever the previous one took.

Cost: checks are scheduled on one heap; each server's first check is spread over its interval by
a hash of its key (so 1,000 servers do not fire at once); at most ``max_concurrency`` run at a
time (the others wait their turn, oldest first); each is a raw :class:`asyncio.Protocol` (no
HTTP client library). A server whose check settings change keeps its health state (counters
restart); one that leaves the IR, or whose group disables checks, is forgotten and reported as
``"Unused"``.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from albingress.ir import IR, HealthCheck, server_key

__all__ = ["HealthChecker", "parse_status_line", "status_allowed"]

log = logging.getLogger(__name__)

AVAILABLE = "Available"
UNAVAILABLE = "Unavailable"
UNUSED = "Unused"

_DEFAULT_CODES = ("http_2xx", "http_3xx")
# Checks due within this many seconds are started together: fewer loop wake-ups. Each server
# keeps its fixed rate (the next check is due one interval after the previous *due* time).
_QUANTUM = 0.01
_MAX_STATUS_LINE = 1024


def parse_status_line(data: bytes) -> int | None:
    """The status code of an HTTP/1.x status line (``HTTP/1.1 200 OK``), or None if malformed."""
    line = data.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        return None
    code = parts[1]
    if len(code) != 3 or not code.isdigit():
        return None
    return int(code)


def status_allowed(status: int, codes: tuple[str, ...]) -> bool:
    """Whether ``status`` is in one of ``codes`` (``http_2xx`` ... ``http_5xx``)."""
    return f"http_{status // 100}xx" in (codes or _DEFAULT_CODES)


def first_delay(key: str, interval: float) -> float:
    """Where in its first interval a server's first check falls: spread by a hash of its key."""
    return (zlib.crc32(key.encode()) % 1000) / 1000.0 * interval


@dataclass(frozen=True, slots=True)
class _Probe:
    """What to check, derived from a server and its group's settings (compared on update)."""

    address: str
    port: int  # the port checked: connect_port, or the server's port
    check: HealthCheck


class _Target:
    """One server's check state. Mutable; lives only inside the checker."""

    __slots__ = ("failures", "gen", "group_id", "healthy", "key", "probe", "request", "successes")

    def __init__(self, key: str, group_id: str, probe: _Probe, gen: int) -> None:
        self.key = key
        self.group_id = group_id
        self.probe = probe
        self.gen = gen  # bumped when the probe changes; stale heap entries and results are dropped
        self.healthy = True
        self.successes = 0
        self.failures = 0
        self.request = _build_request(probe)

    def record(self, ok: bool) -> bool:
        """Count one check result; True when the server's health flips."""
        hc = self.probe.check
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.healthy and self.successes >= hc.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.successes = 0
            self.failures += 1
            if self.healthy and self.failures >= hc.unhealthy_threshold:
                self.healthy = False
                return True
        return False


def _clean(text: str) -> str:
    """``text`` without control characters: a check's settings can never add a header line."""
    return "".join(ch for ch in text if ch >= " " and ch != "\x7f").strip()


def _build_request(probe: _Probe) -> bytes | None:
    """The bytes an HTTP(S) check sends; None for a connect-only check (TCP, gRPC)."""
    hc = probe.check
    if hc.protocol.upper() not in ("HTTP", "HTTPS"):
        return None
    host = _clean(hc.host) or (f"[{probe.address}]" if ":" in probe.address else probe.address)
    method = _clean(hc.method.upper()) or "HEAD"
    path = _clean(hc.path).replace(" ", "%20") or "/"
    extra = "Content-Length: 0\r\n" if method == "POST" else ""
    return (
        f"{method} {path} HTTP/1.0\r\nHost: {host}\r\n"
        f"User-Agent: albingress-health-check\r\nAccept: */*\r\n{extra}Connection: close\r\n\r\n"
    ).encode("latin-1", "replace")


class _ProbeProtocol(asyncio.Protocol):
    """Sends the request (if any) and resolves with the status code (0 for connect-only)."""

    def __init__(self, request: bytes | None, done: asyncio.Future[int]) -> None:
        self.request = request
        self.done = done
        self.buf = b""
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.request is None:
            self._finish(0)
        else:
            transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\n" in self.buf or len(self.buf) > _MAX_STATUS_LINE:
            status = parse_status_line(self.buf)
            if status is None:
                self._fail(ValueError(f"malformed status line {self.buf[:80]!r}"))
            else:
                self._finish(status)

    def eof_received(self) -> bool:
        self._fail(ConnectionError("closed before a status line"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("closed before a status line"))

    def _finish(self, status: int) -> None:
        if not self.done.done():
            self.done.set_result(status)
        self.close()

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class HealthChecker:
    """Runs the active health checks of an IR; see the module docstring for the semantics.

    Not thread-safe: call :meth:`update` from the thread that runs the event loop of
    :meth:`run` (or before it starts). ``address_allowed``, when given, is asked before every
    connection; an address it refuses is never contacted and its checks count as failures (tests
    use it to make sure nothing leaves loopback).
    """

    def __init__(
        self,
        on_change: Callable[[frozenset[str]], None],
        clock: Callable[[], float] = time.monotonic,
        *,
        max_concurrency: int = 512,
        address_allowed: Callable[[str], bool] | None = None,
    ) -> None:
        self._on_change = on_change
        self._clock = clock
        self._max_concurrency = max_concurrency
        self._address_allowed = address_allowed
        self._targets: dict[str, _Target] = {}
        self._heap: list[tuple[float, int, str, int]] = []  # (due, seq, key, gen)
        self._seq = 0
        self._gen = 0
        self._unhealthy: frozenset[str] = frozenset()
        self._wake: asyncio.Event | None = None
        self._sleep_until = float("inf")
        self._tasks: set[asyncio.Task[None]] = set()
        # Checks that came due while max_concurrency were running: started, oldest first, as
        # running ones end (so a black-holed group delays the others' checks but never drops one).
        self._waiting: deque[tuple[_Target, int, float]] = deque()
        self._stopping = False
        self._tls: ssl.SSLContext | None = None
        self.checks_done = 0  # total checks completed (for benchmarks and metrics)

    # ------------------------------------------------------------------ public

    def update(self, ir: IR) -> None:
        """Take a new config: start, stop or retune checks; unchanged servers keep their state."""
        now = self._clock()
        wanted: dict[str, tuple[str, _Probe]] = {}
        for group in ir.server_groups:
            hc = group.health_check
            if not hc.enabled:
                continue
            for srv in group.servers:
                port = hc.connect_port or srv.port
                key = server_key(group.id, srv.address, srv.port)
                wanted[key] = (group.id, _Probe(srv.address, port, hc))
        for key in list(self._targets):
            if key not in wanted:
                del self._targets[key]
        for key, (group_id, probe) in wanted.items():
            target = self._targets.get(key)
            if target is not None and target.probe == probe:
                continue
            self._gen += 1
            if target is None:
                target = _Target(key, group_id, probe, self._gen)
                self._targets[key] = target
            else:  # retuned: keep its health, restart the counting under the new settings
                target.probe = probe
                target.request = _build_request(probe)
                target.gen = self._gen
                target.successes = target.failures = 0
            self._schedule(target, now + first_delay(key, probe.check.interval))
        self._publish()

    async def run(self) -> None:
        """Check servers as they come due, until cancelled."""
        self._wake = asyncio.Event()
        self._stopping = False
        try:
            while True:
                now = self._clock()
                heap = self._heap
                while heap and heap[0][0] <= now + _QUANTUM:
                    due, _, key, gen = heapq.heappop(heap)
                    target = self._targets.get(key)
                    if target is None or target.gen != gen:
                        continue  # removed or retuned since it was scheduled
                    self._start_check(target, due)
                delay = heap[0][0] - now if heap else None
                self._sleep_until = now + delay if delay is not None else float("inf")
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            self._stopping = True
            self._waiting.clear()
            self._sleep_until = float("inf")
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def status(self, group_id: str, address: str, port: int) -> str:
        """``"Available"``, ``"Unavailable"``, or ``"Unused"`` when the server has no check."""
        target = self._targets.get(server_key(group_id, address, port))
        if target is None:
            return UNUSED
        return AVAILABLE if target.healthy else UNAVAILABLE

    def unhealthy(self) -> frozenset[str]:
        """Keys (:func:`albingress.ir.server_key`) of the servers currently unhealthy."""
        return self._unhealthy

    # ------------------------------------------------------------------ scheduling

    def _schedule(self, target: _Target, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, target.key, target.gen))
        if due < self._sleep_until and self._wake is not None:
            self._wake.set()

    def _start_check(self, target: _Target, due: float) -> None:
        if len(self._tasks) >= self._max_concurrency:
            self._waiting.append((target, target.gen, due))
            return
        self._spawn(target, target.gen, due)

    def _spawn(self, target: _Target, gen: int, due: float) -> None:
        task = asyncio.get_running_loop().create_task(self._check(target, gen, due))
        self._tasks.add(task)
        task.add_done_callback(self._check_done)

    def _check_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("health check failed unexpectedly", exc_info=task.exception())
        while self._waiting and not self._stopping and len(self._tasks) < self._max_concurrency:
            target, gen, due = self._waiting.popleft()
            if self._targets.get(target.key) is target and target.gen == gen:
                self._spawn(target, gen, due)

    async def _check(self, target: _Target, gen: int, due: float) -> None:
        ok = await self._probe(target.probe, target.request)
        self.checks_done += 1
        if self._targets.get(target.key) is not target or target.gen != gen:
            return  # removed or retuned while the check ran
        if target.record(ok):
            log.info(
                "health check: %s is now %s",
                target.key,
                "healthy" if target.healthy else "unhealthy",
            )
            self._publish()
        interval = target.probe.check.interval
        now = self._clock()
        nxt = due + interval
        if nxt < now:  # the check took longer than an interval: skip the missed turns
            nxt = now + (due - now) % interval
        self._schedule(target, nxt)

    def _publish(self) -> None:
        unhealthy = frozenset(k for k, t in self._targets.items() if not t.healthy)
        if unhealthy == self._unhealthy:
            return
        self._unhealthy = unhealthy
        try:
            self._on_change(unhealthy)
        except Exception:
            log.exception("health check: on_change callback failed")

    # ------------------------------------------------------------------ probing

    async def _probe(self, probe: _Probe, request: bytes | None) -> bool:
        """One check; True on success. Never raises (except on cancellation)."""
        if self._address_allowed is not None and not self._address_allowed(probe.address):
            log.warning("health check: address %s not allowed; counted as a failure", probe.address)
            return False
        hc = probe.check
        tls: ssl.SSLContext | None = None
        if hc.protocol.upper() == "HTTPS":
            if self._tls is None:
                self._tls = _tls_context()
            tls = self._tls
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        protocol = _ProbeProtocol(request, done)
        try:
            async with asyncio.timeout(hc.timeout):
                await loop.create_connection(
                    lambda: protocol,
                    probe.address,
                    probe.port,
                    ssl=tls,
                    server_hostname=(hc.host or "") if tls is not None else None,
                )
                status = await done
        except (OSError, ValueError, TimeoutError, ssl.SSLError):
            return False
        finally:
            protocol.close()
            if not done.done():
                done.cancel()
            elif not done.cancelled():
                done.exception()  # mark retrieved
        return request is None or status_allowed(status, hc.codes)
