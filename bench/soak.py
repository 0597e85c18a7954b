"""Soak: ``albingress serve`` under steady mixed load, its memory and descriptors sampled.

    uv run python bench/soak.py                      # 10 minutes (the documented soak)
    uv run python bench/soak.py --seconds 30 --warmup 15 --sample 3   # the short version

Everything runs on loopback: two stand-in backends (``python -m albingress.backends``) on
127.0.11.1 and 127.0.11.2, ``serve`` with two workers, and a paced load from this process
(``--rps`` requests per second over ``--threads`` threads) that mixes keep-alive GETs, GETs on a
new connection each, POSTs with a 4 KiB body, requests for a host no rule matches (404) and
malformed requests (400): the paths that allocate and free the most.

Every ``--sample`` seconds the resident memory (VmRSS) and open descriptors of the supervisor
and of each worker are read from /proc and printed. The first ``--warmup`` seconds of load (by
default a fifth of the run, at most 120 s) let the allocator and the caches reach their steady
size; measured from the end of the warm-up, the run is *flat* when, for every process, memory
grew by at most ``max(4 MiB, 5 %)`` and the descriptors of the last third stay within 8 of the
highest seen so far in the warm-up; a worker that changes PID (a crash) is a failure too. The last line is ``RESULT {json}``; the exit status is 0 when the run
was flat and every request got its expected status, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.load import children  # noqa: E402 -- after the path is set

BACKENDS = ("127.0.11.1", "127.0.11.2")
HOST = "soak.example.com"
MIB = 1024 * 1024


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def manifests(port: int) -> str:
    endpoints = "\n".join(
        f'  - addresses: ["{a}"]\n    conditions: {{ready: true}}' for a in BACKENDS
    )
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: soak}}
spec: {{ports: [{{name: http, port: 80, targetPort: {port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: soak-x
  labels: {{kubernetes.io/service-name: soak}}
ports: [{{name: http, port: {port}}}]
endpoints:
{endpoints}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: soak}}
spec:
  ingressClassName: alb
  rules:
  - host: {HOST}
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: soak, port: {{number: 80}}}}}}}}
"""


# ----------------------------------------------------------------------------- processes


def proc_stats(pid: int) -> tuple[int, int]:
    """(resident bytes, open descriptors) of ``pid``."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_healthy(admin: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode} before it was healthy")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        time.sleep(0.05)
    raise SystemExit("serve did not become healthy")


# ----------------------------------------------------------------------------- load


@dataclass
class Tally:
    expected: Counter[str] = field(default_factory=Counter)  # kind -> requests as expected
    unexpected: list[str] = field(default_factory=list)  # the first few surprises
    surprises: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, kind: str) -> None:
        with self.lock:
            self.expected[kind] += 1

    def bad(self, what: str) -> None:
        with self.lock:
            self.surprises += 1
            if len(self.unexpected) < 20:
                self.unexpected.append(what)


BODY = b"x" * 4096


def _exchange(
    conn: http.client.HTTPConnection, method: str, path: str, host: str, body: bytes | None
) -> int:
    conn.request(method, path, body=body, headers={"Host": host})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def load_thread(port: int, rps: float, until: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    conn: http.client.HTTPConnection | None = None
    interval = 1.0 / rps
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= until:
            break
        if next_at > now:
            time.sleep(next_at - now)
        next_at += interval
        roll = rng.random()
        try:
            if roll < 0.05:  # malformed: 400 and the connection closed
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX: a\x00\r\n\r\n")
                    data = s.recv(4096)
                (tally.ok if data.startswith(b"HTTP/1.1 400 ") else tally.bad)("malformed")
                continue
            if roll < 0.15:  # a connection per request
                one = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    status = _exchange(one, "GET", "/fresh", HOST, None)
                finally:
                    one.close()
                (tally.ok if status == 200 else tally.bad)(f"fresh:{status}")
                continue
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            if roll < 0.20:
                status = _exchange(conn, "GET", "/none", "nothing.example.net", None)
                (tally.ok if status == 404 else tally.bad)(f"no-rule:{status}")
            elif roll < 0.30:
                status = _exchange(conn, "POST", "/post", HOST, BODY)
                (tally.ok if status == 200 else tally.bad)(f"post:{status}")
            else:
                status = _exchange(conn, "GET", f"/k/{rng.randrange(1000)}", HOST, None)
                (tally.ok if status == 200 else tally.bad)(f"keep-alive:{status}")
        except (OSError, http.client.HTTPException) as exc:
            tally.bad(f"{type(exc).__name__}: {exc}")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


# ----------------------------------------------------------------------------- verdict


@dataclass(frozen=True, slots=True)
class Series:
    name: str  # "supervisor" or "worker-N"
    pid: int
    times: tuple[float, ...]
    rss: tuple[int, ...]
    fds: tuple[int, ...]


def flatness(series: Series, warm: int) -> list[str]:
    """Problems with one process's figures after ``warm`` samples (empty when flat)."""
    problems = []
    rss = series.rss[warm:]
    fds = series.fds[warm:]
    if len(rss) < 2:
        return [f"{series.name}: too few samples after the warm-up"]
    base = rss[0]
    allowed = max(4 * MIB, base // 20)
    if rss[-1] - base > allowed:
        problems.append(
            f"{series.name}: memory grew {(rss[-1] - base) / MIB:.1f} MiB after the warm-up "
            f"(allowed {allowed / MIB:.1f})"
        )
    third = max(1, len(fds) // 3)
    if max(fds[-third:]) > max(series.fds[: warm + 1]) + 8:
        problems.append(
            f"{series.name}: descriptors rose from {max(series.fds[: warm + 1])} to "
            f"{max(fds[-third:])}"
        )
    return problems


def run(
    seconds: float, sample: float, rps: float, threads: int, workers: int, warmup: float
) -> dict[str, object]:
    """Soak for ``warmup`` + ``seconds``; the figures and the verdict (see the module doc)."""
    backend_port = free_port(BACKENDS[0])
    work = Path(tempfile.mkdtemp(prefix="albingress-soak-"))
    (work / "manifests").mkdir()
    (work / "manifests" / "soak.yaml").write_text(manifests(backend_port))
    port, admin = free_port(), free_port()
    backends = subprocess.Popen(
        [sys.executable, "-m", "albingress.backends"]
        + [f"b{i}={a}:{backend_port}" for i, a in enumerate(BACKENDS)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    log = (work / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "albingress", "serve", "--manifests", str(work / "manifests"),
         "--listen", f"80=127.0.0.1:{port}", "--listen", f"443=127.0.0.1:{free_port()}",
         "--admin", f"127.0.0.1:{admin}", "--state", str(work / "state.db"),
         "--workers", str(workers), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    tally = Tally()
    samples: dict[str, list[tuple[float, int, int, int]]] = {}
    problems: list[str] = []
    try:
        assert backends.stdout is not None
        if backends.stdout.readline().strip() != b"ready":
            raise SystemExit("the backends did not start")
        wait_healthy(admin, serve)
        pids = {"supervisor": serve.pid}
        pids.update({f"worker-{i}": p for i, p in enumerate(children(serve.pid))})
        print(
            f"soak: {warmup:.0f} s warm-up then {seconds:.0f} s at {rps:.0f} req/s over "
            f"{threads} threads; pids {pids}"
        )
        print(f"{'t (s)':>7} " + " ".join(f"{n + ' MiB/fds':>22}" for n in pids) + "   requests")
        started = time.monotonic()
        until = started + warmup + seconds
        seconds += warmup
        load = [
            threading.Thread(
                target=load_thread, args=(port, rps / threads, until, tally, i), daemon=True
            )
            for i in range(threads)
        ]
        for t in load:
            t.start()
        while True:
            now = time.monotonic() - started
            cells = []
            for name, pid in pids.items():
                try:
                    rss, fds = proc_stats(pid)
                except OSError:
                    problems.append(f"{name} (pid {pid}) is gone")
                    rss, fds = 0, 0
                samples.setdefault(name, []).append((now, pid, rss, fds))
                cells.append(f"{rss / MIB:>14.1f} / {fds:<5d}")
            done = sum(tally.expected.values()) + tally.surprises
            mark = "  (warm-up)" if now < warmup else ""
            print(f"{now:>7.1f} " + " ".join(cells) + f"   {done}{mark}", flush=True)
            if now >= seconds:
                break
            time.sleep(min(sample, max(0.0, seconds - now)))
        for t in load:
            t.join(15)
        if set(children(serve.pid)) != {p for n, p in pids.items() if n != "supervisor"}:
            problems.append("a worker was replaced during the soak (it crashed)")
    finally:
        code = stop(serve)
        stop(backends)
        log.close()
    if code != 0:
        problems.append(f"serve exited with {code}")
    series = [
        Series(
            name,
            rows[0][1],
            tuple(r[0] for r in rows),
            tuple(r[2] for r in rows),
            tuple(r[3] for r in rows),
        )
        for name, rows in samples.items()
    ]
    warm = sum(1 for t in series[0].times if t < warmup) if series else 0
    warm = max(1, warm)
    for s in series:
        problems += flatness(s, warm)
    total = sum(tally.expected.values()) + tally.surprises
    if tally.surprises:
        problems.append(f"{tally.surprises} of {total} requests were not answered as expected")
    return {
        "seconds": seconds,
        "warmup": warmup,
        "requests": total,
        "rps": round(total / seconds, 1) if seconds else 0,
        "by_kind": dict(tally.expected),
        "unexpected": tally.unexpected,
        "warmup_samples": warm,
        "processes": {
            s.name: {
                "rss_mib": [round(v / MIB, 2) for v in s.rss],
                "fds": list(s.fds),
                "rss_growth_mib": round((s.rss[-1] - s.rss[warm]) / MIB, 2)
                if len(s.rss) > warm
                else None,
            }
            for s in series
        },
        "problems": problems,
        "flat": not problems,
        "log": str(work / "serve.log"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600.0, help="length of the soak (600)")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples (10)")
    p.add_argument("--rps", type=float, default=400.0, help="requests per second (400)")
    p.add_argument("--threads", type=int, default=8, help="client threads (8)")
    p.add_argument("--workers", type=int, default=2, help="serve workers (2)")
    p.add_argument(
        "--warmup", type=float, default=None, help="seconds of load before the measure (seconds/5)"
    )
    args = p.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(120.0, args.seconds / 5)
    result = run(args.seconds, args.sample, args.rps, args.threads, args.workers, warmup)
    for problem in result["problems"]:  # type: ignore[attr-defined]
        print(f"NOT FLAT: {problem}")
    print("RESULT " + json.dumps(result))
    return 0 if result["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
