"""``albingress explain`` against the golden scenarios: the rule, the groups, and the why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.test_validate_plan import run

from albingress import explain
from albingress.compile.compiler import compile_snapshot
from albingress.sources import files

TESTDATA = Path(__file__).parents[1] / "compile" / "testdata"


def table(case: str) -> explain.ir.IR:
    return compile_snapshot(files.load([TESTDATA / case / "in.yaml"])).ir


@pytest.mark.parametrize(
    ("case", "host", "path", "rule", "skipped"),
    [
        ("paths-precedence", "x", "/api", "default/first/rules/0/paths/0", 0),
        ("hosts", "Demo.Example.com", "/", "default/upper/rules/0/paths/0", 0),
        ("hosts", "a.example.com", "/", "default/wild/rules/0/paths/0", 1),
        ("hosts", "other.org", "/", "default/any/rules/0/paths/0", 2),
        (
            "default-backend-and-plain-service",
            "tea.example.com",
            "/x",
            "default/dflt/rules/0/paths/0",
            0,
        ),
        (
            "default-backend-and-plain-service",
            "coffee.example.com",
            "/x",
            "default/dflt/defaultBackend",
            1,
        ),
    ],
    ids=["order-wins", "exact-host", "wildcard-host", "any-host", "host-rule", "default-backend"],
)
def test_explain_names_the_rule_and_what_was_skipped(
    case: str, host: str, path: str, rule: str, skipped: int
) -> None:
    result = explain.explain(table(case), explain.Request(host, path))
    assert result["rule"] == rule
    verdicts = [c["verdict"] for c in result["considered"]]
    assert verdicts[-1] == "match"
    assert len(verdicts) == skipped + 1
    assert all(v.startswith("host is not") for v in verdicts[:-1])


def test_explain_gives_precedence_reasons_for_later_matches() -> None:
    result = explain.explain(table("paths-precedence"), explain.Request("x", "/api"))
    reasons = {c["rule"]: c["why_later"] for c in result["also_matching_later"]}
    assert reasons == {
        "default/b-ingress/rules/0/paths/3": "order 1 < 10",
        "default/a-ingress/rules/0/paths/0": "order 1 < 10",
        "default/b-ingress/rules/0/paths/1": "order 1 < 10",
        "default/b-ingress/rules/0/paths/0": "order 1 < 10",
    }


def test_explain_conditions_and_forward_groups() -> None:
    t = table("conditions")
    plain = explain.explain(t, explain.Request("demo.example.com", "/"))
    assert plain["rule"] == "default/cond/rules/0/paths/1"
    assert plain["considered"][0]["verdict"] == "conditions do not hold"
    (group,) = plain["forward"]
    assert (group["id"], group["weight"], group["share"], group["healthy"]) == (
        "svc:default/tea-svc:80",
        100,
        100.0,
        ["127.0.1.1:8080"],
    )


def test_explain_command_text_and_json() -> None:
    seed = Path(__file__).parents[2] / "examples" / "seed"
    args = ["explain", "demo.domain.ingress.top", "/path/tea", "--manifests", str(seed / "common"),
            "--manifests", str(seed / "scenario2")]  # fmt: skip
    text = run(*args)
    assert text.returncode == 0, text.stderr
    assert "-> rule default/tea-ingress/rules/0/paths/0" in text.stdout
    assert (
        "weight  30   30.0%  ecs-group-a [sgp-71aexb9y93ypo*****]  2/2 servers healthy"
        in text.stdout
    )
    data = json.loads(run(*args, "--format", "json").stdout)
    assert [g["weight"] for g in data["forward"]] == [30, 20, 30, 20]
    missing = run(
        "explain",
        "demo.domain.ingress.top",
        "/elsewhere",
        "--manifests",
        str(seed / "common"),
        "--manifests",
        str(seed / "scenario2"),
    )
    assert "-> 404: no rule matches" in missing.stdout
    assert run("explain", "h", "/").returncode == 2  # neither --manifests nor --admin
