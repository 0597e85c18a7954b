"""Fixtures for end-to-end proxy tests: backends and the proxy as real processes on loopback.

Every process started here is stopped (by its own pid) when the test ends.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from albingress.ir import IR, to_json

HERE = Path(__file__).parent


class Proc:
    def __init__(self, proc: subprocess.Popen[str], info: Any) -> None:
        self.proc = proc
        self.info = info

    @property
    def pid(self) -> int:
        return self.proc.pid


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def backend() -> Iterator[Callable[..., tuple[Proc, int]]]:
    started: list[subprocess.Popen[str]] = []

    def start(name: str, host: str, tls: bool = False) -> tuple[Proc, int]:
        cert = [str(HERE / "tls" / "backend.crt"), str(HERE / "tls" / "backend.key")]
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "backend.py"), name, host, "0", *(cert if tls else [])],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return Proc(proc, port), port

    yield start
    for proc in started:
        _stop(proc)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[..., tuple[Proc, int]]]:
    started: list[subprocess.Popen[str]] = []

    def start(ir: IR, workers: int = 1, **settings: Any) -> tuple[Proc, int]:
        path = tmp_path / "ir.json"
        path.write_text(json.dumps(to_json(ir)))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "albingress.dataplane.run_ir",
                str(path),
                "--listen",
                "80=127.0.0.1:0",
                "--workers",
                str(workers),
                "--settings",
                json.dumps(settings),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        return Proc(proc, info), int(info["listening"]["80"][1])

    yield start
    codes = []
    for proc in started:
        _stop(proc)
        codes.append(proc.returncode)
    assert codes == [0] * len(started), f"the proxy did not drain and exit 0: {codes}"


def get(
    port: int, path: str = "/", conn: http.client.HTTPConnection | None = None, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    """One request; a fresh connection unless ``conn`` is given."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(kw.pop("method", "GET"), path, **kw)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        if conn is None:
            c.close()


def ir_for(groups: list[list[tuple[str, int]]], weights: list[int] | None = None) -> IR:
    """One listener (80), one rule for every host and path, a forward over ``groups``."""
    from albingress.ir import (
        ForwardAction,
        GroupSource,
        Listener,
        PathMatch,
        PathType,
        Protocol,
        Rule,
        Scheduler,
        Server,
        ServerGroup,
        WeightedGroup,
    )

    sgs = tuple(
        ServerGroup(
            f"sgp-e2e{i}",
            f"e2e{i}",
            GroupSource.SERVER_GROUP,
            Protocol.HTTP,
            Scheduler.WRR,
            tuple(Server(a, p, 100, a) for a, p in sorted(servers)),
        )
        for i, servers in enumerate(groups)
    )
    weights = weights or [100] * len(sgs)
    fwd = ForwardAction(tuple(WeightedGroup(sg.id, w) for sg, w in zip(sgs, weights, strict=True)))
    rule = Rule(
        "default/e2e/rules/0/paths/0",
        "default/e2e",
        10,
        "",
        PathMatch(PathType.PREFIX, "/"),
        (),
        (fwd,),
    )
    return IR((Listener(80, "HTTP", (rule,)),), sgs)
