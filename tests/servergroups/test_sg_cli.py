"""``albingress servergroups ...`` end to end: argparse -> official SDK -> running admin API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from albingress.api import sgcli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="albingress")
    subs = p.add_subparsers(dest="command", required=True)
    sgcli.add_parser(subs)
    return p


@pytest.fixture
def sg(api: Any, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run a servergroups command against the API; credentials found next to the state file."""
    key = api.key
    (api.path.parent / "credentials.yaml").write_text(
        yaml.safe_dump({"accessKeys": [{"accessKeyId": key.id, "accessKeySecret": key.secret}]})
    )

    def run(*argv: str) -> tuple[int, str, str]:
        args = parser().parse_args(
            ["servergroups", "--admin", api.endpoint, "--state", str(api.path), *argv]
        )
        code = sgcli.run(args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_create_add_show_update_remove_delete(sg: Any, api: Any) -> None:
    code, out, _ = sg(
        "create",
        "--name",
        "idc-web",
        "--health-check",
        "--health-check-path",
        "/ping",
        "--server",
        "127.0.1.1:8080",
        "--server",
        "127.0.1.2:8080/20",
    )
    assert code == 0
    gid = out.strip()
    assert gid.startswith("sgp-")

    code, out, _ = sg("add-servers", gid, "127.4.0.7:9000", "--remote", "--weight", "5")
    assert code == 0 and "added 1 server in" in out

    code, out, _ = sg("list")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == [
        "ID",
        "NAME",
        "TYPE",
        "PROTOCOL",
        "SCHEDULER",
        "SERVERS",
        "HEALTHCHECK",
    ]
    assert row.split() == [gid, "idc-web", "Ip", "HTTP", "Wrr", "3", "on"]

    code, out, _ = sg("update-servers", gid, "127.0.1.1:8080/0")
    assert code == 0
    code, out, _ = sg("show", gid, "--format", "json")
    shown = json.loads(out)
    assert shown["HealthCheckConfig"]["HealthCheckPath"] == "/ping"
    assert [
        (s["ServerIp"], s["Port"], s["Weight"], s["RemoteIpEnabled"]) for s in shown["Servers"]
    ] == [
        ("127.0.1.1", 8080, 0, False),
        ("127.0.1.2", 8080, 20, False),
        ("127.4.0.7", 9000, 5, True),
    ]
    code, out, _ = sg("show", gid)
    assert "health check: HTTP HEAD /ping every 2s" in out and "127.4.0.7" in out

    code, out, _ = sg("remove-servers", gid, "127.0.1.2:8080")
    assert code == 0
    spec = api.objects()[0]["spec"]
    assert [s["serverIp"] for s in spec["servers"]] == ["127.0.1.1", "127.4.0.7"]

    code, out, _ = sg("delete", gid)
    assert code == 0 and api.objects() == []


def test_instance_group_servers(sg: Any, api: Any) -> None:
    code, out, _ = sg("create", "--name", "ecs-vms", "--type", "Instance", "--format", "json")
    gid = json.loads(out)["ServerGroupId"]
    code, out, err = sg("add-servers", gid, "i-bp1abc@127.0.2.1:80", "--server-type", "Eni")
    assert code == 0, err
    (server,) = api.objects()[0]["spec"]["servers"]
    assert (server["serverType"], server["serverId"], server["serverIp"]) == (
        "Eni",
        "i-bp1abc",
        "127.0.2.1",
    )


def test_api_errors_exit_1_with_code_and_message(sg: Any, api: Any) -> None:
    code, out, err = sg("create", "--name", "x")
    assert code == 1 and out == ""
    assert "IllegalParam.ServerGroupName" in err and "2 to 128" in err
    code, _, err = sg("delete", "sgp-nosuchgroup")
    assert code == 1 and "ResourceNotFound.ServerGroup" in err
    gid = sg("create", "--name", "web-one")[1].strip()
    code, _, err = sg("add-servers", gid, "127.9.0.1:80")
    assert code == 1 and "IllegalParam.ServerIp" in err and "RemoteIpEnabled" in err
    api.in_use[gid] = ["default/tea/rules/0"]
    code, _, err = sg("delete", gid)
    assert code == 1 and "ResourceInUse.ServerGroup" in err


def test_usage_errors_exit_2(sg: Any) -> None:
    gid = sg("create", "--name", "web-one")[1].strip()
    code, _, err = sg("add-servers", gid, "not-a-server")
    assert code == 2 and "IP:PORT" in err
    code, _, err = sg("update-servers", gid, "127.0.1.1:80")
    assert code == 2 and "weight" in err


def test_wrong_credentials(api: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    creds = tmp_path / "other.yaml"
    creds.write_text("accessKeys:\n- accessKeyId: LTAIother\n  accessKeySecret: nope\n")
    args = parser().parse_args(
        ["servergroups", "list", "--admin", api.endpoint, "--credentials", str(creds)]
    )
    assert sgcli.run(args) == 1
    assert "InvalidAccessKeyId.NotFound" in capsys.readouterr().err


def test_missing_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(
        ["servergroups", "list", "--state", str(tmp_path / "s" / "state.db")]
    )
    assert sgcli.run(args) == 1
    assert "no credentials" in capsys.readouterr().err


def test_unreachable_admin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    creds = tmp_path / "c.yaml"
    creds.write_text("accessKeys:\n- accessKeyId: A\n  accessKeySecret: B\n")
    args = parser().parse_args(
        ["servergroups", "list", "--admin", f"127.0.0.1:{port}", "--credentials", str(creds)]
    )
    assert sgcli.run(args) == 1
    assert "cannot reach the admin API" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", sgcli.ServerArg("127.0.0.1", "127.0.0.1", 80, None)),
        ("i-1@127.0.0.1:80/30", sgcli.ServerArg("i-1", "127.0.0.1", 80, 30)),
        ("[::1]:8080", sgcli.ServerArg("::1", "::1", 8080, None)),
    ],
)
def test_parse_server(text: str, expected: sgcli.ServerArg) -> None:
    assert sgcli.parse_server(text) == expected


def test_options_before_the_command_are_kept() -> None:
    args = parser().parse_args(
        ["servergroups", "--admin", "127.0.0.1:1", "--format", "json", "list"]
    )
    assert (args.admin, args.format, args.credentials) == ("127.0.0.1:1", "json", None)
    args = parser().parse_args(["servergroups", "list", "--admin", "127.0.0.1:2"])
    assert (args.admin, args.format, args.state) == ("127.0.0.1:2", "table", ".albingress/state.db")
