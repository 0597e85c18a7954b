"""Test backends on 127.0.2.x whose answers a test can change, and a small IR builder."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from albingress.ir import (
    IR,
    GroupSource,
    HealthCheck,
    Protocol,
    Scheduler,
    Server,
    ServerGroup,
)


@dataclass(slots=True)
class Seen:
    method: str
    target: str
    host: str
    at: float = 0.0  # time.monotonic() when the request arrived


@dataclass(slots=True)
class Backend:
    """A loopback server answering health checks. ``mode``: http | silent | garbage."""

    host: str
    status: int = 200
    mode: str = "http"
    tls: ssl.SSLContext | None = None
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    gauge: list[int] | None = None  # shared [open connections, peak] across backends
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> Backend:
        assert self.host.startswith("127."), self.host
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, ssl=self.tls, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener (later connects are refused) and every open connection."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        if self.gauge is not None:
            self.gauge[0] += 1
            self.gauge[1] = max(self.gauge[1], self.gauge[0])
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            host = next(
                (x.split(":", 1)[1].strip() for x in lines[1:] if x.lower().startswith("host:")), ""
            )
            self.requests.append(Seen(method, target, host, time.monotonic()))
            if self.mode == "silent":
                await asyncio.wait_for(reader.read(), 30)  # until the client gives up
            elif self.mode == "garbage":
                writer.write(b"garbage, not http\r\n\r\n")
            else:
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
                )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            ConnectionError,
            ssl.SSLError,
            ValueError,
        ):
            pass
        finally:
            if self.gauge is not None:
                self.gauge[0] -= 1
            self._writers.discard(writer)
            writer.close()


def check(**kw: object) -> HealthCheck:
    """An enabled HealthCheck with test-friendly defaults: 1 s interval and timeout, thresholds 2."""
    base: dict[str, object] = {
        "enabled": True,
        "interval": 1,
        "timeout": 1,
        "healthy_threshold": 2,
        "unhealthy_threshold": 2,
    }
    base.update(kw)
    return HealthCheck(**base)  # type: ignore[arg-type]


def group(gid: str, hc: HealthCheck, servers: Iterable[tuple[str, int]]) -> ServerGroup:
    return ServerGroup(
        id=gid,
        name=gid,
        source=GroupSource.SERVER_GROUP,
        protocol=Protocol.HTTP,
        scheduler=Scheduler.WRR,
        servers=tuple(Server(a, p, 100, a) for a, p in sorted(servers)),
        health_check=hc,
    )


def ir(*groups: ServerGroup) -> IR:
    return IR(listeners=(), server_groups=tuple(sorted(groups, key=lambda g: g.id)))


async def wait_until(pred: Callable[[], bool], timeout: float) -> float:
    """Poll ``pred`` every 20 ms; the seconds it took to become true. Fails after ``timeout``."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def refused_port(host: str) -> int:
    """A port on ``host`` with nothing listening (bound then released)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port
