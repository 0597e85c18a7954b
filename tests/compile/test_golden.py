"""Golden tests: each ``testdata/<case>/`` holds the input manifests and the expected output.

``in.yaml`` (or ``sources.txt``, paths relative to the repository root, one a line) is compiled;
``out.json`` holds the IR and the diagnostics. Regenerate with ``pytest --update-golden`` and review
the diff like code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from albingress import ir
from albingress.compile.compiler import CompileOptions, compile_snapshot
from albingress.model.servergroup import NetworkSettings
from albingress.sources import files

TESTDATA = Path(__file__).parent / "testdata"
ROOT = Path(__file__).parents[2]
CASES = sorted(p.name for p in TESTDATA.iterdir() if p.is_dir())


def run_case(case: Path) -> dict[str, Any]:
    if (case / "sources.txt").exists():
        lines = (case / "sources.txt").read_text().split()
        paths = [str(ROOT / line) for line in lines]
    else:
        paths = [str(case / "in.yaml")]
    network = NetworkSettings.from_strings(("127.0.0.0/16",), ("127.4.0.0/16",))
    result = compile_snapshot(files.load(paths), CompileOptions(network=network))
    diags = []
    for d in result.diagnostics:
        item = d.to_json()
        item["file"] = Path(item["file"]).name if item["file"] else ""
        if item["kind"] == "File":
            item["name"] = Path(item["name"]).name
        diags.append(item)
    return {
        "ir": ir.to_json(result.ir),
        "diagnostics": diags,
        "served": list(result.served),
        "failed": list(result.failed),
    }


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    path = TESTDATA / case
    got = run_case(path)
    out = path / "out.json"
    text = json.dumps(got, indent=2, sort_keys=True) + "\n"
    if request.config.getoption("--update-golden"):
        out.write_text(text)
    assert out.exists(), f"{out} is missing: run pytest --update-golden and review it"
    assert json.loads(out.read_text()) == got, f"golden mismatch for {case}; diff out.json"


@pytest.mark.parametrize("case", CASES)
def test_ir_round_trips_through_json(case: str) -> None:
    got = run_case(TESTDATA / case)
    assert ir.to_json(ir.from_json(got["ir"])) == got["ir"]
