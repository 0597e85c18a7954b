"""Server groups from manifests and from the API, side by side.

Groups created through the API (the store) and groups declared as ServerGroup manifests reach the
compiler as the same kind of object. When one ``serverGroupId`` is declared by both, the manifest
wins (files are the declared state) and a warning names both, so that nothing crashes and nobody
is surprised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from albingress.diagnostics import Diagnostic, ObjectRef, Severity
from albingress.servergroups.store import KIND, NAMESPACE
from albingress.sources.snapshot import K8sObject

DUPLICATE_CODE = "ServerGroup.DeclaredTwice"


def _group_id(obj: K8sObject) -> str:
    gid = obj.spec.get("serverGroupId")
    return gid if isinstance(gid, str) and gid else obj.name


def merge_server_groups(
    declared: Iterable[K8sObject], stored: Iterable[dict[str, Any]]
) -> tuple[list[K8sObject], list[Diagnostic]]:
    """The stored groups (as :class:`K8sObject`) that no manifest overrides, and a warning for
    each one that a manifest does."""
    taken: dict[str, K8sObject] = {}
    for obj in declared:
        if obj.kind == KIND:
            taken[_group_id(obj)] = obj
    kept: list[K8sObject] = []
    problems: list[Diagnostic] = []
    for body in stored:
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        obj = K8sObject(KIND, str(meta.get("namespace") or NAMESPACE), name, body, "")
        twin = taken.get(_group_id(obj))
        if twin is None:
            kept.append(obj)
            continue
        where = twin.file or f"{twin.namespace}/{twin.name}"
        problems.append(
            Diagnostic(
                DUPLICATE_CODE,
                Severity.WARNING,
                ObjectRef(KIND, twin.namespace, twin.name, twin.file),
                "spec.serverGroupId",
                f"server group {_group_id(obj)} is declared in {where} and was also created "
                "through the API; the manifest is used",
            )
        )
    return kept, problems
