"""Pure validation of ServerGroup specs, as the compiler reads them from manifests."""

from __future__ import annotations

from typing import Any

import pytest

from albingress.model.servergroup import NetworkSettings
from albingress.servergroups.validate import (
    normalize_group_spec,
    validate_group_spec,
)

LOCAL = NetworkSettings.from_strings(vpc=("127.0.0.0/16",), remote=("127.4.0.0/16",))
DEFAULT = NetworkSettings()


def spec(**kw: Any) -> dict[str, Any]:
    return {"serverGroupId": "sgp-71aexb9y93ypo12345", "serverGroupName": "ecs-group", **kw}


def ip(addr: str, **kw: Any) -> dict[str, Any]:
    return {"serverType": "Ip", "serverId": addr, "serverIp": addr, "port": 80, **kw}


def codes(problems: list[tuple[str, str, str]]) -> list[str]:
    return [p[0] for p in problems]


def test_defaults_filled() -> None:
    out, problems = normalize_group_spec(
        spec(serverGroupType="Ip", servers=[ip("127.0.0.5")]), LOCAL
    )
    assert problems == []
    assert (
        out["serverGroupType"] == "Ip" and out["protocol"] == "HTTP" and out["scheduler"] == "Wrr"
    )
    assert out["healthCheckConfig"]["healthCheckInterval"] == 2
    assert out["servers"] == [
        {
            "serverType": "Ip",
            "serverId": "127.0.0.5",
            "serverIp": "127.0.0.5",
            "port": 80,
            "weight": 100,
            "description": "",
            "remoteIpEnabled": False,
        }
    ]


def test_strings_from_the_rpc_form_are_read() -> None:
    out, problems = normalize_group_spec(
        spec(
            serverGroupType="ip",
            healthCheckConfig={
                "healthCheckEnabled": "True",
                "healthCheckInterval": "7",
                "healthCheckCodes": "http_2xx,http_4xx",
            },
        ),
        LOCAL,
    )
    assert problems == []
    assert out["serverGroupType"] == "Ip"
    assert out["healthCheckConfig"]["healthCheckEnabled"] is True
    assert out["healthCheckConfig"]["healthCheckInterval"] == 7
    assert out["healthCheckConfig"]["healthCheckCodes"] == ["http_2xx", "http_4xx"]


def test_every_problem_is_collected() -> None:
    problems = validate_group_spec(
        spec(
            serverGroupId="SGP-Upper",
            serverGroupName="9lives",
            healthCheckConfig={"healthCheckInterval": 0, "healthyThreshold": True},
            servers=[{"serverType": "Ip", "serverIp": "127.0.0.1", "port": 0}],
        ),
        LOCAL,
    )
    assert codes(problems) == [
        "IllegalParam.ServerGroupId",
        "IllegalParam.ServerGroupName",
        "IllegalParam.HealthCheckInterval",
        "IllegalParam.HealthyThreshold",
        "Mismatch.ServerGroupType",
        "IllegalParam.Port",
    ]
    assert problems[-1][1] == "servers[0].port"


@pytest.mark.parametrize(
    ("group_type", "server", "settings", "code"),
    [
        ("Ip", ip("127.0.9.9"), LOCAL, None),
        ("Ip", ip("127.4.0.2"), LOCAL, "IllegalParam.ServerIp"),
        ("Ip", ip("127.4.0.2", remoteIpEnabled=True), LOCAL, None),
        ("Ip", ip("127.5.0.2", remoteIpEnabled=True), LOCAL, "IllegalParam.ServerIp"),
        ("Ip", ip("10.1.2.3", remoteIpEnabled=True), DEFAULT, None),
        ("Ip", ip("100.64.0.9", remoteIpEnabled=True), DEFAULT, None),
        ("Ip", ip("10.1.2.3"), DEFAULT, "IllegalParam.ServerIp"),
        (
            "Ip",
            ip("8.8.8.8", remoteIpEnabled=True),
            NetworkSettings.from_strings(remote=("0.0.0.0/0",)),
            "IllegalParam.ServerIp",
        ),
        ("Ip", ip("0.0.0.0"), DEFAULT, "IllegalParam.ServerIp"),
        (
            "Ip",
            {"serverType": "Eci", "serverId": "eci-1", "serverIp": "127.0.0.1", "port": 1},
            DEFAULT,
            "Mismatch.ServerGroupType",
        ),
        (
            "Instance",
            {"serverType": "Eni", "serverId": "eni-1", "serverIp": "127.0.0.1", "port": 1},
            DEFAULT,
            None,
        ),
        (
            "Instance",
            {"serverType": "Ecs", "serverId": "i-1", "port": 1},
            DEFAULT,
            "MissingParam.ServerIp",
        ),
        (
            "Instance",
            {"serverType": "Ecs", "serverId": "i-1", "serverIp": "10.0.0.1", "port": 1},
            DEFAULT,
            "IllegalParam.ServerIp",
        ),
    ],
    ids=[
        "ip-in-vpc",
        "remote-without-flag",
        "remote-with-flag",
        "outside-remote-ranges",
        "default-private-10",
        "default-shared-100-64",
        "default-private-needs-flag",
        "public-refused-even-if-listed",
        "unspecified",
        "eci-in-ip-group",
        "eni-in-instance-group",
        "ecs-without-ip",
        "ecs-outside-vpc",
    ],
)
def test_hybrid_rules(
    group_type: str, server: dict[str, Any], settings: NetworkSettings, code: str | None
) -> None:
    problems = validate_group_spec(spec(serverGroupType=group_type, servers=[server]), settings)
    assert codes(problems) == ([code] if code else [])


def test_loopback_is_local_by_default() -> None:
    assert validate_group_spec(spec(serverGroupType="Ip", servers=[ip("127.0.1.1")]), DEFAULT) == []


def test_duplicate_servers() -> None:
    problems = validate_group_spec(
        spec(serverGroupType="Ip", servers=[ip("127.0.0.2"), ip("127.0.0.2")]), LOCAL
    )
    assert codes(problems) == ["IllegalParam.Servers"]


def test_bad_cidr_setting() -> None:
    with pytest.raises(ValueError):
        NetworkSettings.from_strings(vpc=("not-a-cidr",))


@pytest.mark.parametrize(
    "raw",
    [
        spec(
            serverGroupType="Ip", servers=[ip("127.0.0.5"), ip("127.4.0.1", remoteIpEnabled=True)]
        ),
        spec(
            serverGroupType="Instance",
            protocol="gRPC",
            scheduler="Uch",
            uchConfig={"type": "QueryString", "value": "uid"},
            healthCheckConfig={"healthCheckEnabled": True, "healthCheckProtocol": "gRPC"},
            stickySessionConfig={
                "stickySessionEnabled": True,
                "stickySessionType": "Server",
                "cookie": "sid",
            },
            servers=[
                {"serverType": "Eci", "serverId": "eci-1", "serverIp": "127.0.3.3", "port": 50051}
            ],
        ),
        spec(healthCheckConfig={"healthCheckProtocol": "TCP", "healthCheckConnectPort": 9000}),
    ],
    ids=["ip-with-remote", "grpc-uch-sticky-eci", "tcp-check"],
)
def test_what_the_store_holds_compiles_cleanly(raw: dict[str, Any]) -> None:
    """Contract with the compiler: a normalised spec parses with no diagnostic at all."""
    from albingress import ir
    from albingress.diagnostics import Collector, ObjectRef
    from albingress.model.servergroup import parse_server_group

    normalized, problems = normalize_group_spec(raw, LOCAL)
    assert problems == []
    diag = Collector(ObjectRef("ServerGroup", "default", "x"))
    group = parse_server_group(normalized, diag, LOCAL)
    assert diag.items == []
    assert group is not None and group.id == raw["serverGroupId"]
    assert len(group.servers) == len(normalized["servers"])
    assert group.health_check.interval == normalized["healthCheckConfig"]["healthCheckInterval"]
    assert isinstance(group.scheduler, ir.Scheduler)
