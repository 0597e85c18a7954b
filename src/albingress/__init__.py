"""albingress: a self-hosted ALB Ingress.

Kubernetes Ingress manifests written for Alibaba Cloud ALB run unchanged on your own machines:
one load balancer forwards each rule's traffic, by weight, over server groups that mix
Kubernetes Services (pods) with external server groups (VMs, remote and on-premises servers).

Layers (each depends only on those below it; see ``.importlinter`` in ``pyproject.toml``)::

    cli  ->  api  ->  dataplane | servergroups  ->  compile  ->  model  ->  sources  ->  ir
"""

__version__ = "0.1.0"
