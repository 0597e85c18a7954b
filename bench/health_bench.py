"""What active health checks cost: 1,000 servers checked every second, CPU of the checker.

    uv run python bench/health_bench.py [--servers 1000] [--duration 20] [--protocol HTTP]
                                        [--loop uvloop|asyncio] [--serve]

A child process opens one listening socket per server on 127.0.3.x / 127.0.4.x (two ports per
address, answering every request with a short 200 and closing, counting what it answered).

- Default: this process runs one :class:`albingress.servergroups.health.HealthChecker` over an
  IR of those servers (groups of 100, interval 1 s, thresholds 3), lets it warm up, then
  measures its own CPU time (``resource.getrusage``) over ``--duration`` seconds.
- ``--serve``: a real ``albingress serve --workers 1`` over ServerGroup manifests of those
  servers (five groups of 200, HTTP checks every 1 s, one rule using them); the supervisor's CPU
  is read from /proc, once with checks disabled (the baseline) and once enabled.

CPU is printed as a percentage of one core. Target (issue #4): under 10% of one core. The
backends' CPU is measured separately and printed for information only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from _procs import (
    BenchError,
    Processes,
    children,
    cpu_seconds_of,
    free_port,
    http_get,
    require_loopback,
    workdir,
)
from albingress.ir import IR, GroupSource, HealthCheck, Protocol, Scheduler, Server, ServerGroup
from albingress.servergroups.health import HealthChecker

T = TypeVar("T")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def addresses(count: int) -> list[str]:
    """``count`` distinct loopback addresses: 127.0.3.1-250, then 127.0.4.1-250."""
    out = [f"127.0.{3 + i // 250}.{i % 250 + 1}" for i in range(count)]
    if count > 500:
        raise BenchError("at most 500 addresses (127.0.3.x and 127.0.4.x)")
    return out


# --------------------------------------------------------------------------- backends (child)


ANSWERED = [0]  # requests answered by this backends process


class _Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        ANSWERED[0] += 1
        self.transport.write(RESPONSE)  # type: ignore[attr-defined]
        self.transport.close()


async def serve_backends(servers: int) -> None:
    """Bind the listeners, print them as JSON, then answer ``count`` lines on stdin until EOF."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    listeners = []
    bound: list[tuple[str, int]] = []
    for i, addr in enumerate(addresses((servers + 1) // 2)):
        for _ in range(2 if 2 * i + 1 < servers else servers - 2 * i):
            srv = await loop.create_server(_Answer, require_loopback(addr), 0, backlog=128)
            listeners.append(srv)
            bound.append((addr, srv.sockets[0].getsockname()[1]))
    print(json.dumps(bound), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():  # until our parent closes our stdin
        print(ANSWERED[0], flush=True)
    for srv in listeners:
        srv.close()


class BackendsProcess:
    """The backends child: started with pipes, asked for its request count, stopped by PID."""

    def __init__(self, servers: int, loop_kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-backends", str(servers), "--loop", loop_kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise BenchError("the backends process exited before listening")
        self.bound = [(a, int(port)) for a, port in json.loads(line)]

    def answered(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------- checker (parent)


def build_ir(bound: list[tuple[str, int]], protocol: str) -> IR:
    hc = HealthCheck(enabled=True, protocol=protocol, interval=1, timeout=2)
    groups = []
    for g in range(0, len(bound), 100):
        chunk = sorted(bound[g : g + 100])
        groups.append(
            ServerGroup(
                id=f"sgp-bench{g // 100:04d}",
                name=f"bench-{g // 100}",
                source=GroupSource.SERVER_GROUP,
                protocol=Protocol.HTTP,
                scheduler=Scheduler.WRR,
                servers=tuple(Server(a, p, 100, a) for a, p in chunk),
                health_check=hc,
            )
        )
    return IR(listeners=(), server_groups=tuple(groups))


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def measure(backends: BackendsProcess, args: argparse.Namespace) -> dict[str, float]:
    """The checker in this process: its CPU time over ``args.duration`` seconds."""
    changes: list[frozenset[str]] = []
    checker = HealthChecker(changes.append, address_allowed=lambda a: a.startswith("127."))
    checker.update(build_ir(backends.bound, args.protocol))
    task = asyncio.create_task(checker.run())
    child = backends.proc.pid
    try:
        await asyncio.sleep(args.warmup)
        c0, w0, n0, b0 = (
            cpu_seconds(),
            time.monotonic(),
            checker.checks_done,
            cpu_seconds_of(child),
        )
        await asyncio.sleep(args.duration)
        c1, w1, n1, b1 = (
            cpu_seconds(),
            time.monotonic(),
            checker.checks_done,
            cpu_seconds_of(child),
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    wall = w1 - w0
    return {
        "wall_s": wall,
        "checks": n1 - n0,
        "cpu_pct": 100 * (c1 - c0) / wall,
        "backends_cpu_pct": 100 * (b1 - b0) / wall,
        "unhealthy": len(checker.unhealthy()),
    }


# --------------------------------------------------------------------------- albingress serve


def servergroup_manifests(directory: Path, bound: list[tuple[str, int]], enabled: bool) -> None:
    """Five ServerGroups of up to 200 servers with HTTP checks every 1 s, used by one rule."""
    directory.mkdir(parents=True, exist_ok=True)
    docs: list[dict[str, object]] = []
    groups = []
    for g in range(0, len(bound), 200):
        gid = f"sgp-healthbench{g // 200}"
        groups.append({"ServerGroupID": gid, "Weight": 20})
        docs.append(
            {
                "apiVersion": "albingress.dev/v1alpha1",
                "kind": "ServerGroup",
                "metadata": {"name": f"health-bench-{g // 200}"},
                "spec": {
                    "serverGroupId": gid,
                    "serverGroupName": f"health-bench-{g // 200}",
                    "serverGroupType": "Ip",
                    "protocol": "HTTP",
                    "healthCheckConfig": {
                        "healthCheckEnabled": enabled,
                        "healthCheckInterval": 1,
                        "healthCheckTimeout": 2,
                    },
                    "servers": [
                        {
                            "serverType": "Ip",
                            "serverId": a,
                            "serverIp": require_loopback(a),
                            "port": port,
                            "weight": 100,
                        }
                        for a, port in bound[g : g + 200]
                    ],
                },
            }
        )
    action = [{"type": "ForwardGroup", "ForwardConfig": {"ServerGroups": groups}}]
    docs.append(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": "health-bench",
                "annotations": {"alb.ingress.kubernetes.io/actions.forward": json.dumps(action)},
            },
            "spec": {
                "ingressClassName": "alb",
                "rules": [
                    {
                        "host": "health.bench.test",
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {
                                        "service": {
                                            "name": "forward",
                                            "port": {"name": "use-annotation"},
                                        }
                                    },
                                }
                            ]
                        },
                    }
                ],
            },
        }
    )
    text = "".join("---\n" + json.dumps(d, indent=1) + "\n" for d in docs)
    (directory / "health-bench.yaml").write_text(text)


def measure_serve(
    backends: BackendsProcess, args: argparse.Namespace, enabled: bool
) -> dict[str, float]:
    """``albingress serve --workers 1`` over the servers: the supervisor's CPU, from /proc."""
    with workdir("health") as wd, Processes(wd) as procs:
        servergroup_manifests(wd / "manifests", backends.bound, enabled)
        admin = free_port()
        argv = [
            sys.executable, "-m", "albingress", "serve",
            "--manifests", str(wd / "manifests"),
            "--listen", f"80=127.0.0.1:{free_port()}",
            "--listen", f"443=127.0.0.1:{free_port()}",
            "--admin", f"127.0.0.1:{admin}",
            "--workers", "1",
            "--state", str(wd / "state.db"),
        ]  # fmt: skip
        proc = procs.start("albingress", argv)
        deadline = time.monotonic() + 60
        while http_status(admin, "/healthz") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"albingress serve did not start:\n{procs.log_tail(proc)}")
            time.sleep(0.1)
        time.sleep(args.warmup)
        workers = children(proc.pid)
        s0, k0, a0, w0 = (
            cpu_seconds_of(proc.pid),
            sum(cpu_seconds_of(p) for p in workers),
            backends.answered(),
            time.monotonic(),
        )
        time.sleep(args.duration)
        s1, k1, a1, w1 = (
            cpu_seconds_of(proc.pid),
            sum(cpu_seconds_of(p) for p in workers),
            backends.answered(),
            time.monotonic(),
        )
        if proc.poll() is not None:
            raise BenchError(f"albingress serve exited:\n{procs.log_tail(proc)}")
    wall = w1 - w0
    return {
        "wall_s": wall,
        "checks": a1 - a0,
        "cpu_pct": 100 * (s1 - s0) / wall,
        "workers_cpu_pct": 100 * (k1 - k0) / wall,
    }


def http_status(port: int, path: str) -> int:
    try:
        return http_get("127.0.0.1", port, path, "127.0.0.1", timeout=1)[0]
    except OSError:
        return 0


# --------------------------------------------------------------------------- main


def run_loop(coro_factory: Callable[[], Coroutine[Any, Any, T]], loop_kind: str) -> T:
    if loop_kind == "uvloop":
        import uvloop

        result: T = uvloop.run(coro_factory())
        return result
    return asyncio.run(coro_factory())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--servers", type=int, default=1000)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds (20)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--protocol", default="HTTP", choices=["HTTP", "TCP"])
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    p.add_argument(
        "--serve",
        action="store_true",
        help="measure a real `albingress serve` supervisor (with a baseline without checks)",
    )
    p.add_argument("--serve-backends", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve_backends:
        run_loop(lambda: serve_backends(args.serve_backends), args.loop)
        return 0

    try:
        backends = BackendsProcess(args.servers, args.loop)
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    try:
        print(
            f"{len(backends.bound)} backends listening on 127.0.3.x/127.0.4.x"
            f" (pid {backends.proc.pid}); checks every 1 s, measured over {args.duration:.0f} s"
        )
        if args.serve:
            base = measure_serve(backends, args, enabled=False)
            print(f"albingress serve, checks disabled: supervisor CPU {base['cpu_pct']:.1f}%")
            res = measure_serve(backends, args, enabled=True)
            print(
                f"albingress serve, {len(backends.bound)} servers checked: supervisor CPU"
                f" {res['cpu_pct']:.1f}% of one core ({res['checks'] / res['wall_s']:.0f} checks/s"
                f" answered by the backends; workers {res['workers_cpu_pct']:.1f}%);"
                f" the checks' share: {res['cpu_pct'] - base['cpu_pct']:.1f}%"
            )
            if res["checks"] < 0.9 * len(backends.bound) * res["wall_s"]:
                raise BenchError("fewer checks than one per server per second")
            return 0
        r = run_loop(lambda: measure(backends, args), args.loop)
        print(
            f"checker CPU: {r['cpu_pct']:.1f}% of one core for {len(backends.bound)} servers"
            f" on {args.loop}, {args.protocol} ({r['checks'] / r['wall_s']:.0f} checks/s,"
            f" {r['unhealthy']} unhealthy); backends' CPU {r['backends_cpu_pct']:.1f}%"
        )
        if r["unhealthy"]:
            raise BenchError("healthy backends were reported unhealthy")
        return 0
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        backends.stop()


if __name__ == "__main__":
    sys.exit(main())
