"""The server-group store of Kubernetes mode: ServerGroup custom resources (``albingress.dev``).

A group created through the ALB OpenAPI is a ``ServerGroup`` object in the cluster: visible with
``kubectl get servergroups``, kept in etcd, the same for every replica. The store's optimistic
concurrency is Kubernetes' own: a stored group's ``version`` is its ``resourceVersion`` (etcd
revisions are integers), every replace is a PUT naming it and every delete a DELETE with a
``resourceVersion`` precondition, so a stale write gets ``409 Conflict`` and changes nothing.

Calls block (the :class:`ServerGroupStore` protocol is synchronous, as the API service is): they
are rare writes with a short timeout. An API server that cannot be reached, or answers 5xx/429,
raises :class:`~albingress.servergroups.store.StoreUnavailable` (the admin API answers 503 and
nothing was changed); any other refusal (RBAC, say) raises
:class:`~albingress.diagnostics.StateError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from albingress.diagnostics import StateError
from albingress.servergroups.store import (
    API_VERSION,
    KIND,
    ConflictError,
    StoredGroup,
    StoreUnavailable,
    Subscribers,
)
from albingress.sources.kube.client import (
    SERVER_GROUP,
    ApiStatusError,
    KubeError,
    SyncKubeClient,
)

SEQ_ANNOTATION = "albingress.dev/created-ns"  # creation order (ns since the epoch) for listing
MANAGED_LABEL = "app.kubernetes.io/managed-by"


def _version(body: dict[str, Any]) -> int:
    raw = str((body.get("metadata") or {}).get("resourceVersion") or "0")
    try:
        return int(raw)
    except ValueError as exc:
        raise StateError(f"resourceVersion {raw!r} is not an integer") from exc


def to_stored(body: dict[str, Any]) -> StoredGroup:
    """A ServerGroup object as the API service sees it."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = dict(body.get("spec") or {})
    spec.setdefault("serverGroupId", meta.get("name"))
    try:
        seq = int(annotations.get(SEQ_ANNOTATION) or 0)
    except ValueError:
        seq = 0
    return StoredGroup(
        id=str(meta.get("name")),
        spec=spec,
        created=str(meta.get("creationTimestamp") or ""),
        version=_version(body),
        seq=seq,
    )


class CustomResourceStore:
    """:class:`~albingress.servergroups.store.ServerGroupStore` over ServerGroup objects."""

    def __init__(self, client: SyncKubeClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._subscribers = Subscribers()

    def _call(
        self, method: str, name: str = "", body: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any] | None:
        """One request; ``None`` on 404; :class:`ConflictError` on 409."""
        path = SERVER_GROUP.path(self.namespace, name)
        try:
            return self.client.request(method, path, body, params)
        except ApiStatusError as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise ConflictError(exc.message) from exc
            if exc.status == 429 or exc.status >= 500:
                raise StoreUnavailable(f"the Kubernetes API refused: {exc}") from exc
            raise StateError(f"ServerGroup {name or '(list)'}: {exc}") from exc
        except KubeError as exc:
            raise StoreUnavailable(f"the Kubernetes API is unavailable: {exc}") from exc

    def get(self, group_id: str) -> StoredGroup | None:
        body = self._call("GET", group_id)
        return to_stored(body) if body is not None else None

    def _items(self) -> list[dict[str, Any]]:
        page = self._call("GET", params={"limit": "1000"}) or {}
        items = page.get("items")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    def list_groups(self) -> list[StoredGroup]:
        groups = [to_stored(i) for i in self._items()]
        return sorted(groups, key=lambda g: (g.seq, g.created, g.id))

    def create(self, group_id: str, spec: dict[str, Any]) -> StoredGroup:
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": group_id,
                "namespace": self.namespace,
                "labels": {MANAGED_LABEL: "albingress"},
                "annotations": {SEQ_ANNOTATION: str(time.time_ns())},
            },
            "spec": spec,
        }
        created = self._call("POST", body=body)
        assert created is not None  # a POST answers 201 or raises
        self._subscribers.notify()
        return to_stored(created)

    def replace(self, group_id: str, spec: dict[str, Any], version: int) -> StoredGroup:
        current = self._call("GET", group_id)
        if current is None or _version(current) != version:
            raise ConflictError(f"server group {group_id} changed or was deleted meanwhile")
        current["spec"] = spec
        current["metadata"]["resourceVersion"] = str(version)
        written = self._call("PUT", group_id, current)
        if written is None:
            raise ConflictError(f"server group {group_id} was deleted meanwhile")
        self._subscribers.notify()
        return to_stored(written)

    def delete(self, group_id: str, version: int) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": str(version)},
        }
        if self._call("DELETE", group_id, body) is None:
            raise ConflictError(f"server group {group_id} was deleted meanwhile")
        self._subscribers.notify()

    def objects(self) -> list[dict[str, Any]]:
        return self._items()

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.add(callback)

    def close(self) -> None:
        """Nothing to release: every call uses its own connection."""
