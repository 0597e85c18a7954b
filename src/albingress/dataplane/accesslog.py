"""The access log: one JSON line per request, made in C and written by a thread.

Where the lines go (``--access-log``): ``-`` (the default) is the supervisor's standard output,
``off`` writes nothing, anything else is a file path. A worker's own stdout is the control
channel to the supervisor, so for ``-`` the supervisor hands every worker a duplicate of its
standard output (an inherited descriptor, ``--access-log-fd``); a file is opened with
``O_APPEND`` (several workers append whole lines to one file).

What serving pays, per request (measured in ``bench/observability_bench.py`` and
``bench/hotpath_bench.py``):

1. the line is written by the C observer (``_speedups.c``, with the metrics' counting, in one
   call per request): the parts that repeat are encoded once and copied (a request's
   ``client`` .. ``ingress``, made once per fast-lane memo of a connection; a server's
   ``server_group`` and ``server``, once per server), the time text once per millisecond; a
   generated request id is made and put in the head for the server in the same C code;
2. without the C part (no compiler at install, or ``ALBINGRESS_PURE_PYTHON=1``) the same line
   is a :class:`Line` (a ``msgspec`` struct the garbage collector does not track) built by
   :meth:`AccessLog.record`, and every batch of them is encoded to JSON lines in one C call;
3. every 100 ms (or at 512 lines) the batch is handed to a writer thread, which writes it (the
   system call releases the GIL), cut at line boundaries into pieces of at most ``PIPE_BUF``
   bytes when the destination is a pipe, so that the lines of several workers sharing one pipe
   never interleave.

Earlier designs, measured and left: the lines formatted in Python in a helper process per worker
(2-3 us a line, plus marshalling: a third of the throughput on a machine with as many busy
processes as cores); every field read and packed in Python into a ``msgspec`` struct (1 us a
request in the hot path, 15% of the throughput of a worker, with the metrics).

Failures are reported and serving goes on: a destination that cannot be opened (tried again
every 5 s) or written is logged once (stderr) until it works again, and its lines are dropped
and counted; so are batches dropped because more than 8 MiB wait for a stuck destination. The
counts reach ``/metrics`` with the worker's snapshots (:meth:`AccessLog.stats`).

Fields, in this order (:data:`FIELDS`): ``time`` (UTC, ms), ``client``, ``listener``,
``method``, ``host``, ``path``, ``query``, ``rule``, ``ingress``, ``server_group`` (the
Service's ``ns/name:port`` or the group id), ``server`` (address:port), ``status`` (sent),
``upstream_status`` (from the server; null when none answered), ``duration_us`` and
``upstream_duration_us`` (microseconds; the latter null when no server was asked), ``bytes_in``
(request head and body), ``bytes_out`` (response bytes sent, tunnels excepted), ``retries``,
``request_id`` (the request's X-Request-Id, or one generated and forwarded to the server as
X-Request-Id).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec

from albingress.dataplane.native import speedups
from albingress.dataplane.wire import client_request_id

if TYPE_CHECKING:
    import asyncio

    from albingress.dataplane.balancer import Pick
    from albingress.dataplane.exchange import Exchange

log = logging.getLogger("albingress.accesslog")

FLUSH_INTERVAL = 0.1  # seconds
FLUSH_LINES = 512  # a batch encodes in about 0.1 ms and stays in the CPU's cache
MAX_PENDING = 8 << 20  # bytes handed to the writer thread and not yet written
REOPEN_DELAY = 5.0  # seconds between attempts to open a destination that failed
PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic
ID_BATCH = 1024  # request ids made at a time


FIELDS = (  # the keys of a line, in order
    "time", "client", "listener", "method", "host", "path", "query", "rule", "ingress",
    "server_group", "server", "status", "upstream_status", "duration_us", "upstream_duration_us",
    "bytes_in", "bytes_out", "retries", "request_id",
)  # fmt: skip


class Line(msgspec.Struct, gc=False):
    """One access log line; the field order is the JSON key order.

    Two fields carry pre-encoded JSON (:class:`msgspec.Raw`, copied as is) that spans several
    keys: ``client`` holds the value of ``client`` and the keys after it up to ``ingress`` (see
    :func:`request_part`: the same for every repeat of a request on a connection, so made once
    per fast-lane memo), ``server_group`` the value of ``server_group`` and ``server`` (see
    :func:`pick_part`: made once per server of a group).
    """

    time: str
    client: msgspec.Raw  # and listener, method, host, path, query, rule, ingress
    server_group: msgspec.Raw  # and server
    status: int
    upstream_status: int | None
    duration_us: int
    upstream_duration_us: int | None
    bytes_in: int
    bytes_out: int
    retries: int
    request_id: str


class _RequestPart(msgspec.Struct, gc=False):
    client: str
    listener: int
    method: str
    host: str
    path: str
    query: str
    rule: str
    ingress: str


encode_json = msgspec.json.encode
_FIRST_KEY = len(b'{"client":')


def request_part(
    client: str, listener: int, method: str, host: str, path: str, query: str, rule: str,
    ingress: str,
) -> msgspec.Raw:  # fmt: skip
    """The ``client`` .. ``ingress`` part of a line: the JSON after ``"client":``."""
    encoded = encode_json(_RequestPart(client, listener, method, host, path, query, rule, ingress))
    return msgspec.Raw(encoded[_FIRST_KEY:-1])


def pick_part(group_label: str, address: str) -> msgspec.Raw:
    """The ``server_group`` and ``server`` part of a line: the JSON after ``"server_group":``."""
    return msgspec.Raw(encode_json(group_label) + b',"server":' + encode_json(address))


NO_PICK = pick_part("", "")  # no server was picked: the proxy answered itself


def exchange_part(ex: Exchange) -> msgspec.Raw:
    """The request part of ``ex``'s line (kept on it: a fast-lane memo reuses it)."""
    rule = ex.rule
    client = ex.client
    part = ex.log_part = request_part(
        client.client_ip,
        client.listener_port,
        ex.method,
        ex.host.decode("latin-1"),
        ex.path,
        ex.query,
        rule.name if rule is not None else "",
        rule.ingress if rule is not None else "",
    )
    return part


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
        self.sink = Sink(path=path, fd=fd)
        self.buf: list[Line] = []
        self.dropped = 0  # lines given up before reaching the writer
        self.failures = 0  # times the destination was found stuck
        self.stuck = ""  # why lines are dropped before the writer, while they are
        # bytes handed to the writer thread and bytes it is done with: each counter has one
        # writer (this thread, the writer thread), so no update is lost between the two
        self.queued = 0
        self.done = 0
        self.prefix = prefix if prefix is not None else os.urandom(8).hex()
        self._id_next = 0  # the last id made
        self._ids: list[str] = []  # made, not yet given
        self._id_lines: list[bytes] = []  # the X-Request-Id lines of those
        escaped = self.prefix.replace("%", "%%")
        self._id_format = escaped + "%x\n"
        self._line_format = b"X-Request-Id: " + escaped.encode("latin-1") + b"%x\r\n\0"
        self._encoder = msgspec.json.Encoder()
        self._offset = time.time() - time.monotonic()  # wall clock minus the records' clock
        self._stamp_until = 0.0  # ``_time`` holds for records before this (monotonic)
        self._time = ""
        self._second = -1
        self._second_text = ""
        self._queue: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._native: Any = None  # the C observer writing the lines instead of record()
        self._writer: Any = None  # the C writer thread (_speedups.Writer), when started with one
        self._writer_failures = 0  # its failed writes, as last seen

    def attach(self, observer: Any) -> None:
        """Let ``observer`` (``_speedups.Observer``) write the lines: ``flush`` takes them."""
        self._native = observer
        observer.offset = self._offset
        self.forward_head = observer.forward_head  # type: ignore[method-assign]

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
        """Keep ``ex``'s line for the next batch (``now``: ``time.monotonic()``)."""
        if now >= self._stamp_until:
            self._stamp(now)
        raw = ex.raw_head
        attempts = ex.attempts
        buf = self.buf
        buf.append(
            Line(
                self._time,
                ex.log_part or exchange_part(ex),
                pick.log_part if pick is not None else NO_PICK,
                status,
                ex.upstream_status or None,
                int(duration * 1e6),
                int(upstream * 1e6) if upstream >= 0.0 else None,
                (len(raw) + 2 if raw is not None else head_size(ex)) + ex.body_in,
                ex.bytes_out,
                attempts - 1 if attempts > 1 else 0,
                ex.request_id or self.id_of(ex),
            )
        )
        if len(buf) >= FLUSH_LINES:
            self.flush()

    def _stamp(self, now: float) -> None:
        """``_time`` for the millisecond of ``now``, and until when it holds."""
        ms = int((now + self._offset) * 1000.0)
        self._stamp_until = (ms + 1) / 1000.0 - self._offset
        second, milli = divmod(ms, 1000)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._time = f"{self._second_text}.{milli:03d}Z"

    def request_id(self, ex: Exchange) -> bytes:
        """The X-Request-Id line to add upstream: b"" when the client sent one, else a new id.
        Either way ``ex.request_id`` is the request's id afterwards."""
        rid = ex.request_id
        if rid is None:  # not looked for yet (the fast lane looks when it reads the head)
            rid = _client_request_id(ex)
        if rid:
            ex.request_id = rid
            return b""
        if self._native is not None:  # one count of ids: the observer's
            line: bytes = self._native.new_id(ex)
            return line
        ids = self._ids
        if not ids:
            ids = self._new_ids()
        ex.request_id = ids.pop()
        return self._id_lines.pop()

    def forward_head(self, ex: Exchange, head: bytes) -> bytes:
        """``head`` (a whole request head for the server) with a new X-Request-Id line at its
        end, unless ``ex`` has an id (the client's) already."""
        if ex.request_id:
            return head
        line = ex.rid_line = self.request_id(ex)
        return head[:-2] + line + b"\r\n" if line else head

    def _new_ids(self) -> list[str]:
        """The next ``ID_BATCH`` ids and their header lines, made in two C-level formats
        (a third of the cost of making them one by one), last first: taken with ``pop()``."""
        first = self._id_next + 1
        self._id_next += ID_BATCH
        numbers = tuple(range(self._id_next, first - 1, -1))
        self._ids = ids = ((self._id_format * ID_BATCH) % numbers).split("\n")
        ids.pop()
        self._id_lines = lines = ((self._line_format * ID_BATCH) % numbers).split(b"\0")
        lines.pop()
        return ids

    def id_of(self, ex: Exchange) -> str:
        """The id of a request that was not forwarded (answered by the proxy itself)."""
        # its header line goes nowhere, but marks the id as made here: a fast-lane memo made
        # of this request must not take it for the client's (request._client_id)
        ex.rid_line = self.request_id(ex)
        return ex.request_id or ""

    # ----------------------------------------------------------------- batches

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer thread and the periodic flush.

        The writer is the C one when it is built and the destination opens now: it never takes
        the GIL. Else (or for a file that cannot be opened yet, tried again every 5 s) it is a
        Python thread."""
        self._loop = loop
        native = speedups()
        fd = self.sink._open() if native is not None else None
        if native is not None and fd is not None:
            self._writer = native.Writer(fd, self.sink._is_pipe)
        else:
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick)

    def _tick(self) -> None:
        try:
            self.flush()
            self._check_writer()
        finally:
            self._offset = time.time() - time.monotonic()  # follows the wall clock's steps
            self._stamp_until = 0.0
            if self._native is not None:
                self._native.offset = self._offset
            if self._loop is not None:
                self._timer = self._loop.call_later(FLUSH_INTERVAL, self._tick)

    def flush(self) -> None:
        """Encode the batch and hand it to the writer thread (or drop it when too much is
        waiting); when not started, write it here."""
        native = self._native
        if native is not None and native.pending:
            self._hand(native.take())
        buf = self.buf
        if not buf:
            return
        self.buf = []
        try:
            batch = (self._encoder.encode_lines(buf), len(buf))
        except (TypeError, ValueError, OverflowError) as exc:  # a value msgspec cannot write
            self.dropped += len(buf)
            log.error("access log: %d lines could not be encoded (%s); dropped", len(buf), exc)
            return
        self._hand(batch)

    def _hand(self, batch: tuple[bytes, int]) -> None:
        """Give ``batch`` to the writer thread (or drop it when too much is waiting)."""
        writer = self._writer
        if self._thread is None and writer is None:
            self.sink.write(batch)
            return
        size = len(batch[0])
        pending = self.pending
        if pending and pending + size > MAX_PENDING:  # a batch alone is always taken
            self.dropped += batch[1]
            if not self.stuck:
                self.stuck = (
                    f"the access log destination takes no more lines ({pending >> 20} MiB wait)"
                )
                self.failures += 1
                log.error("%s; lines are dropped until it does, serving goes on", self.stuck)
            return
        if self.stuck and pending < MAX_PENDING // 2:
            log.warning("access log: the destination takes lines again (%d dropped)", self.dropped)
            self.stuck = ""
        if writer is not None:
            if not writer.put(*batch):  # closed
                self.dropped += batch[1]
            return
        self.queued += size
        self._queue.put(batch)

    def close(self, timeout: float = 2.0) -> None:
        """Flush and let the writer finish (within ``timeout`` s)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        finished = True
        if self._writer is not None:
            finished = self._writer.close(timeout)
            self._check_writer()
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
            self._thread = None
            finished = not thread.is_alive()
        if not finished:  # stuck writing: its descriptor stays open until exit
            self.sink.closed = True
            return
        self.sink.close()

    @property
    def pending(self) -> int:
        """Bytes handed to the writer thread, not yet written."""
        if self._writer is not None:
            pending: int = self._writer.stats()[4]
            return pending
        return self.queued - self.done

    def stats(self) -> dict[str, Any]:
        sink = self.sink
        lines, dropped, failures = sink.lines, self.dropped + sink.dropped, self.failures
        if self._writer is not None:
            written, lost, failed = self._check_writer()
            lines, dropped, failures = lines + written, dropped + lost, failures + failed
        return {
            "lines": lines,
            "dropped": dropped,
            "failures": failures + sink.failures,
            "error": self.stuck or sink.error,
        }

    def _check_writer(self) -> tuple[int, int, int]:
        """Report the C writer's failures as the Python one does: once, until it writes again.
        Its lines written, lines dropped and failed writes so far."""
        if self._writer is None:
            return 0, 0, 0
        written, dropped, failures, error, _ = self._writer.stats()
        sink = self.sink
        if failures > self._writer_failures:
            self._writer_failures = failures
            message = f"cannot write the access log: {os.strerror(error) if error else 'failed'}"
            if not sink.error:
                log.error("%s; lines are dropped until it works again, serving goes on", message)
            sink.error = message
        elif sink.error and not error:
            log.warning("access log: writing again (%d lines dropped so far)", dropped)
            sink.error = ""
        return written, dropped, failures

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            self.sink.write(batch)
            self.done += len(batch[0])


# --------------------------------------------------------------------------- the destination


class Sink:
    """Writes lines to ``fd`` or ``path``, reporting failures and reopening after them."""

    def __init__(self, *, path: str | None = None, fd: int | None = None) -> None:
        self.path = path
        self.fd = fd
        self.own_fd = False
        self.lines = 0
        self.dropped = 0
        self.failures = 0
        self.error = ""
        self._is_pipe = _is_pipe(fd) if fd is not None else False
        self._next_open = 0.0
        self.closed = False  # after close(): nothing is opened again

    def write(self, batch: tuple[bytes, int]) -> None:
        data, count = batch
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

    def _open(self) -> int | None:
        if self.fd is not None:
            return self.fd
        now = time.monotonic()
        if now < self._next_open or self.path is None or self.closed:
            return None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            self.fd = os.open(self.path, flags, 0o644)
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

    def close(self) -> None:
        self.closed = True
        if self.own_fd and self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
            self.own_fd = False


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


# --------------------------------------------------------------------------- request ids


def head_size(ex: Exchange) -> int:
    """The size of ``ex``'s head when it was not kept as received (the full parser's); 0 for a
    request refused before its request line was read (no method: nothing to count)."""
    if not ex.method:
        return 0
    size = len(ex.method) + len(ex.target) + 12
    for name, value in ex.raw_headers:
        size += len(name) + len(value) + 4
    return size


def _client_request_id(ex: Exchange) -> str:
    raw = ex.raw_head
    if raw is not None:
        return client_request_id(raw.lower(), raw)
    for name, value in ex.raw_headers:
        if len(name) == 12 and name.lower() == b"x-request-id":
            return value.strip().decode("latin-1")[:200]
    return ""
