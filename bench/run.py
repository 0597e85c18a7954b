"""albingress side by side with nginx and Envoy: one command, everything on loopback.

    uv run python bench/run.py [--quick] [--duration S] [--connections C] [--rounds N]
                               [--fronts nginx,envoy,albingress] [--rules N] [--reload]
                               [--only-scenarios] [--markdown]

Starts two nginx backends (127.0.1.1 and 127.0.1.2, one worker each, a short 200 answer), then
three fronts with the same rule (host demo.domain.ingress.top, prefix /path, 80/20 over the two
backends, keep-alive upstream pools, one worker each): nginx, Envoy and albingress. Before
measuring, each front must split about 80/20 over 500 requests (counted by response body) and
answer 200 to all of them. Then wrk (``-t1 -cC -dS``) drives the fronts in turn, round-robin
over several rounds; the medians of requests/s, p50 and p99 latency are printed with the ratios
albingress/nginx and albingress/Envoy, and, because wrk, the front and the backends share the
machine's cores, each front's CPU use (its processes and their workers, from /proc) and its
requests per CPU-second. Any wrk error (connect/read/write/timeout, or an HTTP
status >= 400) fails the run.

``--rules N`` compares albingress with 10 rules against albingress with N rules (throughput
ratio); ``--reload`` measures how long a manifest write takes to be live (new config version on
the admin address, then a request that hits the new rule). Until ``albingress serve`` exists,
albingress is skipped with a message. Every process started is stopped by its PID at the end,
also on Ctrl-C or an error. Setup: ``bench/setup.sh``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _fronts as fr
from _procs import (
    BenchError,
    Processes,
    albingress_serve_available,
    find_envoy,
    find_nginx,
    find_wrk,
    free_port,
    http_get,
    require_loopback,
    tree_cpu_seconds,
    wait_ok,
    wait_tcp,
    workdir,
)
from _wrk import WrkResult, lua_script, run_wrk

SPLIT_REQUESTS = 500
SPLIT_TOLERANCE_PP = 6.0  # Envoy picks at random: 6 points is > 3 sigma over 500 requests


@dataclass(slots=True)
class Front:
    name: str
    port: int
    pid: int  # the front's main process; its workers are found under it
    results: list[WrkResult] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds of the front, per round

    def median(self, attr: str) -> float:
        values = [r.rps if attr == "rps" else getattr(r, attr) for r in self.results]
        return statistics.median(values) if values else 0.0

    def cpu_pct(self) -> float:
        """Median CPU use of the front's processes during a round, in % of one core."""
        values = [100 * c / r.duration_s for c, r in zip(self.cpu, self.results, strict=True)]
        return statistics.median(values) if values else 0.0

    def per_cpu(self) -> float:
        """Median requests per CPU-second of the front: efficiency, whatever the contention."""
        values = [r.requests / c for c, r in zip(self.cpu, self.results, strict=True) if c > 0]
        return statistics.median(values) if values else 0.0


# --------------------------------------------------------------------------- starting things


def start_nginx_front(procs: Processes, wd: Path, nginx: str, backends: fr.Backends) -> Front:
    port = free_port()
    conf = fr.nginx_front_conf(wd, port, backends)
    proc = procs.start("nginx-front", [nginx, "-p", str(wd), "-c", str(conf), "-e", "stderr"])
    wait_tcp("127.0.0.1", port, proc=proc)
    return Front("nginx", port, proc.pid)


def start_envoy(procs: Processes, wd: Path, envoy: str, backends: fr.Backends) -> Front:
    port = free_port()
    conf = fr.envoy_conf(wd, port, backends)
    argv = [envoy, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"]
    proc = procs.start("envoy", argv)
    wait_tcp("127.0.0.1", port, timeout=30, proc=proc)
    return Front("envoy", port, proc.pid)


@dataclass(frozen=True, slots=True)
class Albingress:
    front: Front
    admin_port: int
    manifests: Path


def start_albingress(
    procs: Processes, wd: Path, backends: fr.Backends, rules: int = 1, name: str = "albingress"
) -> Albingress:
    port, admin, tls_port = free_port(), free_port(), free_port()
    manifests = wd / f"{name}-manifests"
    fr.albingress_manifests(manifests, backends, rules)
    argv = [
        sys.executable, "-m", "albingress", "serve",
        "--manifests", str(manifests),
        "--listen", f"80=127.0.0.1:{port}",
        "--listen", f"443=127.0.0.1:{tls_port}",  # not measured; kept off the default 8443
        "--admin", f"127.0.0.1:{admin}",
        "--workers", "1",
        "--state", str(wd / f"{name}-state.db"),
        "--access-log", "off",  # like for like: the nginx front logs nothing either
    ]  # fmt: skip
    proc = procs.start(name, argv)
    deadline = time.monotonic() + 120
    if wait_ok(procs, proc, name, admin, "/healthz", "127.0.0.1", deadline, pause=0.1):
        wait_tcp("127.0.0.1", port, proc=proc)
        # /healthz may answer before the worker has its first config: wait for the rule itself.
        if wait_ok(procs, proc, name, port, fr.PATH, fr.HOST, deadline):
            return Albingress(Front(name, port, proc.pid), admin, manifests)
    raise BenchError(f"{name} not healthy after 120s:\n{procs.log_tail(proc)}")


# --------------------------------------------------------------------------- checks


def check_split(front: Front, requests: int = SPLIT_REQUESTS) -> float:
    """Send ``requests`` over one keep-alive connection; return backend A's share in %."""
    conn = http.client.HTTPConnection(require_loopback("127.0.0.1"), front.port, timeout=5)
    counts: Counter[str] = Counter()
    try:
        for _ in range(requests):
            conn.request("GET", fr.PATH, headers={"Host": fr.HOST})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            if resp.status != 200:
                raise BenchError(f"{front.name}: status {resp.status} during split check: {body!r}")
            counts[body] += 1
    finally:
        conn.close()
    unknown = set(counts) - {fr.BODY_A, fr.BODY_B}
    if unknown:
        raise BenchError(f"{front.name}: unexpected bodies {unknown}")
    share_a = 100.0 * counts[fr.BODY_A] / requests
    expected = 100.0 * fr.WEIGHT_A / (fr.WEIGHT_A + fr.WEIGHT_B)
    print(
        f"  {front.name:16} split A/B = {counts[fr.BODY_A]}/{counts[fr.BODY_B]} ({share_a:.1f}% A)"
    )
    if abs(share_a - expected) > SPLIT_TOLERANCE_PP:
        raise BenchError(f"{front.name}: backend A got {share_a:.1f}%, expected {expected:.0f}%")
    return share_a


def check_404(front: Front) -> None:
    status, _ = http_get("127.0.0.1", front.port, "/elsewhere", fr.HOST)
    if status != 404:
        raise BenchError(f"{front.name}: /elsewhere answered {status}, expected 404")


# --------------------------------------------------------------------------- measuring


def target(f: Front) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": f.port, "path": fr.PATH, "host_header": fr.HOST}


def measure(fronts: list[Front], wrk: str, script: Path, args: argparse.Namespace) -> None:
    print(f"warm-up: 1 s each, then {args.rounds} rounds of {args.duration} s per front")
    for f in fronts:
        run_wrk(wrk, script, **target(f), connections=args.connections, duration=1)
    for rnd in range(1, args.rounds + 1):
        for f in fronts:
            cpu0 = tree_cpu_seconds(f.pid)
            r = run_wrk(
                wrk, script, **target(f), connections=args.connections, duration=args.duration
            )
            cpu = tree_cpu_seconds(f.pid) - cpu0
            if r.failed:
                raise BenchError(f"{f.name}: wrk saw errors {r.errors} in round {rnd}")
            f.results.append(r)
            f.cpu.append(cpu)
            print(
                f"  round {rnd} {f.name:16} {r.rps:10.0f} req/s  p50 {r.p50_ms:6.2f} ms"
                f"  p99 {r.p99_ms:6.2f} ms  CPU {100 * cpu / r.duration_s:5.1f}%"
            )


def print_table(fronts: list[Front]) -> None:
    print()
    print(f"{'front':18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU %':>8}{'req/CPU-s':>11}")
    for f in fronts:
        rps, p50, p99 = f.median("rps"), f.median("p50_ms"), f.median("p99_ms")
        print(f"{f.name:18}{rps:10.0f}{p50:9.2f}{p99:9.2f}{f.cpu_pct():8.0f}{f.per_cpu():11.0f}")
    by = {f.name: f for f in fronts}
    alb = by.get("albingress")
    if alb is None:
        if "nginx" in by and "envoy" in by:
            ratio = by["nginx"].median("rps") / by["envoy"].median("rps")
            print(f"\nnginx/Envoy requests/s: {ratio:.2f}x  (albingress skipped)")
        return
    print()
    for other in ("nginx", "envoy"):
        if other in by:
            o = by[other]
            print(
                f"albingress/{other:6} req/s {alb.median('rps') / o.median('rps'):5.2f}x"
                f"   p99 {alb.median('p99_ms') / o.median('p99_ms'):5.2f}x"
                f"   req/CPU-s {alb.per_cpu() / o.per_cpu():5.2f}x"
            )


def save_json(path: Path, fronts: list[Front], args: argparse.Namespace) -> None:
    """Every round's figures, for scripts: ``bench/out/run-*/results.json``."""
    data = {
        "machine": args.machine,
        "wrk": {"connections": args.connections, "duration": args.duration, "rounds": args.rounds},
        "fronts": {
            f.name: {
                "rps": f.median("rps"),
                "p50_ms": f.median("p50_ms"),
                "p99_ms": f.median("p99_ms"),
                "cpu_pct": f.cpu_pct(),
                "requests_per_cpu_second": f.per_cpu(),
                "rounds": [
                    {"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "cpu_s": c}
                    for r, c in zip(f.results, f.cpu, strict=True)
                ],
            }
            for f in fronts
        },
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"figures saved in {path}")


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {nproc} cores ({model}); "
        f"{mem_kb / 1024 / 1024:.0f} GiB; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; load average before {' '.join(load)}"
    )


def print_markdown(fronts: list[Front], args: argparse.Namespace) -> None:
    print(
        "\n| front | req/s | p50 ms | p99 ms | front CPU % | req per CPU-s |"
        "\n|---|---:|---:|---:|---:|---:|"
    )
    for f in fronts:
        print(
            f"| {f.name} | {f.median('rps'):.0f} | {f.median('p50_ms'):.2f}"
            f" | {f.median('p99_ms'):.2f} | {f.cpu_pct():.0f} | {f.per_cpu():.0f} |"
        )
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} rounds interleaved,"
        f" medians. Machine: {args.machine}"
    )


# --------------------------------------------------------------------------- scenarios


def config_version(admin_port: int) -> object:
    status, body = http_get("127.0.0.1", admin_port, "/api/v1/config", "127.0.0.1")
    if status != 200:
        raise BenchError(f"/api/v1/config answered {status}")
    data = json.loads(body)
    return data.get("version") if isinstance(data, dict) else None


def scenario_reload(alb: Albingress, times: int = 5) -> None:
    """Write a new Ingress file; time until the config version changes and the rule answers."""
    print(f"\nreload: {times} manifest writes, each adding a host")
    to_config, to_live = [], []
    for k in range(times):
        host = f"reload-{k}.bench.test"
        before = config_version(alb.admin_port)
        t0 = time.perf_counter()
        fr.write_yaml_docs(
            alb.manifests / f"reload-{k}.yaml", [fr.ingress_doc(f"reload-{k}", [(host, [fr.PATH])])]
        )
        t_config = t_live = None
        deadline = t0 + 10
        while time.perf_counter() < deadline and (t_config is None or t_live is None):
            if t_config is None and config_version(alb.admin_port) != before:
                t_config = time.perf_counter() - t0
            if t_live is None:
                try:
                    status, _ = http_get("127.0.0.1", alb.front.port, fr.PATH, host, timeout=1)
                except OSError:
                    status = 0
                if status == 200:
                    t_live = time.perf_counter() - t0
            time.sleep(0.002)
        if t_config is None or t_live is None:
            raise BenchError(f"reload {k}: not live after 10 s (config {t_config}, live {t_live})")
        to_config.append(t_config * 1000)
        to_live.append(t_live * 1000)
        print(f"  write {k}: new version {to_config[-1]:6.1f} ms, rule live {to_live[-1]:6.1f} ms")
        time.sleep(0.3)
    print(
        f"reload median: version {statistics.median(to_config):.1f} ms,"
        f" live {statistics.median(to_live):.1f} ms (max {max(to_live):.1f} ms)"
    )


def scenario_rules(
    procs: Processes,
    wd: Path,
    *,
    backends: fr.Backends,
    wrk: str,
    script: Path,
    args: argparse.Namespace,
) -> None:
    print(f"\nrules: albingress with 10 rules vs {args.rules} rules")
    small = start_albingress(procs, wd, backends, rules=10, name="alb-10-rules").front
    big = start_albingress(
        procs, wd, backends, rules=args.rules, name=f"alb-{args.rules}-rules"
    ).front
    for f in (small, big):
        check_split(f)
    measure([small, big], wrk, script, args)
    print_table([small, big])
    ratio = big.median("rps") / small.median("rps")
    per_cpu = big.per_cpu() / small.per_cpu() if small.per_cpu() else 0.0
    print(
        f"\n{args.rules} rules / 10 rules: requests/s {ratio:.3f}x,"
        f" requests per CPU-second {per_cpu:.3f}x"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short run: 3 s x 2 rounds")
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (10)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3)")
    p.add_argument("--rules", type=int, default=0, help="also compare 10 rules vs N rules")
    p.add_argument("--reload", action="store_true", help="also time a manifest change going live")
    p.add_argument("--only-scenarios", action="store_true", help="skip the three-front comparison")
    p.add_argument(
        "--fronts",
        default="nginx,envoy,albingress",
        help="comma-separated subset of nginx,envoy,albingress to compare (all three)",
    )
    p.add_argument("--markdown", action="store_true", help="print a table for RESULTS.md")
    args = p.parse_args(argv)
    args.fronts = {f.strip().lower() for f in args.fronts.split(",") if f.strip()}
    unknown = args.fronts - {"nginx", "envoy", "albingress"}
    if unknown:
        p.error(f"--fronts: unknown {sorted(unknown)}")
    args.duration = args.duration or (3 if args.quick else 10)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.machine = machine()  # before anything runs: the load average is the machine's own
    print(f"machine: {args.machine}")
    nginx, wrk, envoy = find_nginx(), find_wrk(), find_envoy()
    if not nginx or not wrk:
        print("nginx and wrk are needed: run bench/setup.sh", file=sys.stderr)
        return 2
    serve = albingress_serve_available()
    if not serve:
        print("albingress: `albingress serve` is not available yet -- skipping albingress")
    if not envoy:
        print("envoy: not found (run bench/setup.sh) -- skipping Envoy")
    try:
        with workdir("run") as wd, Processes(wd) as procs:
            print(f"work directory: {wd}")
            script = lua_script(wd)
            backends = fr.start_backends(procs, wd, nginx)
            fronts: list[Front] = []
            alb: Albingress | None = None
            compare = not args.only_scenarios
            if compare and "nginx" in args.fronts:
                fronts.append(start_nginx_front(procs, wd, nginx, backends))
            if compare and envoy and "envoy" in args.fronts:
                fronts.append(start_envoy(procs, wd, envoy, backends))
            if serve and ((compare and "albingress" in args.fronts) or args.reload):
                alb = start_albingress(procs, wd, backends)
                if compare and "albingress" in args.fronts:
                    fronts.append(alb.front)
            if fronts:
                print("checking each front (200s, 80/20 split, 404 elsewhere):")
                for f in fronts:
                    check_split(f)
                    check_404(f)
                measure(fronts, wrk, script, args)
                print_table(fronts)
                save_json(wd / "results.json", fronts, args)
                if args.markdown:
                    print_markdown(fronts, args)
            if serve and args.rules:
                scenario_rules(procs, wd, backends=backends, wrk=wrk, script=script, args=args)
            elif args.rules:
                print("--rules: skipped, `albingress serve` is not available yet")
            if alb is not None and args.reload:
                scenario_reload(alb)
            elif args.reload:
                print("--reload: skipped, `albingress serve` is not available yet")
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; processes stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
