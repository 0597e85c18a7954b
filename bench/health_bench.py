"""What active health checks cost: 1,000 servers checked every second, CPU of the checker.

    uv run python bench/health_bench.py [--servers 1000] [--duration 20] [--protocol HTTP]
                                        [--loop uvloop|asyncio]

A child process opens one listening socket per server on 127.0.3.x / 127.0.4.x (two ports per
address, answering every request with a short 200 and closing). This process runs one
:class:`albingress.servergroups.health.HealthChecker` over an IR of those servers (groups of
100, interval 1 s, thresholds 3), lets it warm up for one interval, then measures its own CPU
time (``resource.getrusage``) over ``--duration`` seconds and prints it as a percentage of one
core, with the number of checks done. Target (issue #4): under 10% of one core. The backends'
CPU is measured separately (from /proc) and printed for information only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from _procs import BenchError, require_loopback
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


class _Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(RESPONSE)  # type: ignore[attr-defined]
        self.transport.close()


async def serve_backends(servers: int) -> None:
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
    # Run until our parent closes our stdin (or kills us).
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
    for srv in listeners:
        srv.close()


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


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    bound: list[tuple[str, int]], args: argparse.Namespace, child: int
) -> dict[str, float]:
    changes: list[frozenset[str]] = []
    checker = HealthChecker(changes.append, address_allowed=lambda a: a.startswith("127."))
    checker.update(build_ir(bound, args.protocol))
    task = asyncio.create_task(checker.run())
    try:
        await asyncio.sleep(args.warmup)
        c0, w0, n0, b0 = (
            cpu_seconds(),
            time.monotonic(),
            checker.checks_done,
            proc_cpu_seconds(child),
        )
        await asyncio.sleep(args.duration)
        c1, w1, n1, b1 = (
            cpu_seconds(),
            time.monotonic(),
            checker.checks_done,
            proc_cpu_seconds(child),
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    wall = w1 - w0
    return {
        "servers": len(bound),
        "wall_s": wall,
        "checks": n1 - n0,
        "checks_per_s": (n1 - n0) / wall,
        "checker_cpu_pct": 100 * (c1 - c0) / wall,
        "backends_cpu_pct": 100 * (b1 - b0) / wall,
        "unhealthy": len(checker.unhealthy()),
    }


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
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--protocol", default="HTTP", choices=["HTTP", "TCP"])
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    p.add_argument("--serve-backends", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve_backends:
        run_loop(lambda: serve_backends(args.serve_backends), args.loop)
        return 0

    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-backends", str(args.servers), "--loop", args.loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise BenchError(f"backends exited with {child.wait(5)}")
        bound = [(a, int(port)) for a, port in json.loads(line)]
        print(
            f"{len(bound)} backends listening on 127.0.3.x/127.0.4.x (pid {child.pid}); "
            f"checking {args.protocol} every 1 s for {args.duration:.0f} s on {args.loop}"
        )
        result = run_loop(lambda: measure(bound, args, child.pid), args.loop)
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if child.stdin is not None:
            with contextlib.suppress(OSError):
                child.stdin.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    print(
        f"checker CPU: {result['checker_cpu_pct']:.1f}% of one core for {result['servers']} servers"
        f" ({result['checks_per_s']:.0f} checks/s, {result['checks']} checks in"
        f" {result['wall_s']:.1f} s, {result['unhealthy']} unhealthy);"
        f" backends' CPU {result['backends_cpu_pct']:.1f}%"
    )
    if result["unhealthy"]:
        print("FAILED: healthy backends were reported unhealthy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
