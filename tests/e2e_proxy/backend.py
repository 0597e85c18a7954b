"""A small HTTP/1.1 backend for end-to-end tests, run as its own process on loopback.

``python backend.py NAME HOST PORT [CERT KEY]`` prints ``PORT`` once listening (over TLS with a
certificate and key). Paths:

* ``/echo``: streams the request body back (chunked) as it arrives;
* ``/big?n=BYTES``: a Content-Length body of that many bytes;
* ``/slow?s=SECONDS``: answers after a pause;
* ``/headers``: the request line and headers as JSON;
* ``/login``: sets a ``SESSION`` cookie naming this backend (``Set-Cookie``);
* ``/ws``: with ``Upgrade: websocket``, answers 101 and then echoes bytes upper-cased;
* anything else: the backend's name. Every answer carries ``X-Backend`` and ``X-Conn`` (a
  number per accepted connection, to see keep-alive reuse).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import sys
from urllib.parse import parse_qs, urlsplit

import httptools

_conn_ids = itertools.count(1)


class Backend(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.conn_id = next(_conn_ids)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.echo = False
        self.tunnel = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self.transport.write(data.upper())  # type: ignore[union-attr]
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            self.tunnel = True
            if rest:
                self.transport.write(rest.upper())  # type: ignore[union-attr]
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def _head(self, status: str, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines += [f"X-Backend: {self.name.decode()}", f"X-Conn: {self.conn_id}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def on_headers_complete(self) -> None:
        url = urlsplit(self.url.decode())
        t = self.transport
        assert t is not None
        if url.path == "/echo":
            self.echo = True
            t.write(self._head("200 OK", [("Transfer-Encoding", "chunked")]))
        elif url.path == "/ws" and self.parser.should_upgrade():
            t.write(
                self._head(
                    "101 Switching Protocols", [("Upgrade", "websocket"), ("Connection", "Upgrade")]
                )
            )

    def on_body(self, body: bytes) -> None:
        if self.echo and body:
            self.transport.write(b"%x\r\n%s\r\n" % (len(body), body))  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        url = urlsplit(self.url.decode())
        query = parse_qs(url.query)
        headers, self.headers = self.headers, []
        if self.echo:
            self.echo = False
            self.transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]
        elif url.path == "/ws" and self.parser.should_upgrade():
            return
        elif url.path == "/big":
            n = int(query["n"][0])
            t = self.transport
            t.write(self._head("200 OK", [("Content-Length", str(n))]))  # type: ignore[union-attr]
            piece = b"b" * 65536
            while n > 0:
                t.write(piece[: min(n, len(piece))])  # type: ignore[union-attr]
                n -= len(piece)
        elif url.path == "/slow":
            delay = float(query["s"][0])
            asyncio.get_running_loop().call_later(delay, self._plain, self.name + b" slow")
        elif url.path == "/headers":
            body = json.dumps(
                {
                    "target": self.url.decode(),
                    "headers": [[k.decode(), v.decode()] for k, v in headers],
                }
            ).encode()
            self._plain(body, "application/json")
        elif url.path == "/login":
            cookie = f"SESSION={self.name.decode()}-{self.conn_id}; Path=/; HttpOnly"
            self._plain(b"welcome", extra=[("Set-Cookie", cookie)])
        else:
            self._plain(self.name)

    def _plain(
        self, body: bytes, ctype: str = "text/plain", extra: list[tuple[str, str]] | None = None
    ) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *(extra or [])]
        t.write(self._head("200 OK", headers) + body)


async def main(name: str, host: str, port: int, tls: list[str]) -> None:
    loop = asyncio.get_running_loop()
    context = None
    if tls:  # CERT KEY: speak HTTPS
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls[0], tls[1])
    server = await loop.create_server(lambda: Backend(name), host, port, ssl=context)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:6]))
