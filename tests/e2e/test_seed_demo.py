"""The seed's four scenarios end to end: real processes on loopback, real HTTP clients.

``albingress demo`` starts the stand-in servers, runs ``albingress serve`` (a supervisor and its
workers) on a scratch manifests directory, puts each scenario live in turn (each swap is a live
reload) and measures the split over 2,000 requests. Each server group must get its configured
share within 3 percentage points, with no failed request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

pytestmark = pytest.mark.e2e


def test_seed_scenarios_split_traffic_by_server_group_weight() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "albingress", "demo", "--exit", "--format", "json",
         "--requests", "2000", "--port", "0", "--admin-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    scenarios = json.loads(result.stdout)
    assert [s["scenario"] for s in scenarios] == [f"scenario{n}" for n in (1, 2, 3, 4)]
    expected = {
        "scenario1": [80, 20],
        "scenario2": [30, 20, 30, 20],
        "scenario3": [30, 20, 30, 20],
        "scenario4": [30, 20, 30, 20],
    }
    for s in scenarios:
        assert s["errors"] == 0, s
        assert [g["weight"] for g in s["groups"]] == expected[s["scenario"]]
        assert sum(g["requests"] for g in s["groups"]) == s["requests"]
        for g in s["groups"]:
            assert abs(g["measured"] - g["configured"]) <= 3.0, (s["scenario"], g)
    # External groups really are the seed's: ECS, cross-region and data-center servers.
    names = {s["scenario"]: [g["name"] for g in s["groups"]] for s in scenarios}
    assert names["scenario3"][3] == "ecs-cross-region"
    assert names["scenario4"][2:] == ["idc-web", "idc-api"]
