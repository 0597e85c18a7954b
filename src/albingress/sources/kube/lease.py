"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

Every replica serves traffic; only the leader writes to the API (status, Events). A replica
becomes leader when the Lease has no holder, or when its record has not changed for
``lease_duration`` seconds *as observed on this replica's own clock* (so clock skew between nodes
does not matter). Every write names the ``resourceVersion`` read, so two candidates can never
both win. The leader renews every ``renew_period``; when it cannot renew for ``lease_duration``
it steps down by itself. Stopping releases the Lease (empty holder) so that another replica takes
over at once instead of waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from albingress.sources.kube.client import LEASE, ApiStatusError, KubeClient, KubeError

log = logging.getLogger("albingress.kubernetes.lease")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease; ``is_leader`` says whether this replica may write."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_period: float = 5.0,
        retry_period: float = 2.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_period = renew_period
        self.retry_period = retry_period
        self.is_leader = False
        self.transitions = 0  # times this replica became leader
        self.on_change: list[Callable[[bool], None]] = []
        self._observed_version = ""
        self._observed_at = 0.0  # time.monotonic() when the record last changed
        self._renewed_at = 0.0  # time.monotonic() of this leader's last successful renewal

    def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        if leader:
            self.transitions += 1
        log.info(
            "%s %s leadership of Lease %s/%s",
            self.identity,
            "took" if leader else "lost",
            self.namespace,
            self.name,
        )
        for callback in self.on_change:
            callback(leader)

    def _spec(self, holder: str, lease: dict[str, Any] | None) -> dict[str, Any]:
        old = (lease or {}).get("spec") or {}
        now = _now()
        changed = old.get("holderIdentity") != holder
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": now if changed else old.get("acquireTime", now),
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions") or 0)
            + (1 if changed and holder else 0),
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease afterwards."""
        path = LEASE.path(self.namespace, self.name)
        try:
            lease = await self.client.request("GET", path)
        except ApiStatusError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(self.identity, None),
            }
            try:
                await self.client.request("POST", LEASE.path(self.namespace), body)
            except ApiStatusError as exc2:
                if exc2.status == 409:
                    return False  # another replica created it first
                raise
            self._renewed_at = time.monotonic()
            return True
        meta = lease.get("metadata") or {}
        spec = lease.get("spec") or {}
        version = str(meta.get("resourceVersion") or "")
        now = time.monotonic()
        if version != self._observed_version:
            self._observed_version, self._observed_at = version, now
        holder = str(spec.get("holderIdentity") or "")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # held by a live leader
        lease["spec"] = self._spec(self.identity, lease)
        try:
            await self.client.request("PUT", path, lease)
        except ApiStatusError as exc:
            if exc.status == 409:
                return False  # someone else wrote first
            raise
        self._renewed_at = time.monotonic()
        return True

    async def run(self) -> None:
        """Campaign and renew until cancelled."""
        while True:
            try:
                self._set(await self.try_acquire_or_renew())
            except KubeError as exc:
                log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
                if self.is_leader and time.monotonic() - self._renewed_at > self.lease_duration:
                    self._set(False)  # could not renew in time: another replica may lead now
            await asyncio.sleep(self.renew_period if self.is_leader else self.retry_period)

    async def release(self) -> None:
        """Give the Lease up (when leading), so that another replica takes over at once."""
        if not self.is_leader:
            return
        self._set(False)
        path = LEASE.path(self.namespace, self.name)
        with contextlib.suppress(KubeError):
            lease = await self.client.request("GET", path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = {**self._spec("", lease), "leaseDurationSeconds": 1}
                await self.client.request("PUT", path, lease)
