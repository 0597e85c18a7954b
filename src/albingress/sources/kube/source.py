"""The Kubernetes source: reflectors for every kind the compiler reads, one debounced signal.

Behind the same :class:`~albingress.sources.Source` interface as the files source. What is
watched: Ingress, IngressClass, AlbConfig, Service, EndpointSlice, Secret (``kubernetes.io/tls``
only, for TLS), ServerGroup, and optionally the older Endpoints. Namespaced kinds are watched in
the namespaces given, or in all of them.

A burst of events gives one ``changed()``: after an event the source waits until no new event has
come for ``debounce`` seconds, at most ``max_delay`` seconds after the first. What changed since
the last look is told by :meth:`KubernetesSource.take_changes`, so that the controller can take
the fast path when only endpoints moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from albingress.sources.kube.client import (
    ALB_CONFIG,
    ENDPOINT_SLICE,
    ENDPOINTS,
    INGRESS,
    INGRESS_CLASS,
    SECRET,
    SERVER_GROUP,
    SERVICE,
    KubeClient,
    Resource,
)
from albingress.sources.kube.reflector import DEFAULT_BACKOFF, Backoff, Reflector
from albingress.sources.snapshot import CLUSTER_SCOPED, K8sObject, Snapshot

log = logging.getLogger("albingress.kubernetes")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
WATCHED: tuple[Resource, ...] = (
    INGRESS,
    INGRESS_CLASS,
    ALB_CONFIG,
    SERVICE,
    ENDPOINT_SLICE,
    SECRET,
    SERVER_GROUP,
)
ENDPOINT_KINDS = frozenset({"EndpointSlice", "Endpoints"})
_PARAMS = {"Secret": {"fieldSelector": "type=kubernetes.io/tls"}}


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed since the last :meth:`KubernetesSource.take_changes`."""

    kinds: frozenset[str]  # kinds with at least one change
    services: frozenset[tuple[str, str]]  # (namespace, Service) whose endpoints changed
    relisted: frozenset[str]  # kinds listed again (every object may have changed)
    first_event: float  # time.perf_counter() of the first change (0.0 when none)

    @property
    def endpoints_only(self) -> bool:
        """Only endpoints of known Services moved: the rules need no recompiling."""
        return bool(self.kinds) and self.kinds <= ENDPOINT_KINDS and not self.relisted


_VOLATILE = ("resourceVersion", "managedFields", "generation")


def _meaning(body: dict[str, Any]) -> dict[str, Any]:
    """What the compiler may read of an object: not its status or bookkeeping metadata."""
    meta = body.get("metadata")
    meta = {k: v for k, v in meta.items() if k not in _VOLATILE} if isinstance(meta, dict) else {}
    return {k: v for k, v in body.items() if k != "status"} | {"metadata": meta}


def _endpoint_owner(kind: str, body: dict[str, Any] | None) -> tuple[str, str] | None:
    if body is None:
        return None
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return None
    namespace = str(meta.get("namespace") or "default")
    if kind == "Endpoints":
        return (namespace, str(meta.get("name")))
    labels = meta.get("labels")
    owner = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    return (namespace, owner) if isinstance(owner, str) else None


class KubernetesSource:
    """Objects from the Kubernetes API, kept current by list + watch."""

    def __init__(
        self,
        client: KubeClient,
        namespaces: tuple[str, ...] = (),
        *,
        endpoints: bool = False,
        debounce: float = 0.05,
        max_delay: float = 0.5,
        backoff: Backoff = DEFAULT_BACKOFF,
        watch_timeout: int = 300,
    ) -> None:
        self.client = client
        self.namespaces = namespaces
        self.description = f"kubernetes {client.config.server}" + (
            f" (namespaces {', '.join(namespaces)})" if namespaces else ""
        )
        self.debounce = debounce
        self.max_delay = max_delay
        resources = WATCHED + ((ENDPOINTS,) if endpoints else ())
        self.reflectors: list[Reflector] = []
        for res in resources:
            for ns in namespaces if (res.namespaced and namespaces) else ("",):
                self.reflectors.append(
                    Reflector(
                        client,
                        res,
                        self._on_event,
                        ns,
                        _PARAMS.get(res.kind),
                        backoff,
                        watch_timeout,
                    )
                )
        self._dirty = asyncio.Event()
        self._last_event = 0.0
        self._snapshot: Snapshot | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._kinds: set[str] = set()
        self._services: set[tuple[str, str]] = set()
        self._relisted: set[str] = set()
        self._first_event = 0.0

    # ----------------------------------------------------------------- events

    def _on_event(
        self, res: Resource, kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        if (
            kind == "MODIFIED"
            and old is not None
            and new is not None
            and _meaning(old) == _meaning(new)
        ):
            return  # our own status write-back, or bookkeeping: nothing to recompile
        now = time.perf_counter()
        if not self._kinds and not self._relisted:
            self._first_event = now
        self._last_event = now
        self._snapshot = None
        self._kinds.add(res.kind)
        if kind == "RELIST":
            self._relisted.add(res.kind)
        elif res.kind in ENDPOINT_KINDS:
            for body in (old, new):
                owner = _endpoint_owner(res.kind, body)
                if owner is not None:
                    self._services.add(owner)
        self._dirty.set()

    def take_changes(self) -> Changes:
        changes = Changes(
            frozenset(self._kinds),
            frozenset(self._services),
            frozenset(self._relisted),
            self._first_event,
        )
        self._kinds.clear()
        self._services.clear()
        self._relisted.clear()
        self._first_event = 0.0
        return changes

    # ----------------------------------------------------------------- views

    def objects(self, kind: str) -> list[K8sObject]:
        """Every cached object of ``kind``."""
        out: list[K8sObject] = []
        for ref in self.reflectors:
            if ref.resource.kind != kind:
                continue
            for (namespace, name), body in ref.cache.items():
                ns = "" if kind in CLUSTER_SCOPED else (namespace or "default")
                out.append(K8sObject(kind, ns, name, body))
        return out

    def select(
        self, kind: str, keep: Callable[[str, str, dict[str, Any]], bool]
    ) -> list[K8sObject]:
        """Cached objects of ``kind`` for which ``keep(namespace, name, body)`` is true."""
        out: list[K8sObject] = []
        for ref in self.reflectors:
            if ref.resource.kind != kind:
                continue
            for (namespace, name), body in ref.cache.items():
                ns = "" if kind in CLUSTER_SCOPED else (namespace or "default")
                if keep(ns, name, body):
                    out.append(K8sObject(kind, ns, name, body))
        return out

    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            objects: list[K8sObject] = []
            for kind in dict.fromkeys(r.resource.kind for r in self.reflectors):
                objects.extend(self.objects(kind))
            self._snapshot = Snapshot.build(objects)
        return self._snapshot

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    def stats(self) -> dict[str, Any]:
        return {
            r.where: {
                "objects": len(r.cache),
                "resourceVersion": r.resource_version,
                "lists": r.lists,
                "errors": r.errors,
                "skipped": r.skipped,
                "missing": r.missing,
            }
            for r in self.reflectors
        }

    # ----------------------------------------------------------------- running

    async def start(self, timeout: float = 30.0) -> bool:
        """Start the reflectors and wait for their first LIST; False when ``timeout`` passed."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(r.run(), name=f"reflector {r.where}") for r in self.reflectors
            ]
        waits = [asyncio.create_task(r.synced.wait()) for r in self.reflectors]
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.error("the Kubernetes API did not answer every LIST within %.0f s", timeout)
        return not pending

    async def run(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` once per burst of events, until cancelled."""
        if not self._tasks:
            await self.start()
        try:
            while True:
                await self._dirty.wait()
                first = time.perf_counter()
                while True:
                    quiet = self._last_event + self.debounce - time.perf_counter()
                    limit = first + self.max_delay - time.perf_counter()
                    wait = min(quiet, limit)
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                self._dirty.clear()
                changed()
        finally:
            await self.stop()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
