"""Resources the API server emulator serves, JSON merge patch, and error Status bodies."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Res:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False  # has a /status subresource

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = [
    Res("networking.k8s.io", "v1", "ingresses", "Ingress", status=True),
    Res("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False),
    Res("alibabacloud.com", "v1", "albconfigs", "AlbConfig", False, True),
    Res("", "v1", "services", "Service", status=True),
    Res("", "v1", "endpoints", "Endpoints"),
    Res("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Res("", "v1", "secrets", "Secret"),
    Res("", "v1", "events", "Event"),
    Res("albingress.dev", "v1alpha1", "servergroups", "ServerGroup", status=True),
    Res("coordination.k8s.io", "v1", "leases", "Lease"),
]
BY_KIND = {r.kind: r for r in RESOURCES}
BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.body = status_body(code, reason, message)
        self.code = code
