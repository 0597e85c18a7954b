"""The golden scenarios, once from files and once through the emulator: the same IR.

Each case's manifests (``tests/compile/testdata/<case>``) are read by the files source; the same
objects are created in the emulator and read back by the Kubernetes source. Controller mode
serves only Ingresses of an IngressClass of our controller, so an IngressClass ``alb`` is added
on both sides (unless the case declares its own).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from albingress import ir
from albingress.compile.compiler import CompileOptions, compile_snapshot
from albingress.model.servergroup import NetworkSettings
from albingress.sources import files
from albingress.sources.kube import ClusterConfig, KubeClient, KubernetesSource
from albingress.sources.snapshot import K8sObject, Snapshot
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.harness import ingress_class

ROOT = Path(__file__).parents[2]
TESTDATA = ROOT / "tests" / "compile" / "testdata"
CASES = sorted(p.name for p in TESTDATA.iterdir() if p.is_dir())
NETWORK = NetworkSettings.from_strings(("127.0.0.0/16",), ("127.4.0.0/16",))


def case_paths(case: Path) -> list[str]:
    if (case / "sources.txt").exists():
        return [str(ROOT / line) for line in (case / "sources.txt").read_text().split()]
    return [str(case / "in.yaml")]


def from_files(case: Path) -> tuple[Snapshot, dict[str, Any]]:
    snap = files.load(case_paths(case))
    if not any(o.kind == "IngressClass" and o.name == "alb" for o in snap.objects):
        snap = snap.merged([K8sObject("IngressClass", "", "alb", ingress_class())])
    result = compile_snapshot(snap, CompileOptions(network=NETWORK))
    return snap, ir.to_json(result.ir)


def through_emulator(snap: Snapshot) -> tuple[dict[str, Any], list[str]]:
    with ApiServer() as api:
        for obj in snap.objects:
            api.apply(obj.body)

        async def read() -> tuple[dict[str, Any], list[str]]:
            client = KubeClient(ClusterConfig(api.url))
            source = KubernetesSource(client, endpoints=True)  # some cases use v1 Endpoints
            try:
                assert await source.start(10)
                got = source.snapshot()
            finally:
                await source.stop()
                await client.close()
            options = CompileOptions(network=NETWORK, embedded=False)
            result = compile_snapshot(got, options)
            return ir.to_json(result.ir), list(result.served)

        return asyncio.run(read())


@pytest.mark.parametrize("case", CASES)
def test_same_ir_from_files_and_from_the_api(case: str) -> None:
    snap, want = from_files(TESTDATA / case)
    got, _ = through_emulator(snap)
    assert got == want


def test_the_seed_scenario_serves_rules_through_the_api() -> None:
    """Guard against a vacuous parity: the seed's Ingresses are served and have rules."""
    snap, want = from_files(TESTDATA / "seed-scenario2")
    got, served = through_emulator(snap)
    assert served and got == want
    assert sum(len(lst["rules"]) for lst in got["listeners"]) > 0
