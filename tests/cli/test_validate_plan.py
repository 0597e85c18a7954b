"""``albingress validate`` and ``albingress plan`` run as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
SEED = ROOT / "examples" / "seed"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "albingress", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_seed_scenarios_exit_zero() -> None:
    for n in (1, 2, 3, 4):
        result = run("validate", str(SEED / "common"), str(SEED / f"scenario{n}"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 errors" in result.stdout + result.stderr


def test_validate_reports_each_problem_on_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "tests/compile/testdata/forward-weight-defaults-and-required/in.yaml").read_text()
    )
    result = run("validate", str(bad))
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line]
    assert lines == [
        f"{bad}: Ingress default/missing: ForwardGroup.WeightRequired: Weight is required "
        "(at alb.ingress.kubernetes.io/actions.fwd[0].ForwardConfig.ServerGroups[0].Weight)"
    ]
    assert "1 error, 0 warnings; 1 of 2 Ingresses valid" in result.stderr


def test_validate_json_and_malformed_yaml_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("kind: [\n")
    (tmp_path / "note.txt").write_text("not a manifest, not read")
    result = run("validate", "--format", "json", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (item,) = json.loads(result.stdout)
    assert item["code"] == "File.InvalidYAML"
    assert item["severity"] == "error"
    assert item["file"].endswith("broken.yaml")


def test_usage_errors_exit_two(tmp_path: Path) -> None:
    assert run("validate").returncode == 2
    missing = run("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "no such file" in missing.stderr
    assert run("plan", "--format", "xml", str(SEED)).returncode == 2
    assert run("validate", "--vpc-cidr", "300.0.0.0/8", str(SEED / "common")).returncode == 2


def test_plan_text_shows_weights_shares_and_servers() -> None:
    result = run("plan", str(SEED / "common"), str(SEED / "scenario2"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Listener HTTP:80 (1 rules" in out
    assert "demo.domain.ingress.top  /path (Prefix)" in out
    for weight, share, name in (
        (30, "30.0%", "default/tea-svc:80"),
        (20, "20.0%", "default/coffee-svc:80"),
        (30, "30.0%", "ecs-group-a [sgp-71aexb9y93ypo*****]"),
        (20, "20.0%", "ecs-group-b [sgp-slygpbvm2cydo*****]"),
    ):
        assert f"weight  {weight}   {share}  {name}" in out
    assert "127.0.1.1:8080 w100, 127.0.1.2:8080 w100" in out


def test_plan_json_is_the_ir() -> None:
    result = run("plan", "--format", "json", str(SEED / "common"), str(SEED / "scenario1"))
    data = json.loads(result.stdout)
    (listener,) = data["listeners"]
    (rule,) = listener["rules"]
    weights = [(g["group_id"], g["weight"]) for g in rule["actions"][-1]["groups"]]
    assert weights == [("svc:default/tea-svc:80", 80), ("svc:default/coffee-svc:80", 20)]


def test_plan_and_validate_use_the_server_groups_of_a_state_file(tmp_path: Path) -> None:
    from albingress.model.servergroup import NetworkSettings
    from albingress.servergroups.sqlite import SqliteStore
    from albingress.servergroups.validate import normalize_group_spec

    store = SqliteStore(tmp_path / "state.db")
    spec, problems = normalize_group_spec(
        {
            "serverGroupName": "from-api",
            "serverGroupType": "Ip",
            "servers": [{"serverType": "Ip", "serverIp": "127.0.7.1", "port": 8080}],
        },
        NetworkSettings(),
    )
    assert problems == []
    store.create("sgp-fromapi1", {**spec, "serverGroupId": "sgp-fromapi1"})
    store.create(
        "sgp-fromapi2", {**spec, "serverGroupId": "sgp-fromapi2", "serverGroupName": "also-api"}
    )
    store.close()
    ingress = tmp_path / "ingress.yaml"
    ingress.write_text(
        (SEED / "scenario2" / "tea-ingress.yaml")
        .read_text()
        .replace("sgp-71aexb9y93ypo*****", "sgp-fromapi1")
        .replace("sgp-slygpbvm2cydo*****", "sgp-fromapi2")
    )
    plain = run("validate", str(SEED / "common"), str(ingress))
    assert plain.returncode == 1
    assert "Backend.ServerGroupNotFound" in plain.stdout
    with_state = run(
        "plan", str(SEED / "common"), str(ingress), "--state", str(tmp_path / "state.db")
    )
    assert with_state.returncode == 0, with_state.stderr
    assert "from-api [sgp-fromapi1]" in with_state.stdout  # the API-created group, by its name
    assert "127.0.7.1:8080 w100" in with_state.stdout
    assert run("plan", str(SEED), "--state", str(tmp_path / "missing.db")).returncode == 2
