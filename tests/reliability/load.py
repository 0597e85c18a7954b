"""Bounded steady load for the fault and soak tests: threads of keep-alive ``http.client`` GETs.

Each thread reuses one connection and opens a new one after any error. Every request ends as a
status (counted) or an error (its text kept); the load stops when told or after ``seconds``.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from pathlib import Path


class Load:
    def __init__(
        self,
        port: int,
        host: str,
        path: str = "/",
        threads: int = 4,
        seconds: float = 30.0,
        body: bytes | None = None,
    ) -> None:
        self.port = port
        self.body = body  # sent with POST when set, else GET
        self.host = host
        self.path = path
        self.statuses: Counter[int] = Counter()
        self.servers: Counter[str] = Counter()
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.statuses.values()) + len(self.errors)

    def failed(self) -> int:
        """Requests that got no 200: errors and other statuses."""
        with self._lock:
            return len(self.errors) + sum(n for s, n in self.statuses.items() if s != 200)

    def wait_for(self, requests: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.total
        while self.total - start < requests and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            started = time.perf_counter()
            try:
                conn.request(
                    "POST" if self.body is not None else "GET",
                    self.path,
                    body=self.body,
                    headers={"Host": self.host},
                )
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
                continue
            with self._lock:
                self.statuses[resp.status] += 1
                self.latencies.append(time.perf_counter() - started)
                if resp.status == 200 and body.startswith(b'{"server": "'):
                    self.servers[body[12:].split(b'"', 1)[0].decode()] += 1
            if resp.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``."""
    result = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                result.append(int(entry.name))
    return sorted(result)
