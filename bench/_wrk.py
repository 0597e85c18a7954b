"""Drive a front with wrk and read its figures back as JSON (a small Lua ``done()`` hook)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from _procs import BenchError, require_loopback

LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]  # connect, read, write, status (HTTP >= 400), timeout
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def lua_script(workdir: Path) -> Path:
    path = workdir / "report.lua"
    path.write_text(LUA)
    return path


def run_wrk(
    wrk: str,
    script: Path,
    *,
    host: str,
    port: int,
    path: str,
    host_header: str,
    connections: int,
    duration: float,
    timeout: float = 5.0,
) -> WrkResult:
    """``wrk -t1 -cC -dS`` against ``http://host:port/path`` with the Host header set."""
    require_loopback(host)
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-H",
        f"Host: {host_header}",
        "-s",
        str(script),
        f"http://{host}:{port}{path}",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    data = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        errors={k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout")},
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )
