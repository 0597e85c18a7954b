"""The supervisor: listening sockets, worker processes, and what they are told.

Process model. The supervisor (in the caller's process and asyncio loop) binds every listening
socket itself, so a bind error is reported at once and port 0 resolves to one real port. Workers
are subprocesses (``python -m albingress.dataplane.worker``) that inherit those sockets through
``pass_fds`` and all accept from them: the kernel hands each new connection to one worker.
Why inherited sockets rather than one SO_REUSEPORT socket per worker: the sockets outlive any
worker, so connections that arrive while a worker restarts wait in the shared backlog and are
taken by the other workers, instead of being reset with a dead worker's own socket; and there is
one bind to check, not N.

Each worker gets, on its stdin, the current config (``ir.to_json``) and the set of unhealthy
servers, one JSON message per line, and answers ``applied`` on its stdout (see :mod:`.worker`).
When only the servers of some groups changed (Kubernetes endpoints), only those groups are sent
(:meth:`Supervisor.publish_servers`).
A worker that dies is restarted (after 0.1 s, doubling up to 5 s while it keeps dying quickly)
and sent the current config before it serves. :meth:`Supervisor.stop` sends SIGTERM to every
worker (they drain: see :mod:`.worker`), waits ``drain_timeout`` plus a margin, kills what is
left and closes the sockets.

Counters: with ``metrics`` on, each worker writes a snapshot of its counters every second (and
when :meth:`Supervisor.collect_metrics` asks); the latest of each worker is kept, and those of a
worker that was replaced are kept too (:attr:`Supervisor.retired`), so totals never go back.
The access log (``access_log``: a path, or ``-`` for this process's standard output, handed to
the workers as an inherited descriptor) is written by the workers themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from albingress.dataplane.metrics import merge
from albingress.dataplane.settings import ProxySettings, settings_to_json
from albingress.diagnostics import ConfigError
from albingress.ir import IR, ServerGroup, group_to_json, to_json

log = logging.getLogger("albingress.dataplane.supervisor")

_RESTART_MIN = 0.1
_RESTART_MAX = 5.0
_STABLE = 10.0  # a worker that lived this long resets the restart delay


class _Worker:
    """One worker slot: the current process and what it reported."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.applied = -1  # the last config version the worker reported live
        self.started = 0.0
        self.delay = _RESTART_MIN
        self.task: asyncio.Task[None] | None = None
        self.metrics: dict[str, Any] | None = None  # the latest counter snapshot of ``proc``


class Supervisor:
    """Runs ``workers`` worker processes serving ``listeners``."""

    def __init__(
        self,
        listeners: Mapping[int, tuple[str, int]],
        workers: int,
        settings: ProxySettings = ProxySettings(),  # noqa: B008 -- frozen, safe to share
        *,
        metrics: bool = False,
        access_log: str | None = None,
    ) -> None:
        if workers < 1:
            raise ConfigError("--workers must be at least 1")
        self.listeners = dict(listeners)
        self.settings = settings
        self._sockets: dict[int, socket.socket] = {}
        self._workers = [_Worker(i) for i in range(workers)]
        self._ir: IR | None = None  # the config last published
        self._config: bytes = b""  # its message, made again when only servers changed since
        self._version = -1
        self._health: bytes = b""
        self._stopping = False
        self._changed = asyncio.Condition()
        self.metrics = metrics
        self.access_log = access_log  # None (off), "-" (stdout) or a path
        self._log_fd = -1  # a duplicate of stdout for the workers' access log
        self.retired: dict[str, Any] | None = None  # counters of workers that were replaced

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind every listener (ConfigError naming the address if one fails), start workers."""
        try:
            for port, (host, local_port) in sorted(self.listeners.items()):
                self._sockets[port] = self._bind(port, host, local_port)
        except ConfigError:
            self._close_sockets()
            raise
        if self.access_log == "-":
            self._log_fd = os.dup(1)
            os.set_inheritable(self._log_fd, True)
        for slot in self._workers:
            await self._spawn(slot)

    def _bind(self, port: int, host: str, local_port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, local_port))
            sock.listen(4096)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on {host}:{local_port} (listener {port}): {exc.strerror or exc}"
            ) from exc
        sock.set_inheritable(True)
        return sock

    async def _spawn(self, slot: _Worker) -> None:
        args = [sys.executable, "-m", "albingress.dataplane.worker"]
        for port, sock in self._sockets.items():
            args += ["--listen", f"{port}={sock.fileno()}"]
        args += ["--settings", json.dumps(settings_to_json(self.settings))]
        args += ["--share", str(len(self._workers))]
        fds = [s.fileno() for s in self._sockets.values()]
        if self.metrics:
            args.append("--metrics")
        if self._log_fd >= 0:
            args += ["--access-log-fd", str(self._log_fd)]
            fds.append(self._log_fd)
        elif self.access_log and self.access_log != "-":
            args += ["--access-log", self.access_log]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=fds,
            limit=1 << 30,  # a counter snapshot with thousands of rules is one long line
        )
        if slot.metrics is not None:  # a replaced worker: keep what it counted
            self._retire(slot.metrics)
            slot.metrics = None
        slot.proc = proc
        slot.applied = -1
        slot.started = time.monotonic()
        if self._ir is not None:
            self._send(slot, self._config_message())
        if self._health:
            self._send(slot, self._health)
        slot.task = asyncio.get_running_loop().create_task(self._watch(slot, proc))

    async def _watch(self, slot: _Worker, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                kind = msg.get("type")
                if kind == "metrics":
                    slot.metrics = msg
                    async with self._changed:
                        self._changed.notify_all()
                elif kind == "applied":
                    slot.applied = int(msg["version"])
                    async with self._changed:
                        self._changed.notify_all()
                elif kind == "stale" and self._ir is not None:  # missed a config: all of it
                    log.warning("worker %d has config v%s: sending all", slot.index, msg["version"])
                    self._send(slot, self._config_message())
        code = await proc.wait()
        if self._stopping:
            return
        log.warning("worker %d (pid %d) exited with %s; restarting", slot.index, proc.pid, code)
        if time.monotonic() - slot.started > _STABLE:
            slot.delay = _RESTART_MIN
        await asyncio.sleep(slot.delay)
        slot.delay = min(_RESTART_MAX, slot.delay * 2)
        if not self._stopping:
            await self._spawn(slot)

    async def stop(self) -> None:
        """Drain every worker (SIGTERM), wait for them, close the sockets."""
        self._stopping = True
        procs = [s.proc for s in self._workers if s.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        limit = self.settings.drain_timeout + 5.0
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), limit)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for slot in self._workers:
            if slot.task is not None:
                slot.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await slot.task
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1

    # ----------------------------------------------------------------- counters

    def _retire(self, snapshot: dict[str, Any]) -> None:
        parts = [snapshot] if self.retired is None else [self.retired, snapshot]
        self.retired = merge(parts, live=False).as_snapshot()

    async def collect_metrics(self, timeout: float = 0.5) -> list[dict[str, Any]]:
        """Fresh counter snapshots of every live worker (each asked now; one that does not answer
        within ``timeout`` contributes its last one), plus those of replaced workers."""
        if self.metrics:
            asked = {s.index: (s.metrics or {}).get("seq", 0) for s in self._workers}
            for slot in self._workers:
                self._send(slot, b'{"type":"metrics"}\n')

            def fresh() -> bool:
                return all(
                    s.proc is None
                    or s.proc.returncode is not None
                    or (s.metrics or {}).get("seq", 0) > asked[s.index]
                    for s in self._workers
                )

            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(fresh), timeout)
        return self.snapshots()

    def snapshots(self) -> list[dict[str, Any]]:
        """The latest counter snapshot of each worker, and the retired workers' totals."""
        out = [s.metrics for s in self._workers if s.metrics is not None]
        if self.retired is not None:
            out.append({**self.retired, "retired": True})
        return out

    # ----------------------------------------------------------------- what workers are told

    def publish_config(self, ir: IR, version: int) -> None:
        """Send ``ir`` to every worker (and to any restarted later); does not wait."""
        self._ir = ir
        self._config = b""
        self._version = version
        message = self._config_message()
        for slot in self._workers:
            self._send(slot, message)

    def publish_servers(self, ir: IR, changed: Sequence[ServerGroup], version: int) -> None:
        """``ir`` differs from the config last published only in the servers of the groups
        ``changed``: send those groups alone. Workers swap them in without building their
        routing table again (an EndpointSlice change at 5,000 Ingresses: tens of ms, where the
        whole config takes a second to serialize and parse). A worker that does not have the
        previous version answers ``stale`` and gets the whole config."""
        msg = {
            "type": "servers",
            "version": version,
            "base": self._version,
            "groups": [group_to_json(g) for g in changed],
        }
        data = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        self._ir = ir
        self._config = b""  # made when a worker starts or is stale
        self._version = version
        for slot in self._workers:
            self._send(slot, data)

    def _config_message(self) -> bytes:
        if not self._config and self._ir is not None:
            msg = {"type": "config", "version": self._version, "ir": to_json(self._ir)}
            self._config = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        return self._config

    def publish_health(self, unhealthy: frozenset[str]) -> None:
        """Take the servers with these keys (``ir.server_key``) out of rotation everywhere."""
        msg = {"type": "health", "unhealthy": sorted(unhealthy)}
        self._health = json.dumps(msg).encode() + b"\n"
        for slot in self._workers:
            self._send(slot, self._health)

    def _send(self, slot: _Worker, data: bytes) -> None:
        proc = slot.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        try:
            proc.stdin.write(data)
        except (ConnectionError, RuntimeError):
            log.warning("worker %d is not reading its control pipe", slot.index)

    async def wait_applied(self, version: int, timeout: float = 10.0) -> bool:
        """True once every worker reports ``version`` (or later) live, False after ``timeout``."""

        def ready() -> bool:
            return all(s.applied >= version for s in self._workers)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except TimeoutError:
                return False
        return True

    # ----------------------------------------------------------------- introspection

    @property
    def bound(self) -> dict[int, tuple[str, int]]:
        result = {}
        for port, sock in self._sockets.items():
            host, real_port = sock.getsockname()[:2]
            result[port] = (str(host), int(real_port))
        return result

    def worker_pids(self) -> list[int]:
        return [
            s.proc.pid for s in self._workers if s.proc is not None and s.proc.returncode is None
        ]

    @property
    def version(self) -> int:
        """The version of the config last published (-1 before any)."""
        return self._version
