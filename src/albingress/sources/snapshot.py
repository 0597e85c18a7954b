"""The snapshot: every object the compiler may read, as plain data, indexed by kind."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from albingress.diagnostics import Diagnostic, ObjectRef, Severity

# (apiVersion group, kind) pairs we read; anything else is skipped.
KINDS: dict[str, tuple[str, ...]] = {
    "Ingress": ("networking.k8s.io/v1",),
    "IngressClass": ("networking.k8s.io/v1",),
    "AlbConfig": ("alibabacloud.com/v1",),
    "Service": ("v1",),
    "Endpoints": ("v1",),
    "EndpointSlice": ("discovery.k8s.io/v1",),
    "ServerGroup": ("albingress.dev/v1alpha1",),
    "Secret": ("v1",),
}
CLUSTER_SCOPED = frozenset({"IngressClass", "AlbConfig"})


@dataclass(frozen=True, slots=True)
class K8sObject:
    """One Kubernetes object: its kind, identity, where it came from, and its raw body."""

    kind: str
    namespace: str  # "" for cluster-scoped kinds; "default" when a namespaced object has none
    name: str
    body: dict[str, Any] = field(compare=False, hash=False)
    file: str = ""  # file path (files source) or "" (Kubernetes API)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name, self.file)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def metadata(self) -> dict[str, Any]:
        meta = self.body.get("metadata")
        return meta if isinstance(meta, dict) else {}

    @property
    def annotations(self) -> dict[str, Any]:
        ann = self.metadata.get("annotations")
        return ann if isinstance(ann, dict) else {}

    @property
    def labels(self) -> dict[str, Any]:
        lab = self.metadata.get("labels")
        return lab if isinstance(lab, dict) else {}

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, dict) else {}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every object read, sorted by (kind, namespace, name), plus problems met while reading.

    Two objects with the same identity: the later one read wins and a diagnostic says so.
    """

    objects: tuple[K8sObject, ...]
    diagnostics: tuple[Diagnostic, ...] = ()

    @classmethod
    def build(
        cls, objects: Iterable[K8sObject], diagnostics: Iterable[Diagnostic] = ()
    ) -> Snapshot:
        by_key: dict[tuple[str, str, str], K8sObject] = {}
        for obj in objects:
            by_key[obj.key] = obj
        ordered = tuple(by_key[k] for k in sorted(by_key))
        return cls(ordered, tuple(diagnostics))

    def of_kind(self, kind: str) -> Iterator[K8sObject]:
        return (o for o in self.objects if o.kind == kind)

    def index(self, kind: str) -> dict[tuple[str, str], K8sObject]:
        return {(o.namespace, o.name): o for o in self.objects if o.kind == kind}

    def merged(self, others: Iterable[K8sObject]) -> Snapshot:
        """A new snapshot with ``others`` added (they win over objects of the same identity)."""
        return Snapshot.build((*self.objects, *others), self.diagnostics)


def with_api_groups(
    snapshot: Snapshot, bodies: Iterable[dict[str, Any]], where: str = "api"
) -> Snapshot:
    """``snapshot`` plus server groups created through the API (ServerGroup object bodies).

    An ID that a manifest also declares is an error on the API's copy, and the manifest wins: what
    is written in files is what the user reviews.
    """
    declared = {
        str(o.spec.get("serverGroupId") or o.name): o for o in snapshot.of_kind("ServerGroup")
    }
    extra: list[K8sObject] = []
    problems: list[Diagnostic] = []
    for body in bodies:
        name = str(body["metadata"]["name"])
        if name in declared:
            problems.append(
                Diagnostic(
                    "ServerGroup.DuplicateId",
                    Severity.ERROR,
                    ObjectRef("ServerGroup", "default", name, where),
                    "spec.serverGroupId",
                    f"server group {name} was created through the API and is also declared in "
                    f"{declared[name].file}; the manifest wins",
                )
            )
            continue
        extra.append(K8sObject("ServerGroup", "default", f"api:{name}", body, where))
    return Snapshot.build((*snapshot.objects, *extra), (*snapshot.diagnostics, *problems))
