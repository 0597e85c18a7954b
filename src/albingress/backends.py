"""Tiny HTTP backends on loopback addresses, standing in for pods, VMs and remote servers.

Used by ``albingress demo`` and by the end-to-end tests. Each backend answers every request with
``200`` and a small JSON body naming itself (``{"server": "tea-1", ...}``), with keep-alive, so a
client can count which server group each request went to; ``/healthz`` answers 200 while the
backend is healthy and 503 when not. ``python -m albingress.backends NAME=HOST:PORT ...`` runs some
in a process of their own until SIGTERM; SIGUSR1 flips them between healthy and unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from typing import cast

import httptools


class _Backend(asyncio.Protocol):
    __slots__ = ("_keep_alive", "_parser", "_path", "_server", "_transport")

    def __init__(self, server: Backend) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._path = b""
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop: not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._path += url

    def on_message_complete(self) -> None:
        self._server.requests += 1
        path = self._path.decode("latin-1")
        status = b"200 OK"
        if path == "/healthz" and not self._server.healthy:
            status = b"503 Service Unavailable"
        body = json.dumps({"server": self._server.name, "path": path})
        payload = body.encode() + b"\n"
        head = (
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n"
        )
        self._path = b""
        if self._transport is not None:
            self._transport.write(head + payload)
            if not self._parser.should_keep_alive():
                self._transport.close()


class Backend:
    """One backend: a name and a loopback address; counts the requests it answered."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.requests = 0
        self.healthy = True  # what /healthz answers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Backend(self), self.host, self.port, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)
            self._server = None


def parse_specs(specs: Sequence[str]) -> list[Backend]:
    backends = []
    for spec in specs:
        name, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        backends.append(Backend(name, host, int(port)))
    return backends


async def _main(specs: Sequence[str]) -> None:
    backends = parse_specs(specs)
    for b in backends:
        await b.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def flip() -> None:
        for b in backends:
            b.healthy = not b.healthy

    loop.add_signal_handler(signal.SIGUSR1, flip)
    await stop.wait()
    for b in backends:
        await b.stop()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
