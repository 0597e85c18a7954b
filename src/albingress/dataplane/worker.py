"""A worker process: serves the listening sockets it inherits from the supervisor.

Started as ``python -m albingress.dataplane.worker --listen 80=FD ... --settings JSON``. The
listening sockets are inherited file descriptors (see :mod:`.supervisor`); each is served by
uvloop with a :class:`~.downstream.ClientConnection` per accepted connection.

Control channel: the supervisor writes one JSON message per line to the worker's stdin::

    {"type": "config", "version": 7, "ir": {...ir.to_json...}}   swap in a new configuration
    {"type": "health", "unhealthy": ["group|10.0.0.1:80", ...]}  servers out of rotation
    {"type": "drain"}                                             stop, like SIGTERM
    {"type": "metrics"}                                           send a counter snapshot now

and the worker answers on stdout with ``{"type": "applied", "version": 7}`` once a config is
live. Every second (and when asked) it also writes its counters, ``{"type": "metrics", ...}``
(see :mod:`.metrics`). A new config is one reference swap (the routing table) plus ``Balancer.update``: requests
in flight keep the rule they were routed by, no connection is closed.

SIGTERM (or ``drain``, or the supervisor going away: EOF on stdin) drains: the worker stops
accepting, closes idle keep-alive connections, lets requests in flight finish for up to
``settings.drain_timeout`` seconds, then exits 0. SIGINT is ignored: the supervisor decides.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import signal
import socket
import sys
from typing import Any

from albingress.dataplane.accesslog import AccessLog
from albingress.dataplane.context import WorkerContext
from albingress.dataplane.downstream import ClientConnection
from albingress.dataplane.metrics import WorkerMetrics
from albingress.dataplane.settings import ProxySettings, settings_from_json
from albingress.ir import from_json, group_from_json

log = logging.getLogger("albingress.dataplane.worker")


class Worker:
    """The asyncio side of one worker process."""

    def __init__(
        self,
        listeners: dict[int, socket.socket],
        settings: ProxySettings,
        share: int,
        metrics: bool = False,
        access_log: AccessLog | None = None,
    ):
        self.listeners = listeners
        self.settings = settings
        self.ctx = WorkerContext(settings, share=share)
        if metrics or access_log is not None:
            self.ctx.metrics = WorkerMetrics(metrics=metrics, access_log=access_log)
            self.ctx.access_log = access_log
        self.stop = asyncio.Event()
        self.servers: list[asyncio.Server] = []

    async def run(self) -> int:
        # Requests allocate short-lived objects only: collect the young generation less often
        # and keep what exists at start-up out of every collection.
        gc.set_threshold(20_000, 50, 50)
        gc.freeze()
        loop = asyncio.get_running_loop()
        self.ctx.loop = loop
        for port, sock in self.listeners.items():
            server = await loop.create_server(
                lambda port=port: ClientConnection(self.ctx, port),  # type: ignore[misc]
                sock=sock,
                backlog=1024,
            )
            self.servers.append(server)
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        control = loop.create_task(self._control())
        sweeper = loop.create_task(self._sweep())
        reporter = loop.create_task(self._report()) if self.ctx.metrics is not None else None
        if self.ctx.access_log is not None:
            self.ctx.access_log.start(loop)
        await self.stop.wait()
        await self._drain()
        control.cancel()
        sweeper.cancel()
        if reporter is not None:
            reporter.cancel()
            self.send_metrics()
        if self.ctx.access_log is not None:
            self.ctx.access_log.close()
        return 0

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.send_metrics()
            except Exception:
                log.exception("metrics snapshot failed")

    def send_metrics(self) -> None:
        metrics = self.ctx.metrics
        if metrics is None:
            return
        snap = metrics.snapshot(len(self.ctx.connections), self.ctx.busy)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.write(json.dumps(snap, separators=(",", ":")) + "\n")
            sys.stdout.flush()

    async def _drain(self) -> None:
        for server in self.servers:
            server.close()
        self.ctx.start_drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout
        while self.ctx.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.ctx.connections):
            conn.abort()
        self.ctx.pool.close_all()
        await asyncio.sleep(0)

    async def _sweep(self) -> None:
        interval = self.settings.sweep_interval
        while True:
            await asyncio.sleep(interval)
            try:
                self.ctx.sweep()
            except Exception:
                log.exception("timeout sweep failed")

    async def _control(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 30)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:  # the supervisor is gone
                self.stop.set()
                return
            try:
                self.handle(json.loads(line))
            except Exception:
                log.exception("bad control message")

    def apply_servers(self, msg: dict[str, Any]) -> None:
        """New servers for some groups of the current config (see ``Supervisor.publish_servers``);
        the rules are the same, so the routing table and the requests it remembers stay."""
        ctx = self.ctx
        version = int(msg["version"])
        if ctx.ir is None or ctx.version != int(msg["base"]):
            self._answer({"type": "stale", "version": ctx.version})
            return
        changed = {g.id: g for g in map(group_from_json, msg["groups"])}
        groups = tuple(changed.pop(g.id, g) for g in ctx.ir.server_groups)
        if changed:  # groups the config does not have: only a whole config can say where
            self._answer({"type": "stale", "version": ctx.version})
            return
        config = dataclasses.replace(ctx.ir, server_groups=groups)
        ctx.apply_servers(config, version)
        if ctx.metrics is not None:
            ctx.metrics.prune(config)
        self._answer({"type": "applied", "version": version})

    def _answer(self, msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    def handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "config":
            version = int(msg["version"])
            config = from_json(msg["ir"])
            self.ctx.apply(config, version)
            if self.ctx.metrics is not None:
                self.ctx.metrics.prune(config)
            self._answer({"type": "applied", "version": version})
        elif kind == "servers":
            self.apply_servers(msg)
        elif kind == "health":
            self.ctx.set_unhealthy(frozenset(msg["unhealthy"]))
        elif kind == "drain":
            self.stop.set()
        elif kind == "metrics":
            self.send_metrics()


def _listen_arg(text: str) -> tuple[int, int]:
    port, _, fd = text.partition("=")
    return int(port), int(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="albingress.dataplane.worker")
    parser.add_argument("--listen", action="append", type=_listen_arg, default=[])
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--share", type=int, default=1)
    parser.add_argument("--metrics", action="store_true", help="count requests (see .metrics)")
    parser.add_argument("--access-log", help="access log file path (see .accesslog)")
    parser.add_argument("--access-log-fd", type=int, help="access log to this inherited fd")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="worker %(process)d: %(message)s")
    settings = settings_from_json(json.loads(args.settings))
    listeners = {}
    for port, fd in args.listen:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        listeners[port] = sock
    access_log = None
    if args.access_log_fd is not None:
        access_log = AccessLog(fd=args.access_log_fd)
    elif args.access_log:
        access_log = AccessLog(path=args.access_log)
    worker = Worker(listeners, settings, args.share, args.metrics, access_log)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(worker.run())
    result: int = uvloop.run(worker.run())
    return result


if __name__ == "__main__":
    sys.exit(main())
