"""The access log: one JSON line per request, formatted and written outside the worker's loop.

Where the lines go (``--access-log``): ``-`` (the default) is the supervisor's standard output,
``off`` writes nothing, anything else is a file path. A worker's own stdout is the control
channel to the supervisor, so for ``-`` the supervisor hands every worker a duplicate of its
standard output (an inherited descriptor, ``--access-log-fd``); a file is opened with
``O_APPEND`` (several workers append whole lines to one file).

The work is split so that serving pays as little as possible (measured in
``bench/observability_bench.py``):

1. in the worker's hot path, :meth:`AccessLog.record` appends the request's plain values to one
   flat list (no object per request for the garbage collector);
2. every 100 ms (or at 4,096 records) the batch is ``marshal``-ed and handed to a writer thread,
   which sends it as a length-prefixed frame to the worker's log process;
3. the log process (:mod:`.logwriter`, one per worker, started by the worker) formats the JSON
   lines and writes them. It runs on another core: a thread would hold the worker's GIL.

Failures are reported and serving goes on: a destination that cannot be opened or written is
logged once (stderr) until it works again and its lines are dropped and counted
(:mod:`.logwriter`); so are batches dropped because more than 8 MiB wait (a stuck log process),
or because the log process is gone (it is started again after 5 s). The log process sends its
counts back every second; they reach ``/metrics`` with the worker's snapshots
(:meth:`AccessLog.stats`).

Fields: ``time`` (UTC, ms), ``client``, ``listener``, ``method``, ``host``, ``path``, ``query``,
``status`` (sent), ``upstream_status`` (from the server; null when none answered), ``rule``,
``ingress``, ``server_group`` (the Service's ``ns/name:port`` or the group id), ``server``
(address:port), ``duration`` and ``upstream_duration`` (seconds; null when no server was asked),
``bytes_in`` (request head and body), ``bytes_out`` (response bytes sent, tunnels excepted),
``retries``, ``request_id`` (the request's X-Request-Id, or one generated and forwarded to the
server as X-Request-Id).
"""

from __future__ import annotations

import contextlib
import json
import logging
import marshal
import os
import queue
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from albingress.dataplane.logwriter import FIELDS, FRAME, Formatter, Sink
from albingress.ir import GroupSource

if TYPE_CHECKING:
    import asyncio

    from albingress.dataplane.balancer import Pick
    from albingress.dataplane.exchange import Exchange

log = logging.getLogger("albingress.accesslog")

FLUSH_INTERVAL = 0.1  # seconds
FLUSH_RECORDS = 4096
MAX_PENDING = 8 << 20  # bytes handed to the writer thread and not yet sent
REOPEN_DELAY = 5.0  # seconds between attempts to open a destination (or restart the process)
_FLUSH_ITEMS = FLUSH_RECORDS * FIELDS


def parse_destination(value: str) -> str | None:
    """``--access-log`` value: None for ``off``, ``-`` for stdout, else the path."""
    text = value.strip()
    if text.lower() in ("off", "none", ""):
        return None
    return text


# --------------------------------------------------------------------------- the worker's side


class AccessLog:
    """A worker's access log: to ``fd`` (inherited, not closed here) or ``path``."""

    def __init__(
        self, *, path: str | None = None, fd: int | None = None, prefix: str | None = None
    ) -> None:
        if (path is None) == (fd is None):
            raise ValueError("exactly one of path and fd")
        self.path = path
        self.fd = fd
        self.buf: list[Any] = []  # FIELDS values per record, flat
        self.dropped = 0  # records given up before reaching the log process
        self.failures = 0
        self.error = ""
        self.pending = 0  # bytes handed to the writer thread, not yet sent
        self.remote: dict[str, Any] = {}  # the log process's last counts
        self.prefix = prefix if prefix is not None else os.urandom(8).hex()
        self._line_head = b"X-Request-Id: " + self.prefix.encode()
        self._id_next = 0
        self._labels: dict[str, tuple[str, str]] = {}  # pick key -> (group label, server)
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_spawn = 0.0
        self._stats_buf = b""
        self.sink: Sink | None = None  # when not started: format and write here (tests)
        self._formatter = Formatter(self.prefix)

    # ----------------------------------------------------------------- the hot path

    def record(
        self,
        ex: Exchange,
        pick: Pick | None,
        status: int,
        duration: float,
        upstream: float,
        now: float,
    ) -> None:
        """Keep ``ex``'s values for the next batch."""
        rule = ex.rule
        if pick is not None:
            label = self._labels.get(pick.key)
            if label is None:
                label = self._label(pick)
            group, server = label
        else:
            group = server = ""
        raw = ex.raw_head
        bytes_in = (len(raw) + 2 if raw is not None else _head_size(ex)) + ex.body_in
        client = ex.client
        buf = self.buf
        buf += (  # flat: no tuple per record for the garbage collector to track
            now,
            client.client_ip,
            client.listener_port,
            ex.method,
            ex.host,
            ex.path,
            ex.query,
            status,
            ex.upstream_status,
            rule.name if rule is not None else "",
            rule.ingress if rule is not None else "",
            group,
            server,
            duration,
            upstream,
            bytes_in,
            ex.bytes_out,
            ex.attempts,
            ex.request_id or ex.rid_line or self._id_of(ex),
        )
        if len(buf) >= _FLUSH_ITEMS:
            self.flush()

    def _label(self, pick: Pick) -> tuple[str, str]:
        group = pick.group
        label = (
            group.name if group.source is GroupSource.SERVICE else group.id,
            f"{pick.server.address}:{pick.server.port}",
        )
        if len(self._labels) > 100_000:
            self._labels.clear()
        self._labels[pick.key] = label
        return label

    def request_id(self, ex: Exchange) -> bytes:
        """The X-Request-Id line to add upstream: b"" when the client sent one (then kept in
        ``ex.request_id``), else a new id (kept in the line, ``ex.rid_line``, by the caller)."""
        rid = _client_request_id(ex)
        if rid:
            ex.request_id = rid
            return b""
        self._id_next += 1
        return self._line_head + b"%x\r\n" % self._id_next

    def _id_of(self, ex: Exchange) -> str | bytes | int:
        """What identifies ``ex`` in its record: the client's id, the generated line, or a new
        number (an answer of the proxy itself, never forwarded)."""
        rid = ex.request_id or ex.rid_line
        if rid:
            return rid
        rid = _client_request_id(ex)
        if rid:
            return rid
        self._id_next += 1
        return self._id_next

    # ----------------------------------------------------------------- batches

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the log process, the writer thread and the periodic flush."""
        self._loop = loop
        self._spawn()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick)

    def _tick(self) -> None:
        self.flush()
        if self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self._tick)

    def flush(self) -> None:
        """Hand the batch to the writer thread (or drop it when too much is waiting)."""
        buf = self.buf
        if not buf:
            return
        self.buf = []
        if self._thread is None:  # not started: format and write here
            if self.sink is None:
                self.sink = Sink(path=self.path, fd=self.fd)
            self.sink.write(self._formatter.lines(time.time() - time.monotonic(), buf))
            return
        frame = marshal.dumps((time.time() - time.monotonic(), buf))
        if self.pending + len(frame) > MAX_PENDING:
            self.dropped += len(buf) // FIELDS
            return
        self.pending += len(frame)
        self._queue.put(frame)

    def close(self, timeout: float = 2.0) -> None:
        """Flush, let the writer and the log process finish (each within ``timeout`` s)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        proc = self._proc
        if proc is not None:
            if self._loop is not None and proc.stdout is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(proc.stdout.fileno())
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._read_stats()
        if self.sink is not None:
            self.sink.close()

    def stats(self) -> dict[str, Any]:
        sink = self.sink
        remote = sink.stats() if sink is not None else self.remote
        return {
            "lines": int(remote.get("lines", 0)),
            "dropped": self.dropped + int(remote.get("dropped", 0)),
            "failures": self.failures + int(remote.get("failures", 0)),
            "error": self.error or str(remote.get("error", "")),
        }

    # ----------------------------------------------------------------- the log process

    def _spawn(self, from_thread: bool = False) -> None:
        args = [sys.executable, "-m", "albingress.dataplane.logwriter", "--prefix", self.prefix]
        fds: list[int] = []
        if self.fd is not None:
            args += ["--fd", str(self.fd)]
            fds.append(self.fd)
        else:
            args += ["--path", str(self.path)]
        try:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds
            )
        except OSError as exc:
            self._proc = None
            self._next_spawn = time.monotonic() + REOPEN_DELAY
            self._failed(f"cannot start the access log process: {exc}")
            return
        if self._loop is not None and self._proc.stdout is not None:
            os.set_blocking(self._proc.stdout.fileno(), False)
            if from_thread:  # the loop's reader is registered from the loop's own thread
                self._loop.call_soon_threadsafe(self._watch, self._proc)
            else:
                self._watch(self._proc)

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        if self._loop is not None and proc.stdout is not None and proc is self._proc:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.add_reader(proc.stdout.fileno(), self._read_stats)

    def _read_stats(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        try:
            data = os.read(proc.stdout.fileno(), 65536)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, ValueError):
            data = b""
        if not data:  # the process is gone
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(proc.stdout.fileno())
            return
        *lines, self._stats_buf = (self._stats_buf + data).split(b"\n")
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                self.remote = json.loads(line)
                break

    def _run(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                proc = self._proc
                if proc is not None and proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                return
            self._send(frame)
            self.pending -= len(frame)

    def _send(self, frame: bytes) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            if time.monotonic() < self._next_spawn:
                self._lost(frame)
                return
            self._spawn(from_thread=True)
            proc = self._proc
            if proc is None:
                self._lost(frame)
                return
        assert proc.stdin is not None
        try:
            proc.stdin.write(FRAME.pack(len(frame)) + frame)
            proc.stdin.flush()
        except (OSError, ValueError) as exc:
            self._next_spawn = time.monotonic() + REOPEN_DELAY
            self._failed(f"the access log process is gone ({exc})")
            self._lost(frame)
        else:
            self.error = ""

    def _lost(self, frame: bytes) -> None:
        with contextlib.suppress(ValueError, EOFError, TypeError):
            self.dropped += len(marshal.loads(frame)[1]) // FIELDS

    def _failed(self, message: str) -> None:
        self.failures += 1
        if not self.error:
            log.error("%s; lines are dropped until it works again, serving goes on", message)
        self.error = message


def _head_size(ex: Exchange) -> int:
    size = len(ex.method) + len(ex.target) + 12
    for name, value in ex.raw_headers:
        size += len(name) + len(value) + 4
    return size


def _client_request_id(ex: Exchange) -> str:
    raw = ex.raw_head
    if raw is not None:
        at = raw.lower().find(b"\r\nx-request-id:")
        if at < 0:
            return ""
        end = raw.find(b"\r\n", at + 16)
        return raw[at + 16 : end if end >= 0 else len(raw)].strip().decode("latin-1")[:200]
    for name, value in ex.raw_headers:
        if len(name) == 12 and name.lower() == b"x-request-id":
            return value.strip().decode("latin-1")[:200]
    return ""
