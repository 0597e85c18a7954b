"""What metrics and the access log cost: albingress with them off, with metrics only, and with
metrics and an access log file, and with the log written to /dev/null (what albingress itself
pays, without the file system's page cache and writeback), against the same two nginx backends,
under wrk.

    uv run python bench/observability_bench.py [--rounds 3] [--duration 5] [--connections 32]
                                               [--workers 1] [--python]

Everything runs on loopback (backends on 127.0.1.1 / 127.0.1.2, fronts on 127.0.0.1), one
albingress worker each (``--workers``: more). Rounds are interleaved (off, metrics,
metrics+log, off, ...) so that a change in the machine's load hits every variant alike; the
figures are medians over rounds, and each "vs off" is the median of the round-by-round ratios
(paired: the machine's speed drifts between rounds more than the costs measured). ``--python`` adds ``metrics+log-py``: the same as
``metrics+log`` with the C part turned off (``ALBINGRESS_PURE_PYTHON=1``), what an install
without a C compiler pays.
Because wrk, albingress and nginx share the cores, requests per CPU-second of albingress (its
supervisor and worker) is printed too: it is the cost per request whatever the contention.
At the end, /metrics of each variant is read back: the requests it counted must be at least
what wrk sent, and the access log must hold one line per request counted.
Every process started is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fronts as fr
from _procs import (
    BenchError,
    Processes,
    find_nginx,
    find_wrk,
    free_port,
    tree_cpu_seconds,
    wait_ok,
    workdir,
)
from _wrk import WrkResult, lua_script, run_wrk

VARIANTS: dict[str, tuple[str, ...]] = {
    "off": ("--no-metrics", "--access-log", "off"),
    "metrics": ("--metrics", "--access-log", "off"),
    "metrics+log": ("--metrics", "--access-log", "{wd}/access-{name}.log"),
    # the same lines thrown away by the kernel: albingress's own cost, without the file system's
    "metrics+log>null": ("--metrics", "--access-log", "/dev/null"),
}


@dataclass(slots=True)
class Variant:
    name: str
    port: int
    admin: int
    pid: int
    log: Path | None
    results: list[WrkResult] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def rps(self) -> float:
        return statistics.median(r.rps for r in self.results)

    def per_cpu(self) -> float:
        return statistics.median(
            r.requests / c for r, c in zip(self.results, self.cpu, strict=True) if c > 0
        )

    def vs(self, base: Variant, what: str) -> float:
        """The median over rounds of this variant's figure over ``base``'s in the same round:
        the machine's speed drifts by more than the costs measured here (+-10% from one round to
        the next), and the variants of one round ran side by side within seconds."""
        ratios = []
        for mine, theirs, my_cpu, their_cpu in zip(
            self.results, base.results, self.cpu, base.cpu, strict=True
        ):
            if what == "rps":
                ratios.append(mine.rps / theirs.rps)
            elif my_cpu > 0 and their_cpu > 0:
                ratios.append((mine.requests / my_cpu) / (theirs.requests / their_cpu))
        return statistics.median(ratios) if ratios else 0.0

    def p99(self) -> float:
        return statistics.median(r.p99_ms for r in self.results)


def start_variant(
    procs: Processes,
    wd: Path,
    backends: fr.Backends,
    name: str,
    flags: tuple[str, ...],
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Variant:
    port, admin, tls_port = free_port(), free_port(), free_port()
    manifests = wd / f"{name}-manifests"
    fr.albingress_manifests(manifests, backends)
    extra = [f.format(wd=wd, name=name) for f in flags]
    argv = [
        sys.executable, "-m", "albingress", "serve", "--manifests", str(manifests),
        "--listen", f"80=127.0.0.1:{port}", "--listen", f"443=127.0.0.1:{tls_port}",
        "--admin", f"127.0.0.1:{admin}", "--workers", str(workers),
        "--state", str(wd / f"{name}-state.db"), "--log-level", "warning", *extra,
    ]  # fmt: skip
    proc = procs.start(f"alb-{name}", argv, env)
    if wait_ok(procs, proc, name, port, fr.PATH, fr.HOST, time.monotonic() + 60):
        log = Path(extra[-1]) if name.startswith("metrics+log") and ">" not in name else None
        return Variant(name, port, admin, proc.pid, log)
    raise BenchError(f"{name} not serving after 60 s:\n{procs.log_tail(proc)}")


def counted(v: Variant) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", v.admin, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(
        int(float(m.group(1)))
        for m in re.finditer(r"^albingress_requests_total\{.*\} (\S+)$", text, re.M)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="albingress workers per variant")
    p.add_argument("--python", action="store_true", help="add metrics+log without the C part")
    args = p.parse_args()
    nginx, wrk = find_nginx(), find_wrk()
    if nginx is None or wrk is None:
        print("nginx and wrk are needed (bench/setup.sh installs them)")
        return 2
    with workdir("observability") as wd, Processes(wd) as procs:
        script = lua_script(wd)
        backends = fr.start_backends(procs, wd, nginx)
        variants = [
            start_variant(procs, wd, backends, n, f, args.workers) for n, f in VARIANTS.items()
        ]
        if args.python:
            flags = VARIANTS["metrics+log"]
            py = {"ALBINGRESS_PURE_PYTHON": "1"}
            variants.append(
                start_variant(procs, wd, backends, "metrics+log-py", flags, args.workers, py)
            )
        sent = {v.name: 0 for v in variants}
        for v in variants:  # warm-up
            r = run_wrk(wrk, script, host="127.0.0.1", port=v.port, path=fr.PATH,
                        host_header=fr.HOST, connections=args.connections, duration=1)  # fmt: skip
            sent[v.name] += r.requests
        for rnd in range(1, args.rounds + 1):
            for v in variants:
                cpu0 = tree_cpu_seconds(v.pid)
                r = run_wrk(wrk, script, host="127.0.0.1", port=v.port, path=fr.PATH,
                            host_header=fr.HOST, connections=args.connections,
                            duration=args.duration)  # fmt: skip
                cpu = tree_cpu_seconds(v.pid) - cpu0
                if r.failed:
                    raise BenchError(f"{v.name}: wrk saw errors {r.errors}")
                v.results.append(r)
                v.cpu.append(cpu)
                sent[v.name] += r.requests
                print(f"  round {rnd} {v.name:17} {r.rps:9.0f} req/s  p99 {r.p99_ms:6.2f} ms"
                      f"  {r.requests / cpu if cpu else 0:8.0f} req/CPU-s")  # fmt: skip
        base = variants[0]
        print(f"\n{'variant':18}{'req/s':>10}{'vs off':>8}{'req/CPU-s':>11}{'vs off':>8}"
              f"{'p99 ms':>8}")  # fmt: skip
        for v in variants:
            print(f"{v.name:18}{v.rps():10.0f}{v.vs(base, 'rps'):8.3f}{v.per_cpu():11.0f}"
                  f"{v.vs(base, 'cpu'):8.3f}{v.p99():8.2f}")  # fmt: skip
        print()
        for v in variants[1:]:
            n = counted(v)
            line = f"{v.name}: /metrics counted {n} requests, wrk completed {sent[v.name]}"
            if n < sent[v.name]:
                raise BenchError(line + ": requests missing from /metrics")
            if v.log is not None:
                time.sleep(0.5)
                lines = sum(1 for _ in v.log.open("rb"))
                line += f", access log lines {lines}"
                if lines < sent[v.name]:
                    raise BenchError(line + ": lines missing from the access log")
            print(line)
        print(f"\nfiles in {wd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
