"""The ALB OpenAPI server-group actions, driven by the official SDK against a live admin server."""

from __future__ import annotations

from typing import Any

import pytest
from alibabacloud_alb20200616 import models as m
from alibabacloud_alb20200616.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException

# ----------------------------------------------------------------------------- helpers


def create(client: Client, name: str = "web-group", gtype: str = "Ip", **kw: Any) -> str:
    req = m.CreateServerGroupRequest(server_group_name=name, server_group_type=gtype, **kw)
    body = client.create_server_group(req).body
    assert body.request_id and body.job_id
    assert body.server_group_id.startswith("sgp-")
    return str(body.server_group_id)


def ip_server(ip: str, port: int = 8080, **kw: Any) -> m.AddServersToServerGroupRequestServers:
    return m.AddServersToServerGroupRequestServers(
        server_type="Ip", server_id=ip, server_ip=ip, port=port, **kw
    )


def add(client: Client, gid: str, *servers: m.AddServersToServerGroupRequestServers) -> None:
    body = client.add_servers_to_server_group(
        m.AddServersToServerGroupRequest(server_group_id=gid, servers=list(servers))
    ).body
    assert body.job_id and body.request_id


def servers(client: Client, gid: str) -> list[dict[str, Any]]:
    body = client.list_server_group_servers(
        m.ListServerGroupServersRequest(server_group_id=gid, max_results=100)
    ).body
    return [s.to_map() for s in body.servers]


def refused(call: Any, code: str, status: int = 400) -> ClientException:
    with pytest.raises(ClientException) as info:
        call()
    assert info.value.code == code, info.value.message
    assert info.value.status_code == status
    return info.value


# ----------------------------------------------------------------------------- actions


def test_create_fills_alb_defaults(client: Client) -> None:
    gid = create(client, name="tea-external")
    body = client.list_server_groups(m.ListServerGroupsRequest(server_group_ids=[gid])).body
    assert body.total_count == 1
    group = body.server_groups[0]
    assert group.server_group_id == gid
    assert len(gid) == 4 + 17 and gid[4:].isalnum() and gid[4:].lower() == gid[4:]
    assert (group.server_group_name, group.server_group_type) == ("tea-external", "Ip")
    assert (group.protocol, group.scheduler) == ("HTTP", "Wrr")
    hc = group.health_check_config
    assert (hc.health_check_enabled, hc.health_check_path, hc.health_check_method) == (
        False,
        "/",
        "HEAD",
    )
    assert (hc.health_check_interval, hc.health_check_timeout) == (2, 5)
    assert (hc.healthy_threshold, hc.unhealthy_threshold, hc.health_check_connect_port) == (3, 3, 0)
    assert hc.health_check_codes == ["http_2xx", "http_3xx"]
    sticky = group.sticky_session_config
    assert (sticky.sticky_session_enabled, sticky.cookie_timeout) == (False, 1000)
    assert group.server_count == 0


def test_create_with_every_setting(client: Client, api: Any) -> None:
    gid = create(
        client,
        name="idc-servers",
        protocol="HTTPS",
        scheduler="Uch",
        vpc_id="vpc-local",
        uch_config=m.CreateServerGroupRequestUchConfig(type="QueryString", value="uid"),
        health_check_config=m.CreateServerGroupRequestHealthCheckConfig(
            health_check_enabled=True,
            health_check_path="/healthz?full=1",
            health_check_method="GET",
            health_check_protocol="HTTP",
            health_check_interval=1,
            health_check_timeout=3,
            healthy_threshold=2,
            unhealthy_threshold=4,
            health_check_codes=["http_2xx"],
            health_check_connect_port=9000,
            health_check_host="health.local",
        ),
        sticky_session_config=m.CreateServerGroupRequestStickySessionConfig(
            sticky_session_enabled=True,
            sticky_session_type="Server",
            cookie="SESSION",
            cookie_timeout=60,
        ),
    )
    (obj,) = api.objects()
    assert obj["apiVersion"] == "albingress.dev/v1alpha1" and obj["kind"] == "ServerGroup"
    assert obj["metadata"]["name"] == gid and obj["metadata"]["namespace"] == "default"
    spec = obj["spec"]
    assert spec["serverGroupId"] == gid
    assert (spec["protocol"], spec["scheduler"], spec["vpcId"]) == ("HTTPS", "Uch", "vpc-local")
    assert spec["uchConfig"] == {"type": "QueryString", "value": "uid"}
    assert spec["healthCheckConfig"] == {
        "healthCheckEnabled": True,
        "healthCheckPath": "/healthz?full=1",
        "healthCheckMethod": "GET",
        "healthCheckProtocol": "HTTP",
        "healthCheckInterval": 1,
        "healthCheckTimeout": 3,
        "healthyThreshold": 2,
        "unhealthyThreshold": 4,
        "healthCheckCodes": ["http_2xx"],
        "healthCheckConnectPort": 9000,
        "healthCheckHost": "health.local",
    }
    assert spec["stickySessionConfig"] == {
        "stickySessionEnabled": True,
        "stickySessionType": "Server",
        "cookieTimeout": 60,
        "cookie": "SESSION",
    }


def test_update_attribute_merges_partial_config(client: Client, api: Any) -> None:
    gid = create(
        client,
        health_check_config=m.CreateServerGroupRequestHealthCheckConfig(
            health_check_enabled=True, health_check_path="/ping"
        ),
    )
    before = len(api.changes)
    body = client.update_server_group_attribute(
        m.UpdateServerGroupAttributeRequest(
            server_group_id=gid,
            server_group_name="renamed",
            scheduler="Wlc",
            health_check_config=m.UpdateServerGroupAttributeRequestHealthCheckConfig(
                health_check_interval=10
            ),
        )
    ).body
    assert body.job_id
    spec = api.objects()[0]["spec"]
    assert (spec["serverGroupName"], spec["scheduler"]) == ("renamed", "Wlc")
    assert spec["healthCheckConfig"]["healthCheckInterval"] == 10
    assert spec["healthCheckConfig"]["healthCheckPath"] == "/ping"  # kept
    assert len(api.changes) == before + 1


def test_servers_add_update_replace_remove(client: Client, api: Any) -> None:
    gid = create(client)
    add(
        client, gid, ip_server("127.0.1.1", weight=30, description="vm one"), ip_server("127.0.1.2")
    )
    listed = servers(client, gid)
    assert [(s["ServerIp"], s["Port"], s["Weight"], s["Status"]) for s in listed] == [
        ("127.0.1.1", 8080, 30, "Available"),
        ("127.0.1.2", 8080, 100, "Available"),
    ]
    assert listed[0]["Description"] == "vm one" and listed[0]["ServerGroupId"] == gid

    client.update_server_group_servers_attribute(
        m.UpdateServerGroupServersAttributeRequest(
            server_group_id=gid,
            servers=[
                m.UpdateServerGroupServersAttributeRequestServers(
                    server_type="Ip",
                    server_id="127.0.1.2",
                    server_ip="127.0.1.2",
                    port=8080,
                    weight=0,
                )
            ],
        )
    )
    assert [s["Weight"] for s in servers(client, gid)] == [30, 0]

    client.replace_servers_in_server_group(
        m.ReplaceServersInServerGroupRequest(
            server_group_id=gid,
            removed_servers=[
                m.ReplaceServersInServerGroupRequestRemovedServers(
                    server_type="Ip", server_id="127.0.1.1", server_ip="127.0.1.1", port=8080
                )
            ],
            added_servers=[
                m.ReplaceServersInServerGroupRequestAddedServers(
                    server_type="Ip",
                    server_id="127.0.1.3",
                    server_ip="127.0.1.3",
                    port=9090,
                    weight=5,
                )
            ],
        )
    )
    assert [(s["ServerIp"], s["Port"]) for s in servers(client, gid)] == [
        ("127.0.1.2", 8080),
        ("127.0.1.3", 9090),
    ]

    client.remove_servers_from_server_group(
        m.RemoveServersFromServerGroupRequest(
            server_group_id=gid,
            servers=[
                m.RemoveServersFromServerGroupRequestServers(
                    server_type="Ip", server_id="127.0.1.2", server_ip="127.0.1.2", port=8080
                )
            ],
        )
    )
    assert [s["ServerIp"] for s in servers(client, gid)] == ["127.0.1.3"]
    assert api.objects()[0]["spec"]["servers"][0]["weight"] == 5


def test_instance_group_takes_ecs_servers(client: Client, api: Any) -> None:
    gid = create(client, gtype="Instance")
    add(
        client,
        gid,
        m.AddServersToServerGroupRequestServers(
            server_type="Ecs", server_id="i-bp1vm01", server_ip="127.0.2.1", port=80
        ),
    )
    (server,) = api.objects()[0]["spec"]["servers"]
    assert (server["serverType"], server["serverId"], server["serverIp"]) == (
        "Ecs",
        "i-bp1vm01",
        "127.0.2.1",
    )


def test_remote_server_with_remote_ip_enabled(client: Client, api: Any) -> None:
    gid = create(client)
    add(client, gid, ip_server("127.4.0.9", remote_ip_enabled=True))
    assert api.objects()[0]["spec"]["servers"][0]["remoteIpEnabled"] is True


def test_delete_group(client: Client, api: Any) -> None:
    gid = create(client)
    keep = create(client, name="keep-me")
    assert client.delete_server_group(m.DeleteServerGroupRequest(server_group_id=gid)).body.job_id
    assert [o["metadata"]["name"] for o in api.objects()] == [keep]


def test_dry_run_checks_without_writing(client: Client, api: Any) -> None:
    refused(
        lambda: client.create_server_group(
            m.CreateServerGroupRequest(server_group_name="dry-one", dry_run=True)
        ),
        "DryRunOperation",
    )
    assert api.objects() == []


# ----------------------------------------------------------------------------- pagination


def test_list_server_groups_pages(client: Client) -> None:
    made = [create(client, name=f"group-{i:02d}") for i in range(7)]
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        body = client.list_server_groups(
            m.ListServerGroupsRequest(max_results=3, next_token=token)
        ).body
        assert body.total_count == 7 and body.max_results == 3
        seen += [g.server_group_id for g in body.server_groups]
        pages += 1
        token = body.next_token
        if not token:
            break
    assert seen == made and pages == 3


def test_list_server_groups_filters(client: Client) -> None:
    a = create(client, name="alpha-group")
    b = create(client, name="beta-group", gtype="Instance")
    by_name = client.list_server_groups(
        m.ListServerGroupsRequest(server_group_names=["beta-group"])
    ).body
    assert [g.server_group_id for g in by_name.server_groups] == [b]
    by_type = client.list_server_groups(m.ListServerGroupsRequest(server_group_type="Ip")).body
    assert [g.server_group_id for g in by_type.server_groups] == [a]


def test_list_servers_pages(client: Client) -> None:
    gid = create(client)
    add(client, gid, *(ip_server(f"127.0.3.{i}") for i in range(1, 6)))
    first = client.list_server_group_servers(
        m.ListServerGroupServersRequest(server_group_id=gid, max_results=2)
    ).body
    assert first.total_count == 5 and len(first.servers) == 2 and first.next_token
    ips = [s.server_ip for s in first.servers]
    token = first.next_token
    while token:
        page = client.list_server_group_servers(
            m.ListServerGroupServersRequest(server_group_id=gid, max_results=2, next_token=token)
        ).body
        ips += [s.server_ip for s in page.servers]
        token = page.next_token
    assert ips == [f"127.0.3.{i}" for i in range(1, 6)]


@pytest.mark.parametrize("bad", ["0", "101"])
def test_max_results_out_of_range(client: Client, bad: str) -> None:
    refused(
        lambda: client.list_server_groups(m.ListServerGroupsRequest(max_results=int(bad))),
        "IllegalParam.MaxResults",
    )


def test_bad_next_token(client: Client) -> None:
    refused(
        lambda: client.list_server_groups(m.ListServerGroupsRequest(next_token="not-a-token")),
        "IllegalParam.NextToken",
    )


# ----------------------------------------------------------------------------- persistence


def test_groups_survive_a_restart(api: Any) -> None:
    client = api.client()
    gid = create(client, name="durable")
    add(client, gid, ip_server("127.0.1.7", weight=42))
    api.restart()
    client = api.client()
    listed = servers(client, gid)
    assert [(s["ServerIp"], s["Weight"]) for s in listed] == [("127.0.1.7", 42)]
    body = client.list_server_groups(m.ListServerGroupsRequest()).body
    assert [g.server_group_name for g in body.server_groups] == ["durable"]


def test_client_token_makes_a_retry_idempotent(client: Client, api: Any) -> None:
    req = m.CreateServerGroupRequest(server_group_name="once-only", client_token="tok-123")
    first = client.create_server_group(req).body
    again = client.create_server_group(req).body
    assert first.server_group_id == again.server_group_id
    assert first.request_id != again.request_id
    assert len(api.objects()) == 1
    other = client.create_server_group(
        m.CreateServerGroupRequest(server_group_name="once-only", client_token="tok-456")
    ).body
    assert other.server_group_id != first.server_group_id
