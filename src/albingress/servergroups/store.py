"""Where server groups created through the API are kept: one interface, several back ends.

The embedded mode keeps them in SQLite (:class:`albingress.servergroups.sqlite.SqliteStore`);
the Kubernetes mode will keep them as ServerGroup custom resources behind the same
:class:`ServerGroupStore` protocol, which therefore says nothing about SQL.

A stored group is its ``spec`` in the Kubernetes shape every consumer reads::

    {"apiVersion": "albingress.dev/v1alpha1", "kind": "ServerGroup",
     "metadata": {"name": <id>, "namespace": "default", ...},
     "spec": {"serverGroupId": "sgp-...", "serverGroupName": ..., "serverGroupType": ...,
              "protocol": ..., "scheduler": ..., "uchConfig": {...}, "vpcId": ...,
              "healthCheckConfig": {...}, "stickySessionConfig": {...}, "servers": [...]}}

Every write is one transaction and carries the version it read (optimistic concurrency, like a
Kubernetes ``resourceVersion``): a write based on a stale read raises :class:`ConflictError` and
changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from albingress.diagnostics import AlbingressError

API_VERSION = "albingress.dev/v1alpha1"
KIND = "ServerGroup"
NAMESPACE = "default"


class ConflictError(AlbingressError):
    """A write raced with another one (stale version) or the id already exists."""


class StoreUnavailable(AlbingressError):
    """The store cannot take a write now (its database locked by another process, its disk
    full): nothing was changed, and the same write may succeed later."""


@dataclass(frozen=True, slots=True)
class StoredGroup:
    """One server group as stored: its id, normalised spec, and bookkeeping."""

    id: str  # "sgp-..."; equals spec["serverGroupId"]
    spec: dict[str, Any] = field(compare=False, hash=False)  # normalised, see validate.py
    created: str = ""  # RFC 3339 UTC creation time
    version: int = 1  # bumped on every write; a write names the version it read
    seq: int = 0  # creation order, for stable listing and pagination

    def to_object(self) -> dict[str, Any]:
        """The Kubernetes-shaped object the compiler reads (a deep copy)."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": self.id,
                "namespace": NAMESPACE,
                "creationTimestamp": self.created,
                "resourceVersion": str(self.version),
            },
            "spec": copy.deepcopy(self.spec),
        }


class ServerGroupStore(Protocol):
    """Server groups by id. Each method is atomic; callbacks run after each committed change."""

    def get(self, group_id: str) -> StoredGroup | None: ...

    def list_groups(self) -> list[StoredGroup]:
        """Every group in creation order."""
        ...

    def create(self, group_id: str, spec: dict[str, Any]) -> StoredGroup:
        """Store a new group; :class:`ConflictError` when the id exists."""
        ...

    def replace(self, group_id: str, spec: dict[str, Any], version: int) -> StoredGroup:
        """Overwrite a group read at ``version``; :class:`ConflictError` when stale or gone."""
        ...

    def delete(self, group_id: str, version: int) -> None:
        """Remove a group read at ``version``; :class:`ConflictError` when stale or gone."""
        ...

    def objects(self) -> list[dict[str, Any]]:
        """Every group as a Kubernetes-shaped ServerGroup object."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every committed change."""
        ...

    def close(self) -> None: ...


class Subscribers:
    """The change-notification list shared by store implementations."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def notify(self) -> None:
        for callback in list(self._callbacks):
            callback()
