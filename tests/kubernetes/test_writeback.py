"""What the controller writes back (status, Events), who writes (the Lease), and bad weather."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from alibabacloud_alb20200616 import models

from albingress.api.sgclient import find_key, make_client
from tests.e2e.harness import wait_until
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.harness import (
    Controller,
    endpoint_slice,
    forward_ingress,
    ingress,
    ingress_class,
    server_group,
    service,
)

Servers = dict[str, tuple[str, int]]


def setup_tea(api: ApiServer, backends: Servers) -> None:
    addr, port = backends["tea-1"]
    api.apply(ingress_class())
    api.apply(service("tea", target=port))
    api.apply(endpoint_slice("tea", [addr], port))
    api.apply(ingress("tea", "tea.example.com", "tea"))


def events(api: ApiServer, name: str) -> list[dict[str, Any]]:
    return [e for e in api.list("Event") if e["involvedObject"]["name"] == name]


def reasons(api: ApiServer, name: str) -> list[str]:
    return [e["reason"] for e in events(api, name)]


def test_status_and_events_are_written(
    api: ApiServer, controller: Controller, backends: Servers
) -> None:
    setup_tea(api, backends)
    broken = ingress("broken", "broken.example.com", "act")
    broken["metadata"]["annotations"]["alb.ingress.kubernetes.io/actions.act"] = (
        '[{"Type": "Teleport"}]'
    )
    broken["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] = {
        "name": "use-annotation"
    }
    api.apply(broken)
    api.apply(server_group("sgp-status1", [backends["coffee-1"]]))
    api.apply(forward_ingress("fwd", "fwd.example.com", ["sgp-status1"]))
    controller.start()

    def lb(name: str) -> Any:
        obj = api.get("Ingress", "default", name) or {}
        return (obj.get("status") or {}).get("loadBalancer")

    wait_until(lambda: lb("tea") == {"ingress": [{"ip": "127.0.0.1"}]}, 10, "Ingress status")
    wait_until(lambda: "SuccessfullyReconciled" in reasons(api, "tea"), 10, "an Event")
    wait_until(lambda: "FailedBuildModel" in reasons(api, "broken"), 10, "a warning Event")
    failed = next(e for e in events(api, "broken") if e["reason"] == "FailedBuildModel")
    assert failed["type"] == "Warning"
    assert "Teleport" in failed["message"] and "Action." in failed["message"]
    assert failed["involvedObject"]["kind"] == "Ingress"

    def group_status() -> Any:
        return (api.get("ServerGroup", "default", "sgp-status1") or {}).get("status") or {}

    wait_until(lambda: group_status().get("serverCount") == 1, 10, "ServerGroup status")
    status = group_status()
    addr, port = backends["coffee-1"]
    assert status["servers"] == [
        {"serverIp": addr, "port": port, "weight": 100, "status": "Available"}
    ]
    assert status["conditions"][0]["status"] == "True"
    assert status["inUseBy"]
    # A group that cannot be used is reported on the object itself.
    api.apply(server_group("sgp-bad1", [("127.0.1.9", 0)]))
    wait_until(lambda: "FailedBuildModel" in reasons(api, "sgp-bad1"), 10, "the bad group's Event")
    bad = (api.get("ServerGroup", "default", "sgp-bad1") or {}).get("status") or {}
    assert bad["conditions"][0]["status"] == "False"
    assert "port" in bad["conditions"][0]["message"].lower()
    # An Ingress handed to another class loses our address.
    api.apply(ingress_class("nginx", "k8s.io/ingress-nginx"))
    api.apply(ingress("moved", "moved.example.com", "tea"))
    wait_until(lambda: lb("moved") == {"ingress": [{"ip": "127.0.0.1"}]}, 10, "moved's status")
    api.apply(ingress("moved", "moved.example.com", "tea", cls="nginx"))
    wait_until(lambda: lb("moved") == {}, 10, "moved's status cleared")
    # Once said, not said again: no Event storm on later reloads.
    count = len(api.list("Event"))
    api.apply(ingress("tea2", "tea2.example.com", "tea"))
    wait_until(lambda: "SuccessfullyReconciled" in reasons(api, "tea2"), 10, "tea2's Event")
    time.sleep(1.0)
    assert len(api.list("Event")) == count + 1


def test_api_server_down_or_garbage_keeps_serving_and_reconnects(
    api: ApiServer, controller: Controller, backends: Servers
) -> None:
    setup_tea(api, backends)
    controller.start()
    controller.wait_server("tea.example.com", "tea-1")
    api.pause()
    addr, port = backends["tea-2"]
    api.apply(endpoint_slice("tea", [addr], port))  # written while the controller cannot see
    api.compact()
    for _ in range(20):  # the data plane keeps the last good config meanwhile
        assert controller.server_of("tea.example.com") == "tea-1"
        time.sleep(0.05)
    api.fail_next(6, "garbage")
    api.resume()
    controller.wait_server("tea.example.com", "tea-2", timeout=15)
    api.drop_watches()
    api.apply(endpoint_slice("tea", *[[backends["tea-1"][0]], backends["tea-1"][1]]))
    controller.wait_server("tea.example.com", "tea-1")
    assert controller.proc is not None and controller.proc.poll() is None


def test_leader_hand_over_between_two_controllers(
    api: ApiServer, tmp_path: Path, backends: Servers
) -> None:
    setup_tea(api, backends)
    first = Controller(tmp_path, api.url, identity="c1")
    second = Controller(tmp_path, api.url, identity="c2")
    try:
        first.start()
        wait_until(lambda: first.info()["leader"], 10, "c1 to lead")
        second.start()
        second.wait_server("tea.example.com", "tea-1")  # every replica serves
        time.sleep(1.0)
        assert not second.info()["leader"]
        lease = api.get("Lease", "albingress", "albingress-leader")
        assert lease is not None and lease["spec"]["holderIdentity"] == "c1"
        assert first.stop(signal.SIGTERM) == 0  # releases the Lease on the way out
        wait_until(lambda: second.info()["leader"], 5, "c2 to take over")
        api.apply(ingress("after", "after.example.com", "tea"))
        wait_until(lambda: "SuccessfullyReconciled" in reasons(api, "after"), 10, "c2 writes")
        writer = next(e for e in events(api, "after"))["reportingInstance"]
        assert writer == "c2"
        lease = api.get("Lease", "albingress", "albingress-leader")
        assert lease is not None and lease["spec"]["leaseTransitions"] >= 2
    finally:
        first.stop()
        second.stop()


def test_group_created_through_the_sdk_is_a_custom_resource(
    api: ApiServer, tmp_path: Path, backends: Servers
) -> None:
    setup_tea(api, backends)
    first = Controller(tmp_path, api.url, identity="c1")
    second = Controller(tmp_path, api.url, identity="c2")
    try:
        first.start()
        second.start()
        key = find_key(str(tmp_path / "state" / "x"), None)
        client = make_client(f"127.0.0.1:{first.admin}", key)
        addr, port = backends["coffee-1"]
        created = client.create_server_group(
            models.CreateServerGroupRequest(
                server_group_name="coffee-vms",
                server_group_type="Ip",
                vpc_id="vpc-local",
                protocol="HTTP",
            )
        )
        gid = created.body.server_group_id
        client.add_servers_to_server_group(
            models.AddServersToServerGroupRequest(
                server_group_id=gid,
                servers=[
                    models.AddServersToServerGroupRequestServers(
                        server_type="Ip", server_id=addr, server_ip=addr, port=port, weight=100
                    )
                ],
            )
        )
        stored = api.get("ServerGroup", "albingress", gid)  # what kubectl would show
        assert stored is not None
        assert stored["spec"]["serverGroupName"] == "coffee-vms"
        assert stored["spec"]["servers"][0]["serverIp"] == addr
        api.apply(forward_ingress("fwd", "fwd.example.com", [gid]))
        second.wait_server("fwd.example.com", "coffee-1")  # the other replica serves it too
        other = make_client(f"127.0.0.1:{second.admin}", key)
        listed = other.list_server_groups(models.ListServerGroupsRequest())
        assert [g.server_group_id for g in listed.body.server_groups] == [gid]
        body = json.dumps(listed.body.to_map())
        assert "coffee-vms" in body
    finally:
        first.stop()
        second.stop()


def test_a_killed_leader_is_replaced_when_its_lease_runs_out(
    api: ApiServer, tmp_path: Path, backends: Servers
) -> None:
    setup_tea(api, backends)
    first = Controller(tmp_path, api.url, identity="c1")
    second = Controller(tmp_path, api.url, identity="c2")
    try:
        first.start()
        wait_until(lambda: first.info()["leader"], 10, "c1 to lead")
        second.start()
        first.stop(signal.SIGKILL)  # no release: the Lease must expire (2 s here)
        killed = time.monotonic()
        wait_until(lambda: second.info()["leader"], 10, "c2 to take over")
        assert time.monotonic() - killed >= 1.0  # not before the Lease ran out
        second.wait_server("tea.example.com", "tea-1")
    finally:
        first.stop()
        second.stop()
