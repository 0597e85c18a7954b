"""``albingress controller`` end to end: the emulator, a real controller process, real traffic."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import Backends, free_port, wait_until
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


def group_ids(controller: Controller) -> list[str]:
    return [g["id"] for g in controller.config()["ir"]["server_groups"]]


def setup_tea(api: ApiServer, backends: Servers) -> None:
    addr, port = backends["tea-1"]
    api.apply(ingress_class())
    api.apply(service("tea", target=port))
    api.apply(endpoint_slice("tea", [addr], port))
    api.apply(ingress("tea", "tea.example.com", "tea"))


def test_initial_sync_serves_ingresses_of_our_class(
    api: ApiServer, controller: Controller, backends: Servers
) -> None:
    setup_tea(api, backends)
    api.apply(ingress_class("nginx", "k8s.io/ingress-nginx"))
    api.apply(ingress("other", "other.example.com", "tea", cls="nginx"))
    legacy = ingress("legacy", "legacy.example.com", "tea", cls=None)
    legacy["metadata"]["annotations"]["kubernetes.io/ingress.class"] = "alb"
    api.apply(legacy)
    controller.start()
    controller.wait_server("tea.example.com", "tea-1")
    assert controller.server_of("legacy.example.com") == "tea-1"
    assert controller.get("other.example.com")[0] == 404


def test_endpoints_take_the_fast_path(
    api: ApiServer, controller: Controller, backends: Servers
) -> None:
    setup_tea(api, backends)
    controller.start()
    controller.wait_server("tea.example.com", "tea-1")
    full = controller.info()["fullReloads"]
    addr, port = backends["tea-2"]
    api.apply(endpoint_slice("tea", [addr], port))
    controller.wait_server("tea.example.com", "tea-2")
    info = controller.info()
    assert info["fastReloads"] >= 1
    assert info["fullReloads"] == full  # the rules were not compiled again
    api.apply(endpoint_slice("tea", [], port))  # no ready endpoint left: 503, still fast
    wait_until(lambda: controller.get("tea.example.com")[0] == 503, 10, "503")
    api.delete("EndpointSlice", "default", "tea-a")  # no endpoint objects: compiled again
    wait_until(lambda: controller.info()["fullReloads"] > full, 10, "a full reload")
    assert controller.get("tea.example.com")[0] == 503


def test_add_change_delete_of_each_kind_reach_traffic(
    api: ApiServer, controller: Controller, backends: Servers, tmp_path: Path
) -> None:
    alt_port, alb_port = free_port(), free_port()
    alt = Backends({"tea-alt": ("127.0.1.1", alt_port)})
    try:
        setup_tea(api, backends)
        controller.extra = ("--listen", f"8081=127.0.0.1:{alb_port}")
        controller.start()
        controller.wait_server("tea.example.com", "tea-1")
        # Ingress: add, change, delete.
        c_addr, c_port = backends["coffee-1"]
        api.apply(service("coffee", target=c_port))
        api.apply(endpoint_slice("coffee", [c_addr], c_port))
        api.apply(ingress("coffee", "coffee.example.com", "coffee"))
        controller.wait_server("coffee.example.com", "coffee-1")
        api.apply(ingress("coffee", "mocha.example.com", "coffee"))
        controller.wait_server("mocha.example.com", "coffee-1")
        assert controller.get("coffee.example.com")[0] == 404
        api.delete("Ingress", "default", "coffee")
        controller.wait_server("mocha.example.com", "HTTP 404")
        # Service: a named port moved to another target; then deleted (the last good config stays).
        t_addr, t_port = backends["tea-1"]
        named = service("tea", target=t_port)
        named["spec"]["ports"][0]["name"] = "http"
        eps = endpoint_slice("tea", [t_addr], t_port)
        eps["ports"] = [{"name": "http", "port": t_port}, {"name": "alt", "port": alt_port}]
        api.apply(named)
        api.apply(eps)
        controller.wait_server("tea.example.com", "tea-1")
        named["spec"]["ports"][0]["name"] = "alt"
        api.apply(named)
        controller.wait_server("tea.example.com", "tea-alt")
        api.delete("Service", "default", "tea")  # an error for that rule alone: dropped
        controller.wait_server("tea.example.com", "HTTP 404")
        api.apply(named)
        controller.wait_server("tea.example.com", "tea-alt")
        # ServerGroup: add, change, delete.
        api.apply(server_group("sgp-kube1", [backends["coffee-1"]]))
        api.apply(forward_ingress("fwd", "fwd.example.com", ["sgp-kube1"]))
        controller.wait_server("fwd.example.com", "coffee-1")
        api.apply(server_group("sgp-kube1", [backends["tea-2"]]))
        controller.wait_server("fwd.example.com", "tea-2")
        api.delete("ServerGroup", "default", "sgp-kube1")
        wait_until(lambda: "sgp-kube1" not in group_ids(controller), 5, "the group gone")
        # IngressClass: another controller's class takes the Ingresses away; ours brings them back.
        api.apply(ingress_class(controller="example.com/other"))
        controller.wait_server("tea.example.com", "HTTP 404")
        api.apply(ingress_class())
        controller.wait_server("tea.example.com", "tea-alt")
        # AlbConfig: a second listener, used through listen-ports.
        params = {"apiGroup": "alibabacloud.com", "kind": "AlbConfig", "name": "lb"}
        api.apply(ingress_class(parameters=params))
        api.apply(
            {
                "apiVersion": "alibabacloud.com/v1",
                "kind": "AlbConfig",
                "metadata": {"name": "lb"},
                "spec": {"listeners": [{"port": 80}, {"port": 8081, "protocol": "HTTP"}]},
            }
        )
        side = ingress("side", "side.example.com", "coffee")
        side["metadata"]["annotations"]["alb.ingress.kubernetes.io/listen-ports"] = (
            '[{"HTTP": 8081}]'
        )
        api.apply(side)
        wait_until(
            lambda: controller.get("side.example.com", port=alb_port)[0] == 200, 10, "port 8081"
        )
        # Secret (read for TLS): a change does not disturb serving.
        api.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": "cert", "namespace": "default"},
                "data": {"tls.crt": "", "tls.key": ""},
            }
        )
        assert controller.server_of("tea.example.com") == "tea-alt"
    finally:
        alt.stop()
