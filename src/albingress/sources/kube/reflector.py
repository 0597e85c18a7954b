"""List + watch of one resource into a local cache, the way client-go's reflector does it.

1. LIST (paginated) gives every object and a collection ``resourceVersion``.
2. WATCH from that version streams ADDED / MODIFIED / DELETED events and BOOKMARKs; each moves
   the version forward. When the server ends the stream (its timeout), or the connection drops,
   the watch starts again from the last version seen: nothing is lost, nothing is listed again.
3. ``410 Gone`` (as an HTTP status or as an ERROR event) means that version was compacted away:
   LIST again and report the whole kind as changed.
4. Any other failure (refused, timed out, garbage, 5xx) waits with exponential back-off and
   jitter, then goes on from step 2 (or step 1 if there is no version yet). The cache keeps the
   last objects seen meanwhile, so the load balancer keeps serving what it had.

A resource the server does not serve (404 on LIST, e.g. a CRD not installed) counts as empty and
is looked at again after the longest back-off.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from albingress.sources.kube.client import (
    ApiStatusError,
    GoneError,
    KubeClient,
    KubeError,
    KubeTransportError,
    Resource,
)

log = logging.getLogger("albingress.kubernetes")

Key = tuple[str, str]  # (namespace or "", name)
# (resource, event type "ADDED" | "MODIFIED" | "DELETED" | "RELIST", old body, new body)
OnEvent = Callable[[Resource, str, dict[str, Any] | None, dict[str, Any] | None], None]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between failed attempts: ``initial`` doubling up to ``maximum``, +-20% jitter."""

    initial: float = 0.2  # seconds
    maximum: float = 10.0  # seconds

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * (2 ** min(attempt, 30)))
        return float(base * random.uniform(0.8, 1.2))


DEFAULT_BACKOFF = Backoff()


def object_key(body: Any) -> Key | None:
    """(namespace, name) of an object body; ``None`` when it has no usable name."""
    if not isinstance(body, dict):
        return None
    meta = body.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        return None
    namespace = meta.get("namespace")
    return (namespace if isinstance(namespace, str) else "", meta["name"])


def _version(body: dict[str, Any]) -> str:
    meta = body.get("metadata")
    return str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""


class Reflector:
    """Keeps ``cache`` equal to the server's objects of one resource (in one or every namespace)."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        on_event: OnEvent,
        namespace: str = "",
        params: dict[str, str] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        watch_timeout: int = 300,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.params = params or {}
        self.on_event = on_event
        self.backoff = backoff
        self.watch_timeout = watch_timeout
        self.cache: dict[Key, dict[str, Any]] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()  # set after the first LIST (or when it is not served)
        self.lists = 0  # LISTs done (1 + re-lists)
        self.errors = 0  # failures met
        self.skipped = 0  # objects without a name, ignored
        self.missing = False  # the server does not serve this resource

    @property
    def where(self) -> str:
        return f"{self.resource.plural}" + (f" in {self.namespace}" if self.namespace else "")

    async def run(self) -> None:
        """List and watch until cancelled."""
        attempt = 0
        gone = 0  # 410s in a row: a server that keeps answering 410 is not hammered
        while True:
            try:
                if not self.resource_version:
                    await self._list()
                    if self.missing:
                        await asyncio.sleep(self.backoff.maximum)
                        continue
                await self._watch()
                attempt = gone = 0  # the server closed the stream normally: watch again at once
            except GoneError:
                log.info(
                    "%s: resourceVersion %s expired; listing again",
                    self.where,
                    self.resource_version,
                )
                self.resource_version = ""
                attempt = 0
                gone += 1
                if gone > 1:
                    await asyncio.sleep(self.backoff.delay(gone - 2))
            except KubeError as exc:
                self.errors += 1
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning("%s: %s; retrying in %.1f s", self.where, exc, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        try:
            page = await self.client.list(self.resource, self.namespace, self.params)
        except ApiStatusError as exc:
            if exc.status == 404:
                if not self.missing:
                    log.warning("%s: not served by the API server (CRD missing?)", self.where)
                self.missing = True
                self._replace({})
                self.synced.set()
                return
            raise
        self.missing = False
        fresh: dict[Key, dict[str, Any]] = {}
        for item in page["items"]:
            key = object_key(item)
            if key is None:
                self.skipped += 1
                continue
            fresh[key] = item
        self._replace(fresh)
        self.resource_version = str(page["metadata"].get("resourceVersion") or "")
        self.lists += 1
        self.synced.set()

    def _replace(self, fresh: dict[Key, dict[str, Any]]) -> None:
        changed = fresh != self.cache
        self.cache = fresh
        if changed:
            self.on_event(self.resource, "RELIST", None, None)

    async def _watch(self) -> None:
        # Spread over time when the server ends the streams, as client-go does (x1 to x2).
        timeout = round(self.watch_timeout * random.uniform(1.0, 2.0))
        stream = self.client.watch(
            self.resource, self.namespace, self.resource_version, timeout, self.params
        )
        async for event in stream:
            kind = event.get("type")
            body = event.get("object")
            if not isinstance(body, dict):
                raise KubeTransportError(f"watch {self.where}: event without an object")
            if kind == "ERROR":
                code = body.get("code")
                status = code if isinstance(code, int) else 500
                reason, message = str(body.get("reason") or ""), str(body.get("message") or "")
                cls = GoneError if status == 410 else ApiStatusError
                raise cls(status, reason, message)
            version = _version(body)
            if kind == "BOOKMARK":
                self.resource_version = version or self.resource_version
                continue
            key = object_key(body)
            if key is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
                self.skipped += 1
                log.warning(
                    "watch %s: skipped an event %r without a usable object", self.where, kind
                )
                continue
            old = self.cache.get(key)
            if kind == "DELETED":
                self.cache.pop(key, None)
                new = None
            else:
                self.cache[key] = body
                new = body
            if version:
                self.resource_version = version
            self.on_event(self.resource, str(kind), old, new)
