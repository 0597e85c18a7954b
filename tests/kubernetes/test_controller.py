"""``albingress controller`` end to end: the emulator, a real controller process, real traffic."""

from __future__ import annotations

from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.harness import Controller, endpoint_slice, ingress, ingress_class, service


def test_initial_sync_serves_ingresses_of_our_class(
    api: ApiServer, controller: Controller, backends: dict[str, tuple[str, int]]
) -> None:
    addr, port = backends["tea-1"]
    api.apply(ingress_class())
    api.apply(ingress_class("nginx", "k8s.io/ingress-nginx"))
    api.apply(service("tea", target=port))
    api.apply(endpoint_slice("tea", [addr], port))
    api.apply(ingress("tea", "tea.example.com", "tea"))
    api.apply(ingress("other", "other.example.com", "tea", cls="nginx"))
    controller.start()
    controller.wait_server("tea.example.com", "tea-1")
    assert controller.get("other.example.com")[0] == 404
