"""Refusals: every malformed parameter named with ALB's code, resource errors, and a failed call
never changing the store. Driven by the official SDK."""

from __future__ import annotations

from typing import Any

import pytest
from alibabacloud_alb20200616 import models as m
from alibabacloud_alb20200616.client import Client
from alibabacloud_tea_openapi import utils as openapi_utils
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.utils_models import OpenApiRequest, Params
from darabonba.runtime import RuntimeOptions


def refused(call: Any, code: str, status: int = 400) -> ClientException:
    with pytest.raises(ClientException) as info:
        call()
    assert info.value.code == code, info.value.message
    assert info.value.status_code == status
    assert info.value.request_id
    return info.value


def create(client: Client, name: str = "web-group", gtype: str = "Ip") -> str:
    req = m.CreateServerGroupRequest(server_group_name=name, server_group_type=gtype)
    return str(client.create_server_group(req).body.server_group_id)


Srv = m.AddServersToServerGroupRequestServers
HC = m.CreateServerGroupRequestHealthCheckConfig
Sticky = m.CreateServerGroupRequestStickySessionConfig


def add_call(client: Client, gid: str, *servers: Srv) -> Any:
    return lambda: client.add_servers_to_server_group(
        m.AddServersToServerGroupRequest(server_group_id=gid, servers=list(servers))
    )


CREATE_CASES = [
    ("name missing", {"server_group_name": None}, "MissingParam.ServerGroupName"),
    ("name too short", {"server_group_name": "a"}, "IllegalParam.ServerGroupName"),
    ("name starts with digit", {"server_group_name": "1abc"}, "IllegalParam.ServerGroupName"),
    ("name too long", {"server_group_name": "a" * 129}, "IllegalParam.ServerGroupName"),
    ("unknown type", {"server_group_type": "Fc"}, "IllegalParam.ServerGroupType"),
    ("unknown protocol", {"protocol": "TCP"}, "IllegalParam.Protocol"),
    ("unknown scheduler", {"scheduler": "Random"}, "IllegalParam.Scheduler"),
    ("uch without value", {"scheduler": "Uch"}, "MissingParam.UchConfig"),
    (
        "interval 0",
        {"health_check_config": HC(health_check_interval=0)},
        "IllegalParam.HealthCheckInterval",
    ),
    (
        "interval 51",
        {"health_check_config": HC(health_check_interval=51)},
        "IllegalParam.HealthCheckInterval",
    ),
    (
        "timeout 301",
        {"health_check_config": HC(health_check_timeout=301)},
        "IllegalParam.HealthCheckTimeout",
    ),
    (
        "healthy 1",
        {"health_check_config": HC(healthy_threshold=1)},
        "IllegalParam.HealthyThreshold",
    ),
    (
        "unhealthy 11",
        {"health_check_config": HC(unhealthy_threshold=11)},
        "IllegalParam.UnhealthyThreshold",
    ),
    (
        "path without slash",
        {"health_check_config": HC(health_check_path="ping")},
        "IllegalParam.HealthCheckPath",
    ),
    (
        "method PUT",
        {"health_check_config": HC(health_check_method="PUT")},
        "IllegalParam.HealthCheckMethod",
    ),
    (
        "protocol UDP",
        {"health_check_config": HC(health_check_protocol="UDP")},
        "IllegalParam.HealthCheckProtocol",
    ),
    (
        "codes http_6xx",
        {"health_check_config": HC(health_check_codes=["http_6xx"])},
        "IllegalParam.HealthCheckCodes",
    ),
    (
        "connect port 65536",
        {"health_check_config": HC(health_check_connect_port=65536)},
        "IllegalParam.HealthCheckConnectPort",
    ),
    (
        "sticky type",
        {"sticky_session_config": Sticky(sticky_session_type="Magic")},
        "IllegalParam.StickySessionType",
    ),
    (
        "cookie timeout 0",
        {"sticky_session_config": Sticky(cookie_timeout=0)},
        "IllegalParam.CookieTimeout",
    ),
    (
        "cookie timeout 86401",
        {"sticky_session_config": Sticky(cookie_timeout=86401)},
        "IllegalParam.CookieTimeout",
    ),
    (
        "server cookie missing",
        {
            "sticky_session_config": Sticky(
                sticky_session_enabled=True, sticky_session_type="Server"
            )
        },
        "MissingParam.Cookie",
    ),
]


@pytest.mark.parametrize(
    ("kw", "code"), [c[1:] for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES]
)
def test_create_refuses_bad_parameters(
    client: Client, api: Any, kw: dict[str, Any], code: str
) -> None:
    args = {"server_group_name": "web-group", **kw}
    refused(lambda: client.create_server_group(m.CreateServerGroupRequest(**args)), code)
    assert api.objects() == []


SERVER_CASES = [
    (
        "port 0",
        Srv(server_type="Ip", server_id="127.0.1.1", server_ip="127.0.1.1", port=0),
        "IllegalParam.Port",
    ),
    (
        "port 65536",
        Srv(server_type="Ip", server_id="127.0.1.1", server_ip="127.0.1.1", port=65536),
        "IllegalParam.Port",
    ),
    (
        "port missing",
        Srv(server_type="Ip", server_id="127.0.1.1", server_ip="127.0.1.1"),
        "MissingParam.Port",
    ),
    (
        "weight 101",
        Srv(server_type="Ip", server_id="127.0.1.1", server_ip="127.0.1.1", port=80, weight=101),
        "IllegalParam.Weight",
    ),
    (
        "type missing",
        Srv(server_id="127.0.1.1", server_ip="127.0.1.1", port=80),
        "MissingParam.ServerType",
    ),
    (
        "not an ip",
        Srv(server_type="Ip", server_id="host.example", server_ip="host.example", port=80),
        "IllegalParam.ServerIp",
    ),
    (
        "ecs in ip group",
        Srv(server_type="Ecs", server_id="i-1", server_ip="127.0.1.1", port=80),
        "Mismatch.ServerGroupType",
    ),
    (
        "remote without flag",
        Srv(server_type="Ip", server_id="127.4.0.1", server_ip="127.4.0.1", port=80),
        "IllegalParam.ServerIp",
    ),
    (
        "outside remote ranges",
        Srv(
            server_type="Ip",
            server_id="127.9.0.1",
            server_ip="127.9.0.1",
            port=80,
            remote_ip_enabled=True,
        ),
        "IllegalParam.ServerIp",
    ),
    (
        "public address",
        Srv(
            server_type="Ip",
            server_id="8.8.8.8",
            server_ip="8.8.8.8",
            port=80,
            remote_ip_enabled=True,
        ),
        "IllegalParam.ServerIp",
    ),
]


@pytest.mark.parametrize(
    ("server", "code"), [c[1:] for c in SERVER_CASES], ids=[c[0] for c in SERVER_CASES]
)
def test_add_refuses_bad_servers(client: Client, api: Any, server: Srv, code: str) -> None:
    gid = create(client)
    before = api.objects()
    good = Srv(server_type="Ip", server_id="127.0.1.9", server_ip="127.0.1.9", port=80)
    refused(add_call(client, gid, good, server), code)
    assert api.objects() == before  # the good server of the same call was not added either


def test_ip_server_in_instance_group_is_a_mismatch(client: Client) -> None:
    gid = create(client, gtype="Instance")
    refused(
        add_call(
            client,
            gid,
            Srv(server_type="Ip", server_id="127.0.1.1", server_ip="127.0.1.1", port=80),
        ),
        "Mismatch.ServerGroupType",
    )


def test_instance_server_needs_an_address(client: Client) -> None:
    gid = create(client, gtype="Instance")
    refused(
        add_call(client, gid, Srv(server_type="Ecs", server_id="i-1", port=80)),
        "MissingParam.ServerIp",
    )


def test_unknown_group(client: Client) -> None:
    missing = "sgp-doesnotexist00000"
    refused(
        lambda: client.delete_server_group(m.DeleteServerGroupRequest(server_group_id=missing)),
        "ResourceNotFound.ServerGroup",
        404,
    )
    refused(
        lambda: client.list_server_group_servers(
            m.ListServerGroupServersRequest(server_group_id=missing)
        ),
        "ResourceNotFound.ServerGroup",
        404,
    )
    refused(
        add_call(client, missing, Srv(server_type="Ip", server_ip="127.0.1.1", port=80)),
        "ResourceNotFound.ServerGroup",
        404,
    )


def test_missing_group_id(client: Client) -> None:
    refused(
        lambda: client.delete_server_group(m.DeleteServerGroupRequest()),
        "MissingParam.ServerGroupId",
    )


def test_delete_in_use_is_refused(client: Client, api: Any) -> None:
    gid = create(client)
    api.in_use[gid] = ["default/tea-ingress/rules/0/paths/0"]
    err = refused(
        lambda: client.delete_server_group(m.DeleteServerGroupRequest(server_group_id=gid)),
        "ResourceInUse.ServerGroup",
        409,
    )
    assert "tea-ingress" in err.message
    assert [o["metadata"]["name"] for o in api.objects()] == [gid]


def test_server_already_in_group(client: Client, api: Any) -> None:
    gid = create(client)
    server = Srv(server_type="Ip", server_id="127.0.1.1", server_ip="127.0.1.1", port=80)
    add_call(client, gid, server)()
    before = api.objects()
    refused(add_call(client, gid, server), "ResourceAlreadyAssociated.BackendServer", 409)
    assert api.objects() == before


def test_remove_unknown_server(client: Client, api: Any) -> None:
    gid = create(client)
    add_call(
        client, gid, Srv(server_type="Ip", server_ip="127.0.1.1", server_id="127.0.1.1", port=80)
    )()
    before = api.objects()
    refused(
        lambda: client.remove_servers_from_server_group(
            m.RemoveServersFromServerGroupRequest(
                server_group_id=gid,
                servers=[
                    m.RemoveServersFromServerGroupRequestServers(
                        server_type="Ip", server_id="127.0.1.1", server_ip="127.0.1.1", port=80
                    ),
                    m.RemoveServersFromServerGroupRequestServers(
                        server_type="Ip", server_id="127.0.1.2", server_ip="127.0.1.2", port=80
                    ),
                ],
            )
        ),
        "ResourceNotFound.BackendServer",
        404,
    )
    assert api.objects() == before  # the server that did exist is still there


def test_replace_is_all_or_nothing(client: Client, api: Any) -> None:
    gid = create(client)
    add_call(
        client, gid, Srv(server_type="Ip", server_ip="127.0.1.1", server_id="127.0.1.1", port=80)
    )()
    before = api.objects()
    refused(
        lambda: client.replace_servers_in_server_group(
            m.ReplaceServersInServerGroupRequest(
                server_group_id=gid,
                removed_servers=[
                    m.ReplaceServersInServerGroupRequestRemovedServers(
                        server_type="Ip", server_id="127.0.1.1", server_ip="127.0.1.1", port=80
                    )
                ],
                added_servers=[
                    m.ReplaceServersInServerGroupRequestAddedServers(
                        server_type="Ip", server_id="127.0.1.2", server_ip="127.0.1.2", port=99999
                    )
                ],
            )
        ),
        "IllegalParam.Port",
    )
    assert api.objects() == before


def test_update_unknown_server(client: Client) -> None:
    gid = create(client)
    refused(
        lambda: client.update_server_group_servers_attribute(
            m.UpdateServerGroupServersAttributeRequest(
                server_group_id=gid,
                servers=[
                    m.UpdateServerGroupServersAttributeRequestServers(
                        server_type="Ip",
                        server_id="127.0.1.5",
                        server_ip="127.0.1.5",
                        port=80,
                        weight=1,
                    )
                ],
            )
        ),
        "ResourceNotFound.BackendServer",
        404,
    )


def test_failed_update_attribute_changes_nothing(client: Client, api: Any) -> None:
    gid = create(client)
    before = api.objects()
    refused(
        lambda: client.update_server_group_attribute(
            m.UpdateServerGroupAttributeRequest(
                server_group_id=gid,
                server_group_name="renamed-ok",
                health_check_config=m.UpdateServerGroupAttributeRequestHealthCheckConfig(
                    health_check_timeout=0
                ),
            )
        ),
        "IllegalParam.HealthCheckTimeout",
    )
    assert api.objects() == before


def test_servers_quota(client: Client, api: Any) -> None:
    gid = create(client)
    for block in range(5):
        batch = [
            Srv(
                server_type="Ip",
                server_ip=f"127.0.{10 + block}.{i}",
                server_id=f"127.0.{10 + block}.{i}",
                port=80,
            )
            for i in range(1, 201)
        ]
        add_call(client, gid, *batch)()
    assert len(api.objects()[0]["spec"]["servers"]) == 1000
    refused(
        add_call(
            client,
            gid,
            Srv(server_type="Ip", server_ip="127.0.20.1", server_id="127.0.20.1", port=80),
        ),
        "QuotaExceeded.ServersNum",
    )
    assert len(api.objects()[0]["spec"]["servers"]) == 1000


def test_more_than_200_servers_in_one_call(client: Client) -> None:
    gid = create(client)
    batch = [
        Srv(server_type="Ip", server_ip="127.0.9.1", server_id="127.0.9.1", port=p)
        for p in range(1, 202)
    ]
    refused(add_call(client, gid, *batch), "IllegalParam.Servers")


def _raw_call(client: Client, action: str, version: str = "2020-06-16") -> Any:
    params = Params(
        action=action,
        version=version,
        protocol="HTTPS",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    return lambda: client.call_api(params, OpenApiRequest(query={}), RuntimeOptions())


def test_unknown_action_and_version(client: Client) -> None:
    refused(_raw_call(client, "CreateLoadBalancer"), "InvalidAction.NotFound", 404)
    refused(_raw_call(client, "ListServerGroups", "2019-01-01"), "InvalidVersion")


# ----------------------------------------------------------------------------- signatures


def test_wrong_secret(api: Any) -> None:
    bad = api.client(secret="not-the-secret")
    refused(
        lambda: bad.list_server_groups(m.ListServerGroupsRequest()), "SignatureDoesNotMatch", 403
    )


def test_unknown_key(api: Any) -> None:
    bad = api.client(key_id="LTAIunknown")
    refused(
        lambda: bad.list_server_groups(m.ListServerGroupsRequest()),
        "InvalidAccessKeyId.NotFound",
        403,
    )


@pytest.mark.parametrize("stamp", ["2020-06-16T08:00:00Z", "2099-01-01T00:00:00Z"])
def test_date_far_off(client: Client, monkeypatch: pytest.MonkeyPatch, stamp: str) -> None:
    monkeypatch.setattr(openapi_utils.Utils, "get_timestamp", staticmethod(lambda: stamp))
    refused(
        lambda: client.list_server_groups(m.ListServerGroupsRequest()),
        "InvalidTimeStamp.Expired",
        403,
    )


def test_replayed_nonce(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openapi_utils.Utils, "get_nonce", staticmethod(lambda: "fixed-nonce-1"))
    client.list_server_groups(m.ListServerGroupsRequest())
    refused(
        lambda: client.list_server_groups(m.ListServerGroupsRequest()), "SignatureNonceUsed", 403
    )


def test_tampered_parameter_is_caught(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parameter changed after signing (here: added to the URL) breaks the signature."""
    from darabonba.core import DaraCore

    original = DaraCore.compose_url

    def tampered(request: Any) -> str:
        return str(original(request)) + "&ServerGroupType=Instance"

    monkeypatch.setattr(DaraCore, "compose_url", staticmethod(tampered))
    req = m.ListServerGroupsRequest(max_results=5)
    refused(lambda: client.list_server_groups(req), "SignatureDoesNotMatch", 403)
