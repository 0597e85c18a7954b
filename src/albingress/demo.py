"""``albingress demo``: the seed's four scenarios, served and measured on loopback.

The demo starts stand-in servers on loopback addresses (pods of tea-svc and coffee-svc, ECS
instances, a server "in another region", servers "in a data center"), runs ``albingress serve`` on a
scratch manifests directory, and puts the seed's scenarios into that directory one after the other
(each swap is a live reload). For each it sends a few thousand requests and prints, per server
group, the configured weight against the share it measured. Then it keeps serving the last
scenario until Ctrl-C and prints a curl line to try it by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from albingress.backends import Backend

HOST = "demo.domain.ingress.top"
SCENARIOS = (
    ("scenario1", "Forward to two Services (pods), 80/20"),
    ("scenario2", "Pods and ECS instances in the same network, 30/20/30/20"),
    ("scenario3", "Pods, local ECS and an ECS in another region, 30/20/30/20"),
    ("scenario4", "Pods and servers in an on-premises data center, 30/20/30/20"),
)
# Every stand-in server of the four scenarios: (name, address). All listen on port 8080.
SERVERS = (
    ("tea-pod-1", "127.0.1.1"),
    ("tea-pod-2", "127.0.1.2"),
    ("coffee-pod-1", "127.0.1.3"),
    ("coffee-pod-2", "127.0.1.4"),
    ("ecs-a1", "127.0.2.1"),
    ("ecs-a2", "127.0.2.2"),
    ("ecs-b1", "127.0.2.3"),
    ("region-b-ecs", "127.4.1.1"),
    ("idc-web-1", "127.4.2.1"),
    ("idc-web-2", "127.4.2.2"),
    ("idc-api-1", "127.4.2.3"),
)
SERVER_PORT = 8080


def find_seed() -> Path:
    """examples/seed of the source tree (the demo runs from a checkout)."""
    for base in (Path.cwd(), *Path(__file__).resolve().parents):
        candidate = base / "examples" / "seed"
        if (candidate / "common").is_dir():
            return candidate
    raise SystemExit("albingress demo: cannot find examples/seed (run it from the repository)")


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise SystemExit("albingress demo: no free port on 127.0.0.1")


@dataclass(frozen=True, slots=True)
class GroupResult:
    name: str
    group_id: str
    weight: int
    configured: float  # percent
    measured: float  # percent
    requests: int


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: str
    title: str
    requests: int
    errors: int
    groups: tuple[GroupResult, ...]


class Client:
    """A minimal keep-alive HTTP/1.1 client (the demo must not depend on more than it ships)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection" and b"close" in value.lower():
                close = True
        body = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def admin_json(admin: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as resp:
        return json.loads(resp.read())


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if predicate():
                return
        await asyncio.sleep(0.05)
    raise SystemExit(f"albingress demo: timed out waiting for {what}")


async def measure(
    port: int, total: int, concurrency: int, progress: TextIO | None, label: str
) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    errors = 0
    done = 0
    queue = iter(range(total))

    async def worker() -> None:
        nonlocal errors, done
        client = Client(port)
        for _ in queue:
            try:
                status, body = await client.get("/path/demo")
                if status == 200:
                    counts[json.loads(body)["server"]] += 1
                else:
                    errors += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                await client.close()
            done += 1
            if progress is not None and done % 50 == 0:
                bar = "#" * (30 * done // total)
                progress.write(f"\r  {label} [{bar:<30}] {done}/{total}")
                progress.flush()
        await client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if progress is not None:
        progress.write("\r" + " " * 70 + "\r")
    return counts, errors


def shares(config: dict[str, Any], counts: Counter[str], total_ok: int) -> tuple[GroupResult, ...]:
    ir = config["ir"]
    rule = ir["listeners"][0]["rules"][0]
    forward = rule["actions"][-1]
    by_id = {g["id"]: g for g in ir["server_groups"]}
    names = {f"{address}:{SERVER_PORT}": name for name, address in SERVERS}
    weight_sum = sum(g["weight"] for g in forward["groups"]) or 1
    results = []
    for weighted in forward["groups"]:
        group = by_id[weighted["group_id"]]
        served = sum(counts[names.get(f"{s['address']}:{s['port']}", "")] for s in group["servers"])
        results.append(
            GroupResult(
                name=group["name"],
                group_id=group["id"],
                weight=weighted["weight"],
                configured=100.0 * weighted["weight"] / weight_sum,
                measured=100.0 * served / total_ok if total_ok else 0.0,
                requests=served,
            )
        )
    return tuple(results)


def print_table(result: ScenarioResult, out: TextIO) -> None:
    out.write(f"\n{result.scenario}: {result.title}\n")
    out.write(f"  {result.requests} requests, {result.errors} errors\n")
    out.write(f"  {'server group':<34} {'weight':>6} {'configured':>10} {'measured':>9}\n")
    for g in result.groups:
        bar = "█" * round(g.measured / 4)
        out.write(
            f"  {g.name:<34} {g.weight:>6} {g.configured:>9.1f}% {g.measured:>8.1f}%  {bar}\n"
        )


async def run_demo(args: Any) -> int:
    seed = find_seed()
    out = sys.stdout
    progress = sys.stderr if sys.stderr.isatty() and args.format == "text" else None
    work = Path(tempfile.mkdtemp(prefix="albingress-demo-"))
    manifests = work / "manifests"
    shutil.copytree(seed / "common", manifests)
    backends = [Backend(name, address, SERVER_PORT) for name, address in SERVERS]
    serve: subprocess.Popen[bytes] | None = None
    try:
        for backend in backends:
            try:
                await backend.start()
            except OSError as exc:
                raise SystemExit(
                    f"albingress demo: cannot listen on {backend.host}:{SERVER_PORT} ({exc.strerror});"
                    " is another demo running?"
                ) from exc
        port = free_port(args.port)
        admin = free_port(args.admin_port)
        cmd = [
            sys.executable, "-m", "albingress", "serve", "--manifests", str(manifests),
            "--listen", f"80=127.0.0.1:{port}", "--listen", f"443=127.0.0.1:{free_port(0)}",
            "--admin", f"127.0.0.1:{admin}", "--state", str(work / "state.db"),
            "--workers", str(args.workers), "--vpc-cidr", "127.0.0.0/16",
            "--remote-cidr", "127.4.0.0/16", "--log-level", "warning",
        ]  # fmt: skip
        log = (work / "serve.log").open("wb")
        serve = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        await wait_for(lambda: admin_json(admin, "/api/v1/config")["version"] >= 1, 30, "serve")
        if args.format == "text":
            out.write(f"albingress demo: serving the seed's scenarios on 127.0.0.1:{port}\n")
        results = []
        live = manifests / "scenario.yaml"
        for scenario, title in SCENARIOS:
            if args.scenario and scenario != f"scenario{args.scenario}":
                continue
            # One file, replaced atomically: the load balancer never sees half a scenario.
            docs = [p.read_text() for p in sorted((seed / scenario).glob("*.yaml"))]
            staged = manifests / ".scenario.yaml.new"
            staged.write_text("\n---\n".join(docs))
            before = admin_json(admin, "/api/v1/config")["version"]
            os.replace(staged, live)
            expected = _expected_groups(seed / scenario)
            await wait_for(
                lambda b=before, e=expected: _serves(admin_json(admin, "/api/v1/config"), b, e),
                10,
                f"{scenario} to go live",
            )
            config = admin_json(admin, "/api/v1/config")
            counts, errors = await measure(
                port, args.requests, args.concurrency, progress, scenario
            )
            ok = sum(counts.values())
            result = ScenarioResult(
                scenario, title, args.requests, errors, shares(config, counts, ok)
            )
            results.append(result)
            if args.format == "text":
                print_table(result, out)
        if args.format == "json":
            json.dump([_result_json(r) for r in results], out, indent=2)
            out.write("\n")
        if args.exit:
            return 0 if all(r.errors == 0 for r in results) else 1
        out.write(
            f"\nServing until Ctrl-C. Try it:\n  curl -H 'Host: {HOST}' http://127.0.0.1:{port}/path\n"
            f"  curl http://127.0.0.1:{admin}/api/v1/config\n"
        )
        out.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=40)
            except subprocess.TimeoutExpired:
                serve.kill()
        for backend in backends:
            await backend.stop()
        if args.keep:
            sys.stderr.write(f"demo files kept in {work}\n")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _expected_groups(directory: Path) -> dict[str, set[str]]:
    """Server group ID -> its servers' addresses, as the scenario's manifests declare them."""
    expected: dict[str, set[str]] = {}
    for path in directory.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ServerGroup":
                spec = doc["spec"]
                expected[spec["serverGroupId"]] = {
                    f"{s['serverIp']}:{s['port']}" for s in spec.get("servers", [])
                }
    return expected


def _serves(config: dict[str, Any], before: int, expected: dict[str, set[str]]) -> bool:
    """True when a newer config than ``before`` is live with the scenario's server groups."""
    if config.get("version", 0) <= before or not config.get("ir"):
        return False
    ir = config["ir"]
    rules = [r for lst in ir["listeners"] for r in lst["rules"]]
    live = {
        g["id"]: {f"{s['address']}:{s['port']}" for s in g["servers"]}
        for g in ir["server_groups"]
        if g["source"] == "ServerGroup"
    }
    return len(rules) == 1 and live == expected


def _result_json(r: ScenarioResult) -> dict[str, Any]:
    return {
        "scenario": r.scenario,
        "title": r.title,
        "requests": r.requests,
        "errors": r.errors,
        "groups": [
            {
                "name": g.name,
                "id": g.group_id,
                "weight": g.weight,
                "configured": round(g.configured, 2),
                "measured": round(g.measured, 2),
                "requests": g.requests,
            }
            for g in r.groups
        ],
    }


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="serve the seed's scenarios on loopback and measure the split")
    p.add_argument("--requests", type=int, default=2000, help="requests per scenario")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--port", type=int, default=8080, help="listener port (a free one if busy)")
    p.add_argument("--admin-port", type=int, default=9080)
    p.add_argument("--scenario", type=int, choices=(1, 2, 3, 4), help="run only this scenario")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--exit", action="store_true", help="stop after measuring (no Ctrl-C wait)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory and log")
    p.set_defaults(func=main)


def main(args: Any) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    return asyncio.run(run_demo(args))
