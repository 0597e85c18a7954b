"""Events on objects (``core/v1`` Event): what ``kubectl describe`` shows under "Events"."""

from __future__ import annotations

import datetime
from typing import Any

from albingress.sources.kube.client import EVENT, KubeClient

MAX_MESSAGE = 1024  # the API server refuses longer Event messages


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def record_event(
    client: KubeClient,
    involved: dict[str, Any],
    reason: str,
    message: str,
    warning: bool = False,
    component: str = "albingress",
    instance: str = "",
) -> dict[str, Any]:
    """Post one Event about ``involved`` (an object body as read from the API)."""
    meta = involved.get("metadata") or {}
    name = str(meta.get("name") or "unknown")
    namespace = str(meta.get("namespace") or "default")
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    now = _now()
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", ""),
            "kind": involved.get("kind", ""),
            "name": name,
            "namespace": str(meta.get("namespace") or ""),
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "reason": reason,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    return await client.request("POST", EVENT.path(namespace), body)
