"""Compile benchmark: 10,000 Ingress paths over 1,000 Services (target: under 1 s).

Run: ``uv run python bench/compile_bench.py [--paths 10000] [--services 1000]``. Prints the time to
compile an in-memory snapshot (best of several runs), and the time to read the same objects from
YAML files, which ``serve`` pays on a full reload.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from albingress.compile.compiler import compile_snapshot
from albingress.sources import files
from albingress.sources.snapshot import K8sObject, Snapshot

PATHS_PER_INGRESS = 10


def objects(n_paths: int, n_services: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in range(n_services):
        name = f"svc-{s}"
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            }
        )
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-x",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [
                    {
                        "addresses": [f"127.1.{s // 250}.{s % 250 + 1}"],
                        "conditions": {"ready": True},
                    },
                    {
                        "addresses": [f"127.2.{s // 250}.{s % 250 + 1}"],
                        "conditions": {"ready": True},
                    },
                ],
            }
        )
    for i in range(n_paths // PATHS_PER_INGRESS):
        a, b = f"svc-{(2 * i) % n_services}", f"svc-{(2 * i + 1) % n_services}"
        actions = [
            {
                "Type": "ForwardGroup",
                "ForwardConfig": {
                    "ServerGroups": [
                        {"ServiceName": a, "ServicePort": 80, "Weight": 80},
                        {"ServiceName": b, "ServicePort": 80, "Weight": 20},
                    ]
                },
            }
        ]
        paths = [
            {
                "path": f"/p{j}",
                "pathType": "Prefix",
                "backend": {"service": {"name": "fwd", "port": {"name": "use-annotation"}}},
            }
            for j in range(PATHS_PER_INGRESS)
        ]
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": {
                    "name": f"ing-{i}",
                    "namespace": "default",
                    "annotations": {"alb.ingress.kubernetes.io/actions.fwd": json.dumps(actions)},
                },
                "spec": {
                    "ingressClassName": "alb",
                    "rules": [{"host": f"host-{i}.example.com", "http": {"paths": paths}}],
                },
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    docs = objects(args.paths, args.services)
    snapshot = Snapshot.build(
        K8sObject(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"], d)
        for d in docs
    )
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        result = compile_snapshot(snapshot)
        times.append(time.perf_counter() - start)
    rules = sum(len(lst.rules) for lst in result.ir.listeners)
    assert rules == args.paths, f"expected {args.paths} rules, got {rules}"
    assert not result.has_errors, result.diagnostics[:3]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "all.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        start = time.perf_counter()
        loaded = files.load([path])
        load_s = time.perf_counter() - start
    assert len(loaded.objects) == len(docs)
    best = min(times)
    print(
        f"compile: {args.paths} paths over {args.services} Services -> {rules} rules, "
        f"{len(result.ir.server_groups)} server groups"
    )
    print(
        f"compile time: best {best * 1000:.0f} ms, median {sorted(times)[len(times) // 2] * 1000:.0f} ms "
        f"(target < 1000 ms: {'met' if best < 1 else 'NOT met'})"
    )
    print(f"YAML load of the same {len(docs)} objects: {load_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
