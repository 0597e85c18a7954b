"""Kubernetes Services as server groups (reference section 6).

A ``ServiceName`` + ``ServicePort`` entry becomes a server group whose servers are the ready
endpoints of that port (EndpointSlices, or the older Endpoints object): pod IPs and the target
port, weight 100 each. Terminating and not-ready endpoints take no new requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from albingress import ir
from albingress.model.fields import as_int
from albingress.sources.snapshot import K8sObject, Snapshot

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def service_group_id(namespace: str, name: str, port: int) -> str:
    return f"svc:{namespace}/{name}:{port}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int  # the Service port
    name: str  # "" when unnamed
    target: int | str  # targetPort: a number or a container port name


class ServiceIndex:
    """Services, EndpointSlices and Endpoints of a snapshot, indexed for lookups."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.services = snapshot.index("Service")
        self.endpoints = snapshot.index("Endpoints")
        self.slices: dict[tuple[str, str], list[K8sObject]] = {}
        for obj in snapshot.of_kind("EndpointSlice"):
            owner = obj.labels.get(SERVICE_NAME_LABEL)
            if isinstance(owner, str):
                self.slices.setdefault((obj.namespace, owner), []).append(obj)

    def resolve_port(self, namespace: str, name: str, ref: int | str) -> ServicePort | str:
        """The Service port that ``ref`` names, or a message saying why there is none."""
        svc = self.services.get((namespace, name))
        if svc is None:
            return f"Service {namespace}/{name} not found"
        spec = svc.spec
        if spec.get("type") == "ExternalName":
            return f"Service {namespace}/{name} is of type ExternalName, which has no endpoints"
        ports = spec.get("ports")
        if not isinstance(ports, list):
            return f"Service {namespace}/{name} has no ports"
        for item in ports:
            if not isinstance(item, dict):
                continue
            number = as_int(item.get("port"))
            pname = item.get("name") or ""
            if number is None:
                continue
            if (isinstance(ref, int) and number == ref) or (isinstance(ref, str) and pname == ref):
                target_raw = item.get("targetPort", number)
                target: int | str = as_int(target_raw, allow_string=True) or (
                    str(target_raw) if target_raw else number
                )
                return ServicePort(number, str(pname), target)
        have = ", ".join(str(p.get("name") or p.get("port")) for p in ports if isinstance(p, dict))
        return f"Service {namespace}/{name} has no port {ref!r} (ports: {have or 'none'})"

    def servers(self, namespace: str, name: str, port: ServicePort) -> tuple[ir.Server, ...] | None:
        """Ready endpoints for ``port``; ``None`` when the Service has no endpoint objects at all."""
        slices = self.slices.get((namespace, name))
        if slices:
            found = list(_from_slices(slices, port))
        elif (endpoints := self.endpoints.get((namespace, name))) is not None:
            found = list(_from_endpoints(endpoints, port))
        else:
            return None
        unique = {(s.address, s.port): s for s in found}
        return tuple(unique[k] for k in sorted(unique))


def _target_for(ports: Any, svc_port: ServicePort) -> int | None:
    """The endpoint port matching a Service port: by name (or the only unnamed port)."""
    if not isinstance(ports, list):
        return svc_port.target if isinstance(svc_port.target, int) else None
    for item in ports:
        if not isinstance(item, dict):
            continue
        if (item.get("name") or "") == svc_port.name:
            return as_int(item.get("port"))
    return None


def _from_slices(slices: Iterable[K8sObject], port: ServicePort) -> Iterable[ir.Server]:
    for obj in slices:
        body = obj.body
        target = _target_for(body.get("ports"), port)
        if target is None:
            continue
        for ep in body.get("endpoints") or []:
            if not isinstance(ep, dict):
                continue
            cond = _mapping(ep.get("conditions"))
            if cond.get("ready") is False or cond.get("terminating") is True:
                continue
            ref = _mapping(ep.get("targetRef"))
            for address in ep.get("addresses") or []:
                if isinstance(address, str):
                    yield ir.Server(address, target, 100, str(ref.get("name") or address), "Pod")


def _from_endpoints(obj: K8sObject, port: ServicePort) -> Iterable[ir.Server]:
    for subset in obj.body.get("subsets") or []:
        if not isinstance(subset, dict):
            continue
        target = _target_for(subset.get("ports"), port)
        if target is None:
            continue
        for address in subset.get("addresses") or []:
            if isinstance(address, dict) and isinstance(address.get("ip"), str):
                ref = _mapping(address.get("targetRef"))
                yield ir.Server(
                    address["ip"], target, 100, str(ref.get("name") or address["ip"]), "Pod"
                )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
