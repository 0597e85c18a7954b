"""Kubernetes mode at scale: 5,000 Ingresses and 20,000 endpoints synced from the API emulator.

    uv run python bench/k8s_bench.py [--ingresses 5000] [--endpoints 20000] [--rounds 5]
                                     [--workers 1] [--json]

The emulator (``tests/kubernetes/apiserver.py``, real HTTP on 127.0.0.1) is filled with one
IngressClass, N Ingresses (one host each), N Services and N EndpointSlices holding the endpoints
(addresses in 127.10.0.0/16, never contacted: health checks are off). One extra Service, ``probe``,
has real backends (``albingress.backends``) so that a change can be *seen in traffic*. A real
``albingress controller`` process then runs against the emulator. Measured:

- initial sync: controller start -> ``/healthz`` 200 (every kind listed, compiled, workers live);
- endpoint change: the probe Service's EndpointSlice moved to the other backend; time from the
  write (the last event) until a request through the listener is answered by the new backend,
  and the controller's own event -> published figure (the fast path, no recompiling);
- Ingress change: a new Ingress written; time until its host answers (a full compile);
- burst: 200 EndpointSlice writes at once, then the probe change: time from the last write until
  the probe answers from its new backend, and how many configs the burst caused;
- memory: resident set of the controller's supervisor, and of supervisor + workers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.kubernetes.apiserver import ApiServer  # noqa: E402
from tests.kubernetes.harness import (  # noqa: E402
    endpoint_slice,
    ingress,
    ingress_class,
    kubeconfig,
    service,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in map(int, children):
            out.append(child)
            out.extend(descendants(child))
    return out


def get(port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for(predicate: Any, timeout: float, what: str) -> float:
    """Poll ``predicate`` every millisecond; the time it first held (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if predicate():
                return time.perf_counter()
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.001)
    raise SystemExit(f"timed out waiting for {what}")


def server_of(port: int, host: str) -> str:
    status, body = get(port, host)
    return str(json.loads(body)["server"]) if status == 200 else f"HTTP {status}"


def fill(api: ApiServer, ingresses: int, endpoints: int) -> None:
    per = max(1, endpoints // ingresses)
    api.apply(ingress_class())
    for i in range(ingresses):
        name = f"app-{i:05d}"
        addrs = [f"127.10.{(i * per + k) // 250}.{(i * per + k) % 250 + 1}" for k in range(per)]
        api.apply(service(name, ns="bench", target=8080))
        api.apply(endpoint_slice(name, addrs, 8080, ns="bench"))
        api.apply(ingress(name, f"{name}.example.com", name, ns="bench", path=f"/{i % 7}"))


def controller_info(admin: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        conn.request("GET", "/api/v1/kubernetes")
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        return data
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ingresses", type=int, default=5000)
    ap.add_argument("--endpoints", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="k8s-bench-"))
    probe = {"probe-a": ("127.0.1.1", free_port()), "probe-b": ("127.0.1.2", free_port())}
    backends = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "albingress.backends",
            *(f"{n}={a}:{p}" for n, (a, p) in probe.items()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert backends.stdout is not None and backends.stdout.readline().strip() == "ready"
    api = ApiServer(bookmark_interval=5.0)
    api.start()
    proc: subprocess.Popen[bytes] | None = None
    figures: dict[str, Any] = {"ingresses": args.ingresses, "endpoints": args.endpoints}
    try:
        started = time.perf_counter()
        fill(api, args.ingresses, args.endpoints)
        a_addr, a_port = probe["probe-a"]
        b_addr, b_port = probe["probe-b"]
        api.apply(service("probe", ns="bench", target=a_port))
        api.apply(endpoint_slice("probe", [a_addr], a_port, ns="bench"))
        api.apply(ingress("probe", "probe.example.com", "probe", ns="bench"))
        figures["fill_s"] = round(time.perf_counter() - started, 2)

        port, admin = free_port(), free_port()
        cmd = [
            sys.executable, "-m", "albingress", "controller",
            "--kubeconfig", str(kubeconfig(work / "kubeconfig", api.url)),
            "--listen", f"80=127.0.0.1:{port}", "--listen", f"443=127.0.0.1:{free_port()}",
            "--admin", f"127.0.0.1:{admin}", "--state", str(work / "state" / "x"),
            "--workers", str(args.workers), "--vpc-cidr", "127.0.0.0/8",
            "--publish-address", "127.0.0.1", "--log-level", "warning", "--access-log", "off",
        ]  # fmt: skip
        log = (work / "controller.log").open("wb")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for(lambda: get(admin, "x", "/healthz")[0] == 200, 300, "the controller")
        wait_for(lambda: server_of(port, "probe.example.com") == "probe-a", 60, "probe-a")
        figures["initial_sync_s"] = round(time.perf_counter() - t0, 2)
        info = controller_info(admin)
        figures["initial_compile_ms"] = info["lastReloadMs"]
        # The leader's first status pass (one PATCH per Ingress) runs in the background.
        t1 = time.perf_counter()
        writes = -1
        while writes != controller_info(admin)["statusWrites"]:
            writes = controller_info(admin)["statusWrites"]
            time.sleep(1.0)
        figures["first_status_pass"] = {
            "writes": writes,
            "s": round(time.perf_counter() - t1 - 1, 1),
        }

        # Endpoint changes: the fast path.
        endpoint_ms, controller_ms, fast_ms, publish_ms = [], [], [], []
        for i in range(args.rounds):
            addr, bport, want = (
                (b_addr, b_port, "probe-b") if i % 2 == 0 else (a_addr, a_port, "probe-a")
            )
            t = time.perf_counter()
            api.apply(endpoint_slice("probe", [addr], bport, ns="bench"))
            live = wait_for(lambda w=want: server_of(port, "probe.example.com") == w, 30, want)
            endpoint_ms.append((live - t) * 1000)
            info = controller_info(admin)
            controller_ms.append(info["lastLatencyMs"])
            fast_ms.append(info["lastReloadMs"] - info["lastPublishMs"])
            publish_ms.append(info["lastPublishMs"])
        info = controller_info(admin)
        figures["endpoint_change_ms"] = {
            "median": round(statistics.median(endpoint_ms), 1),
            "max": round(max(endpoint_ms), 1),
            "controller_event_to_publish_median": round(statistics.median(controller_ms), 1),
            "fast_path_median": round(statistics.median(fast_ms), 1),
            "publish_to_workers_median": round(statistics.median(publish_ms), 1),
        }
        figures["fast_reloads"] = info["fastReloads"]

        # Ingress changes: a full compile.
        ingress_ms, compile_ms = [], []
        for i in range(args.rounds):
            host = f"new-{i}.example.com"
            t = time.perf_counter()
            api.apply(ingress(f"new-{i}", host, "probe", ns="bench"))
            live = wait_for(lambda h=host: get(port, h)[0] == 200, 60, host)
            ingress_ms.append((live - t) * 1000)
            compile_ms.append(controller_info(admin)["lastReloadMs"])
        figures["ingress_change_ms"] = {
            "median": round(statistics.median(ingress_ms), 1),
            "max": round(max(ingress_ms), 1),
            "compile_median": round(statistics.median(compile_ms), 1),
        }

        # A burst of 200 endpoint writes, then the probe: one or a few configs, not 200.
        before = controller_info(admin)["version"]
        current = server_of(port, "probe.example.com")
        addr, bport, want = (
            (b_addr, b_port, "probe-b") if current == "probe-a" else (a_addr, a_port, "probe-a")
        )
        for i in range(200):
            name = f"app-{i:05d}"
            api.apply(endpoint_slice(name, [f"127.11.{i // 250}.{i % 250 + 1}"], 8080, ns="bench"))
        t = time.perf_counter()
        api.apply(endpoint_slice("probe", [addr], bport, ns="bench"))
        live = wait_for(lambda: server_of(port, "probe.example.com") == want, 60, want)
        time.sleep(1.0)
        figures["burst"] = {
            "writes": 201,
            "last_write_to_live_ms": round((live - t) * 1000, 1),
            "configs": controller_info(admin)["version"] - before,
        }

        supervisor = rss_kib(proc.pid)
        total = supervisor + sum(rss_kib(p) for p in descendants(proc.pid))
        figures["memory_mib"] = {
            "supervisor": round(supervisor / 1024, 1),
            "with_workers": round(total / 1024, 1),
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        backends.send_signal(signal.SIGTERM)
        backends.wait(10)
        api.stop()
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"albingress controller: {args.ingresses} Ingresses, {args.endpoints} endpoints (cpu count {os.cpu_count()})"
        )
        print(f"  emulator filled in                    {figures['fill_s']} s")
        print(
            f"  initial sync (start -> serving)       {figures['initial_sync_s']} s (compile {figures['initial_compile_ms']} ms)"
        )
        e = figures["endpoint_change_ms"]
        print(f"  endpoint change -> live in traffic    median {e['median']} ms, max {e['max']} ms")
        print(
            f"    controller event -> published       median {e['controller_event_to_publish_median']} ms (fast path, {figures['fast_reloads']} fast reloads)"
        )
        print(
            f"    of which: fast path {e['fast_path_median']} ms, IR sent to workers {e['publish_to_workers_median']} ms"
        )
        g = figures["ingress_change_ms"]
        print(
            f"  Ingress change -> live in traffic     median {g['median']} ms, max {g['max']} ms (compile {g['compile_median']} ms)"
        )
        b = figures["burst"]
        print(
            f"  burst of {b['writes']} writes -> live        {b['last_write_to_live_ms']} ms after the last, {b['configs']} configs"
        )
        f = figures["first_status_pass"]
        print(f"  first status pass (leader)            {f['writes']} writes in about {f['s']} s")
        m = figures["memory_mib"]
        print(
            f"  memory (RSS)                          supervisor {m['supervisor']} MiB, with workers {m['with_workers']} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
