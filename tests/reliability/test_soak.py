"""The soak (``bench/soak.py``): its verdict logic in the default suite, a short run behind
``--runslow`` (15 s warm-up + 30 s of mixed load; the 10-minute soak is
``uv run python bench/soak.py``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parents[2]
MIB = 1024 * 1024


def _soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


soak = _soak()


def series(rss_mib: list[float], fds: list[int]) -> object:
    times = tuple(float(i) for i in range(len(rss_mib)))
    return soak.Series("worker-0", 1, times, tuple(int(v * MIB) for v in rss_mib), tuple(fds))


FLATNESS = {
    "flat": ([30, 32, 32.5, 32.4, 32.6, 32.6], [30, 31, 31, 30, 31, 31], []),
    "growing memory": ([30, 32, 34, 36, 38, 40], [30] * 6, ["memory grew"]),
    "growing descriptors": ([30] * 6, [30, 31, 40, 50, 60, 70], ["descriptors rose"]),
}


@pytest.mark.parametrize(("rss", "fds", "expected"), FLATNESS.values(), ids=FLATNESS.keys())
def test_the_flatness_verdict(rss: list[float], fds: list[int], expected: list[str]) -> None:
    problems = soak.flatness(series(rss, fds), 1)
    assert len(problems) == len(expected)
    for problem, words in zip(problems, expected, strict=True):
        assert words in problem


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_short_soak_memory_and_descriptors_stay_flat() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "30", "--warmup", "15",
         "--sample", "3"],
        check=False, capture_output=True, text=True, timeout=170, cwd=ROOT,
    )  # fmt: skip
    print(proc.stdout)
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    assert result["unexpected"] == [] and result["requests"] > 10_000
    assert result["flat"], result["problems"]
    assert proc.returncode == 0
