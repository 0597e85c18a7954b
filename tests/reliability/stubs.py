"""Raw-socket tools for the reliability suite: a client that sends exact bytes, and stub servers.

:class:`StubServer` is a small threaded HTTP/1.1 server on a loopback address that records every
request head it receives (so a test can prove a hostile request was never passed on) and can
misbehave on demand: answer garbage, headers over any limit, close mid-body, hang, or answer
slowly. Its behaviour is chosen by the request path (``/garbage``, ``/longheaders``, ``/cut``,
``/hang``, ``/slow?s=SECONDS``) or for every request at once with :attr:`StubServer.mode`.
Each server runs its own threads; :meth:`StubServer.stop` closes every socket it opened.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """What the proxy answered on one connection: the status (0: none) and whether it closed."""

    status: int
    raw: bytes
    closed: bool  # the proxy closed the connection after its answer (or instead of one)


def exchange(port: int, data: bytes, wait: float = 3.0, host: str = "127.0.0.1") -> Reply:
    """Send ``data`` on a fresh connection, read until the proxy closes or ``wait`` passes."""
    with socket.create_connection((host, port), timeout=wait) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        return read_reply(s, wait)


def read_reply(s: socket.socket, wait: float) -> Reply:
    """Everything ``s`` gives within ``wait`` seconds; closed is True when EOF (or reset) came."""
    buf = b""
    closed = False
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
    return Reply(status_of(buf), buf, closed)


def status_of(raw: bytes) -> int:
    if raw.startswith(b"HTTP/1.") and len(raw) >= 12 and raw[9:12].isdigit():
        return int(raw[9:12])
    return 0


def request(host: str, path: str = "/", extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return method + b" " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + extra


# Malformed or ambiguous answers a server may give (path -> bytes), each then closing.
RAW_ANSWERS = {
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "nul-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "http09": b"just a body, no status line",
}


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return b""


class StubServer:
    """A recording, optionally misbehaving HTTP/1.1 server on ``host:port`` (see module doc)."""

    def __init__(self, name: str, host: str, port: int = 0) -> None:
        self.name = name
        self.heads: list[bytes] = []  # every request head received, in order
        self.bodies: list[bytes] = []  # the body bytes of each (as framed on the wire)
        self.mode = ""  # when set: the behaviour for every request, whatever its path
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(512)
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        self._conns: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def count(self, needle: bytes) -> int:
        with self._lock:
            return sum(1 for h in self.heads if needle in h)

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while not self._stopped.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                body, buf = self._read_body(conn, head, buf)
                with self._lock:
                    self.heads.append(head)
                    self.bodies.append(body)
                if not self._answer(conn, head):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    @staticmethod
    def _read_body(conn: socket.socket, head: bytes, buf: bytes) -> tuple[bytes, bytes]:
        """(the body, the bytes after it); a body cut short by the peer is returned as it is."""
        low = head.lower()
        length = 0
        for line in low.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip() == b"content-length":
                length = int(value)
        if b"transfer-encoding: chunked" in low:
            while not buf.endswith(b"0\r\n\r\n") and b"\r\n0\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
            end = buf.find(b"0\r\n\r\n")
            return (buf[: end + 5], buf[end + 5 :]) if end >= 0 else (buf, b"")
        while len(buf) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf[:length], buf[length:]

    def _answer(self, conn: socket.socket, head: bytes) -> bool:
        """Answer one request; False when the connection must end."""
        target = head.split(b" ", 2)[1].decode("latin-1") if b" " in head else "/"
        path, _, query = target.partition("?")
        mode = self.mode or path.strip("/").split("/")[0]
        if mode == "garbage":
            conn.sendall(b"\x00\x01 this is not HTTP at all\r\n\r\n")
            return False
        if mode == "switch" and b"\r\nupgrade:" in head.lower():
            # accept any upgrade, then answer whatever comes with a fixed line
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: " + _header(head, b"upgrade") + b"\r\n\r\n"
            )
            while conn.recv(65536):
                conn.sendall(b"tunnelled\n")
            return False
        if mode in RAW_ANSWERS:
            conn.sendall(RAW_ANSWERS[mode])
            return False
        if mode == "longheaders":
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
            return False
        if mode == "cut":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100)
            return False
        if mode == "hang":
            self._stopped.wait(60)
            return False
        if mode == "slow":
            seconds = float(query.partition("s=")[2] or 1)
            self._stopped.wait(seconds)
        body = json.dumps({"server": self.name, "path": target}).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        return b"connection: close" not in head.lower()
