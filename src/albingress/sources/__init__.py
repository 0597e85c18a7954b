"""Sources: where manifests come from, turned into a :class:`Snapshot` of plain objects.

Two providers stand behind one interface: a directory of manifests (the embedded default, see
:mod:`albingress.sources.files`) and, in controller mode, the Kubernetes API. Server groups created
through the ALB API are objects of kind ``ServerGroup`` like those declared in manifests. Sources
know nothing of HTTP or of what the objects mean.
"""

from collections.abc import Callable
from typing import Protocol

from albingress.sources.snapshot import KINDS, K8sObject, Snapshot


class Source(Protocol):
    """Where the load balancer's objects come from."""

    description: str  # for logs: "manifests /etc/albingress", "kubernetes https://..."

    def snapshot(self) -> Snapshot:
        """Every object now: cheap enough to call on each change."""
        ...

    async def run(self, changed: Callable[[], None]) -> None:
        """Watch until cancelled, calling ``changed()`` when the snapshot may differ."""
        ...


__all__ = ["KINDS", "K8sObject", "Snapshot", "Source"]
