"""Helpers of the operability tests: a Prometheus text parser and recording backends.

The backends are threads of the test process (``http.server``) on loopback addresses
127.0.31.x, addresses no other test uses; each remembers the ``X-Request-Id`` of every request.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = frozenset[tuple[str, str]]


def parse_prometheus(text: str) -> dict[tuple[str, Labels], float]:
    """``{(metric name, labels): value}``; every sample line must parse."""
    out: dict[tuple[str, Labels], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(
            (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
            for k, v in _LABEL.findall(labels or "")
        )
        key = (name, pairs)
        assert key not in out, f"duplicate series {line!r}"
        out[key] = float(value)
    return out


def select(
    samples: Mapping[tuple[str, Labels], float], name: str, **labels: str
) -> Iterator[tuple[dict[str, str], float]]:
    """Samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    for (n, pairs), value in samples.items():
        if n == name and want <= pairs:
            yield dict(pairs), value


def total(samples: Mapping[tuple[str, Labels], float], name: str, **labels: str) -> float:
    return sum(v for _, v in select(samples, name, **labels))


class RecordingBackends:
    """HTTP servers ``name -> (address, port)`` answering ``{"server", "path", "rid"}``."""

    def __init__(self, servers: Mapping[str, tuple[str, int]]) -> None:
        self.seen: list[tuple[str, str, str]] = []  # (server, path, X-Request-Id)
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        for name, address in servers.items():
            server = ThreadingHTTPServer(address, self._handler(name))
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)

    def _handler(self, name: str) -> type[BaseHTTPRequestHandler]:
        backends = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                rid = self.headers.get("x-request-id") or ""
                with backends._lock:
                    backends.seen.append((name, self.path, rid))
                body = json.dumps({"server": name, "path": self.path, "rid": rid}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)
