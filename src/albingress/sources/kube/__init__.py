"""The Kubernetes API as a source: configuration, a small client, reflectors, the Source.

    config = load_kubeconfig(path) or in_cluster()
    source = KubernetesSource(KubeClient(config), namespaces=("shop",))
    await source.start(); source.snapshot(); await source.run(changed)

The sources layer only produces objects: what they mean is for the compiler.
"""

from albingress.sources.kube.client import (
    ApiStatusError,
    GoneError,
    KubeClient,
    KubeError,
    KubeTransportError,
    Resource,
    SyncKubeClient,
)
from albingress.sources.kube.config import ClusterConfig, in_cluster, load_kubeconfig
from albingress.sources.kube.reflector import Backoff, Reflector
from albingress.sources.kube.source import Changes, KubernetesSource

__all__ = [
    "ApiStatusError",
    "Backoff",
    "Changes",
    "ClusterConfig",
    "GoneError",
    "KubeClient",
    "KubeError",
    "KubeTransportError",
    "KubernetesSource",
    "Reflector",
    "Resource",
    "SyncKubeClient",
    "in_cluster",
    "load_kubeconfig",
]
