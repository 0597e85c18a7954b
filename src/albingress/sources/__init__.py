"""Sources: where manifests come from, turned into a :class:`Snapshot` of plain objects.

Two providers stand behind one interface: a directory of manifests (the embedded default, see
:mod:`albingress.sources.files`) and, in controller mode, the Kubernetes API. Server groups created
through the ALB API are objects of kind ``ServerGroup`` like those declared in manifests. Sources
know nothing of HTTP or of what the objects mean.
"""

from albingress.sources.snapshot import KINDS, K8sObject, Snapshot

__all__ = ["KINDS", "K8sObject", "Snapshot"]
