"""The access log's helper process: JSON lines from a worker's batches, written to the log.

``python -m albingress.dataplane.logwriter --fd N | --path P --prefix ID`` is started by each
worker's :class:`~.accesslog.AccessLog`. It reads length-prefixed ``marshal`` frames
``(offset, values)`` on stdin (``FIELDS`` values per request, see ``AccessLog.record``), formats
one JSON line per request (:class:`Formatter`) and writes them (:class:`Sink`), and writes its
counts as one JSON line on stdout every second. It ends at EOF on stdin (the worker is done or
gone), after writing what it read. SIGINT is ignored: the worker decides.

A destination that fails is reported once (stderr) until writing works again; a file that cannot
be opened is tried again every 5 s; lines that cannot be written are dropped and counted. Writes
are cut at line boundaries into pieces of at most ``PIPE_BUF`` bytes, so the lines of several
workers sharing one pipe (``--access-log -``) never interleave.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import marshal
import os
import signal
import stat
import struct
import sys
import time
from json.encoder import encode_basestring_ascii as _q
from typing import Any

log = logging.getLogger("albingress.accesslog")

FIELDS = 19  # values per request in a batch (see accesslog.AccessLog.record)
FRAME = struct.Struct("!I")  # the length before each frame
PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic
REOPEN_DELAY = 5.0  # seconds between attempts to open a destination that failed


class Formatter:
    """Turns batches of records into JSON lines; remembers the escaped text of the values that
    repeat (client, listener, method, host, statuses, rule, group, server; paths)."""

    MAX_CACHED = 50_000

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # of generated request ids
        self._mid: dict[tuple[Any, ...], tuple[str, str]] = {}  # before and after the path
        self._paths: dict[str, str] = {}

    def lines(self, offset: float, values: list[Any]) -> tuple[bytes, int]:
        """JSON lines for the records in ``values`` (``FIELDS`` each; ``offset``: wall clock
        minus the records' monotonic clock), and how many."""
        mids = self._mid
        paths = self._paths
        if len(mids) > self.MAX_CACHED or len(paths) > self.MAX_CACHED:
            mids.clear()
            paths.clear()
        out: list[str] = []
        append = out.append
        last_sec = -1
        sec_text = ""
        for (now, ip, port, method, host, path, query, status, ups, rule, ingress, group,
             server, dur, up, bytes_in, bytes_out, attempts, rid) in zip(
            *[iter(values)] * FIELDS, strict=False
        ):  # fmt: skip
            key = (ip, port, method, host, status, ups, rule, ingress, group, server)
            mid = mids.get(key)
            if mid is None:
                text = host.decode("latin-1") if host.__class__ is bytes else str(host)
                mid = mids[key] = (
                    f'"client":{_q(ip)},"listener":{port},"method":{_q(method)},'
                    f'"host":{_q(text)},"path":',
                    f',"status":{status},"upstream_status":{ups or "null"},"rule":{_q(rule)},'
                    f'"ingress":{_q(ingress)},"server_group":{_q(group)},"server":{_q(server)},',
                )
            escaped = paths.get(path)
            if escaped is None:
                escaped = paths[path] = _q(path)
            wall = now + offset
            sec = int(wall)
            if sec != last_sec:
                last_sec = sec
                sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            if rid.__class__ is bytes:  # the generated header line
                rid = rid[14:].strip().decode("latin-1")
            elif rid.__class__ is int:
                rid = f"{self.prefix}{rid:x}"
            append(
                f'{{"time":"{sec_text}.{int((wall - sec) * 1000):03d}Z",{mid[0]}{escaped},'
                f'"query":{_q(query)}{mid[1]}"duration":{dur:.6f},'
                f'"upstream_duration":{f"{up:.6f}" if up >= 0 else "null"},'
                f'"bytes_in":{bytes_in},"bytes_out":{bytes_out},'
                f'"retries":{attempts - 1 if attempts > 1 else 0},"request_id":{_q(rid)}}}\n'
            )
        return "".join(out).encode("utf-8", "replace"), len(out)


def format_lines(offset: float, prefix: str, values: list[Any]) -> tuple[bytes, int]:
    """:meth:`Formatter.lines` without remembering anything (tests, one-off batches)."""
    return Formatter(prefix).lines(offset, values)


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
        if now < self._next_open or self.path is None:
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

    def stats(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "dropped": self.dropped,
            "failures": self.failures,
            "error": self.error,
        }

    def close(self) -> None:
        if self.own_fd and self.fd is not None:
            os.close(self.fd)
            self.fd = None


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


def _read_exact(stream: Any, size: int) -> bytes | None:
    data: bytes = stream.read(size)
    return data if len(data) == size else None


def main(argv: list[str] | None = None) -> int:
    """The log process: frames on stdin, lines to the destination, counts on stdout."""
    parser = argparse.ArgumentParser(prog="albingress.dataplane.logwriter")
    parser.add_argument("--fd", type=int)
    parser.add_argument("--path")
    parser.add_argument("--prefix", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="access log %(process)d: %(message)s")
    with contextlib.suppress(ValueError, OSError):  # the worker decides when this ends (EOF)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sink = Sink(path=args.path, fd=args.fd)
    formatter = Formatter(args.prefix)
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    reported = 0.0
    while True:
        head = _read_exact(stdin, FRAME.size)
        frame = _read_exact(stdin, FRAME.unpack(head)[0]) if head is not None else None
        if frame is not None:
            try:
                offset, records = marshal.loads(frame)
                sink.write(formatter.lines(offset, records))
            except (ValueError, EOFError, TypeError, IndexError):
                log.exception("bad access log frame")
        now = time.monotonic()
        if frame is None or now - reported >= 1.0:
            reported = now
            with contextlib.suppress(OSError, ValueError):
                stdout.write(json.dumps(sink.stats()).encode() + b"\n")
                stdout.flush()
        if frame is None:  # the worker is gone or done
            sink.close()
            return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
