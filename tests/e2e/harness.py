"""A running ``albingress serve`` on loopback, with stand-in backends, for end-to-end tests.

Everything is a real process: the backends (``python -m albingress.backends``), the supervisor and
its workers (``python -m albingress serve``); clients are ``http.client`` connections.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]


def service(name: str, *addresses: str, port: int = 8080) -> str:
    """A Service (port 80 -> ``port``) and an EndpointSlice of ready ``addresses``, as YAML."""
    endpoints = "\n".join(
        f'  - addresses: ["{a}"]\n    conditions: {{ready: true}}' for a in addresses
    )
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{ports: [{{name: http, port: 80, targetPort: {port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-x
  labels: {{kubernetes.io/service-name: {name}}}
ports: [{{name: http, port: {port}}}]
endpoints:
{endpoints}
---
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


class Backends:
    """Stand-in servers in a process of their own: ``name -> (address, port)``."""

    def __init__(self, servers: Mapping[str, tuple[str, int]]) -> None:
        specs = [f"{name}={addr}:{port}" for name, (addr, port) in servers.items()]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "albingress.backends", *specs],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise AssertionError(
                f"backends did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class AdminProcess:
    """A load-balancer process (``serve`` or ``controller``) and its admin API on loopback."""

    proc: subprocess.Popen[bytes] | None
    admin: int

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def admin_get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def config(self) -> dict[str, Any]:
        status, body = self.admin_get("/api/v1/config")
        assert status == 200, body
        data: dict[str, Any] = json.loads(body)
        return data


class Serve(AdminProcess):
    """``albingress serve`` on a scratch manifests directory, with free loopback ports."""

    def __init__(self, workdir: Path, workers: int = 2, extra: tuple[str, ...] = ()) -> None:
        self.manifests = workdir / "manifests"
        self.manifests.mkdir(exist_ok=True)
        self.port = free_port()
        self.admin = free_port()
        self.log = workdir / "serve.log"
        self.workdir = workdir
        self.workers = workers
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, name: str, text: str) -> None:
        """Write a manifest atomically (no half-written file is ever seen)."""
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(textwrap.dedent(text))
        os.replace(tmp, self.manifests / name)

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "albingress", "serve", "--manifests", str(self.manifests),
            "--listen", f"80=127.0.0.1:{self.port}", "--listen", f"443=127.0.0.1:{free_port()}",
            "--admin", f"127.0.0.1:{self.admin}", "--state", str(self.workdir / "state.db"),
            "--workers", str(self.workers), "--vpc-cidr", "127.0.0.0/16",
            "--remote-cidr", "127.4.0.0/16", *self.extra,
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_until(lambda: self.admin_get("/healthz")[0] == 200, 30, "serve to be healthy")

    def wait_version(self, after: int, timeout: float = 10) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def newer() -> bool:
            result.update(self.config())
            return int(result["version"]) > after

        wait_until(newer, timeout, f"a config newer than v{after}")
        return result

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def get(
        self, host: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.connect()
        try:
            conn.request("GET", path, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def server_of(self, host: str, path: str, headers: Mapping[str, str] | None = None) -> str:
        status, _, body = self.get(host, path, headers)
        assert status == 200, (status, body)
        return str(json.loads(body)["server"])


@contextlib.contextmanager
def running(
    workdir: Path, servers: Mapping[str, tuple[str, int]], manifests: Mapping[str, str], **kw: Any
) -> Iterator[Serve]:
    backends = Backends(servers)
    serve = Serve(workdir, **kw)
    try:
        for name, text in manifests.items():
            serve.write(name, text)
        serve.start()
        yield serve
    finally:
        serve.stop()
        backends.stop()
