"""The Kubernetes-mode benchmark at a tenth of its size (slow: run with --runslow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_k8s_bench_small() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "k8s_bench.py"), "--ingresses", "500",
         "--endpoints", "2000", "--rounds", "2", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    figures = json.loads(out.stdout)
    assert figures["fast_reloads"] >= 2  # endpoint changes took the fast path
    assert figures["burst"]["configs"] <= 3  # 201 writes, debounced
    assert figures["endpoint_change_ms"]["max"] < 5000
    assert figures["memory_mib"]["supervisor"] > 0
