"""The access log: one JSON line per request, written by each worker, off the hot path.

Where the lines go (``--access-log``): ``-`` (the default) is the supervisor's standard output,
``off`` writes nothing, anything else is a file path. Each worker writes its own lines itself:
its own stdout is the control channel to the supervisor, so for ``-`` the supervisor hands every
worker a duplicate of its standard output (an inherited descriptor, ``--access-log-fd``); a file
is opened by each worker with ``O_APPEND``. Sending the lines through the supervisor instead
would make one process parse and re-write every worker's traffic.

Cost on the hot path: :meth:`AccessLog.record` formats one line (an f-string; strings escaped by
the json module's C escaper) and appends it to a list. Every 100 ms, or once 64 KiB are waiting,
the list is joined and handed to a writer thread, so a slow or stuck destination (a pipe nobody
reads, a full disk) never blocks serving. Writes are cut at line boundaries into pieces of at
most ``PIPE_BUF`` bytes, so lines of several workers sharing one pipe never interleave.

Failures are reported and serving goes on: a write error is logged once (on stderr) until
writing works again; lines that cannot be written are dropped and counted, as are lines dropped
because more than 8 MiB are waiting (see :meth:`AccessLog.stats`, exported as metrics). A file
that cannot be opened is tried again every 5 seconds.

Fields: ``time`` (UTC, ms), ``client``, ``listener``, ``method``, ``host``, ``path``, ``query``,
``status`` (sent), ``upstream_status`` (from the server; null when none answered), ``rule``,
``ingress``, ``server_group`` (the Service's ``ns/name:port`` or the group id), ``server``
(address:port), ``duration`` and ``upstream_duration`` (seconds; null when no server was asked),
``bytes_in`` (request head and body), ``bytes_out`` (response bytes sent, tunnels excepted),
``retries``, ``request_id`` (the request's X-Request-Id, or one generated here and forwarded to
the server as X-Request-Id).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _q
from typing import TYPE_CHECKING, Any

from albingress.ir import GroupSource

if TYPE_CHECKING:
    import asyncio

    from albingress.dataplane.balancer import Pick
    from albingress.dataplane.exchange import Exchange

log = logging.getLogger("albingress.accesslog")

FLUSH_INTERVAL = 0.1  # seconds
FLUSH_BYTES = 64 << 10
MAX_PENDING = 8 << 20  # bytes handed to the writer and not yet written
REOPEN_DELAY = 5.0  # seconds between attempts to open a file that failed
PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic


def parse_destination(value: str) -> str | None:
    """``--access-log`` value: None for ``off``, ``-`` for stdout, else the path."""
    text = value.strip()
    if text.lower() in ("off", "none", ""):
        return None
    return text


class AccessLog:
    """One worker's access log: ``fd`` (inherited, not closed here) or ``path`` (opened here)."""

    def __init__(
        self,
        *,
        path: str | None = None,
        fd: int | None = None,
        wall: Callable[[], float] = time.time,
        prefix: str | None = None,
    ) -> None:
        if (path is None) == (fd is None):
            raise ValueError("exactly one of path and fd")
        self.path = path
        self.fd = fd
        self.own_fd = False
        self.wall = wall
        self.buf: list[str] = []
        self.size = 0
        self.lines = 0  # lines written
        self.dropped = 0  # lines given up (write failed, or too much waiting)
        self.failures = 0  # write or open errors
        self.error = ""  # the last error, "" once writing works again
        self.pending = 0  # bytes handed to the writer thread, not yet written
        self._id_prefix = prefix if prefix is not None else os.urandom(8).hex()
        self._id_next = 0
        self._sec = -1
        self._sec_text = ""
        self._is_pipe = False
        self._next_open = 0.0
        self._queue: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if fd is not None:
            self._is_pipe = _is_pipe(fd)

    # ----------------------------------------------------------------- the hot path

    def record(
        self, ex: Exchange, pick: Pick | None, status: int, duration: float, upstream: float
    ) -> None:
        """Format ``ex``'s line and keep it for the next flush."""
        wall = self.wall()
        sec = int(wall)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        client = ex.client
        rule = ex.rule
        if pick is not None:
            group = pick.group
            gname = group.name if group.source is GroupSource.SERVICE else group.id
            server = f"{pick.server.address}:{pick.server.port}"
        else:
            gname = server = ""
        rid = ex.request_id or self._assign_id(ex)
        raw = ex.raw_head
        if raw is not None:
            bytes_in = len(raw) + 2
        else:
            bytes_in = len(ex.method) + len(ex.target) + 12
            for name, value in ex.raw_headers:
                bytes_in += len(name) + len(value) + 4
        bytes_in += ex.body_in
        up_status = ex.upstream_status
        line = (
            f'{{"time":"{self._sec_text}.{int((wall - sec) * 1000):03d}Z",'
            f'"client":{_q(client.client_ip)},"listener":{client.listener_port},'
            f'"method":{_q(ex.method)},"host":{_q(ex.host.decode("latin-1"))},'
            f'"path":{_q(ex.path)},"query":{_q(ex.query)},"status":{status},'
            f'"upstream_status":{up_status if up_status else "null"},'
            f'"rule":{_q(rule.name if rule is not None else "")},'
            f'"ingress":{_q(rule.ingress if rule is not None else "")},'
            f'"server_group":{_q(gname)},"server":{_q(server)},'
            f'"duration":{duration:.6f},'
            f'"upstream_duration":{f"{upstream:.6f}" if upstream >= 0 else "null"},'
            f'"bytes_in":{bytes_in},"bytes_out":{ex.bytes_out},'
            f'"retries":{ex.attempts - 1 if ex.attempts > 1 else 0},"request_id":{_q(rid)}}}\n'
        )
        self.buf.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()

    def request_id(self, ex: Exchange) -> bytes:
        """Set ``ex.request_id``; the header line to add upstream (b"" when the client sent one)."""
        rid = _client_request_id(ex)
        if rid:
            ex.request_id = rid
            return b""
        rid = self._assign_id(ex)
        return b"X-Request-Id: " + rid.encode() + b"\r\n"

    def _assign_id(self, ex: Exchange) -> str:
        rid = _client_request_id(ex)
        if not rid:
            self._id_next += 1
            rid = f"{self._id_prefix}{self._id_next:016x}"
        ex.request_id = rid
        return rid

    # ----------------------------------------------------------------- flushing

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer thread and the periodic flush."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick)

    def _tick(self) -> None:
        self.flush()
        if self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self._tick)

    def flush(self) -> None:
        """Hand what is waiting to the writer thread (or drop it when too much is waiting)."""
        if not self.buf:
            return
        buf, self.buf, self.size = self.buf, [], 0
        data = "".join(buf).encode("utf-8", "replace")
        if self.pending + len(data) > MAX_PENDING:
            self.dropped += len(buf)
            return
        self.pending += len(data)
        if self._thread is None:  # not started (tests): write here
            self._write(data, len(buf))
        else:
            self._queue.put((data, len(buf)))

    def close(self, timeout: float = 2.0) -> None:
        """Flush, let the writer finish (for at most ``timeout`` seconds), close a file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        if self.own_fd and self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def stats(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "dropped": self.dropped,
            "failures": self.failures,
            "error": self.error,
        }

    # ----------------------------------------------------------------- the writer thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._write(*item)

    def _write(self, data: bytes, count: int) -> None:
        try:
            fd = self._open()
            if fd is None:
                self.dropped += count
                return
            if self._is_pipe and len(data) > PIPE_BUF:
                _write_pieces(fd, data)
            else:
                _write_all(fd, data)
        except OSError as exc:
            self._failed(f"cannot write the access log: {exc.strerror or exc}", count)
        else:
            self.lines += count
            if self.error:
                log.warning("access log: writing again (%d lines dropped so far)", self.dropped)
                self.error = ""
        finally:
            self.pending -= len(data)

    def _open(self) -> int | None:
        if self.fd is not None:
            return self.fd
        now = time.monotonic()
        if now < self._next_open or self.path is None:
            return None
        try:
            self.fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            self._next_open = now + REOPEN_DELAY
            self._failed(f"cannot open the access log {self.path}: {exc.strerror or exc}", 0)
            return None
        self.own_fd = True
        self._is_pipe = _is_pipe(self.fd)
        return self.fd

    def _failed(self, message: str, count: int) -> None:
        self.failures += 1
        self.dropped += count
        if not self.error:
            log.error("%s; lines are dropped until it works again, serving goes on", message)
        self.error = message


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_pieces(fd: int, data: bytes) -> None:
    """Whole lines, at most PIPE_BUF bytes per write (a longer line goes alone)."""
    start = 0
    end = len(data)
    while start < end:
        stop = start + PIPE_BUF
        if stop >= end:
            stop = end
        else:
            cut = data.rfind(b"\n", start, stop)
            stop = cut + 1 if cut >= start else data.find(b"\n", stop) + 1 or end
        _write_all(fd, data[start:stop])
        start = stop


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
