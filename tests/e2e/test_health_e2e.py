"""Active health checks through ``albingress serve``: a failing server leaves rotation within
interval x unhealthy-threshold (+ one interval) and rejoins after the healthy threshold."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.harness import Backends, Serve, wait_until

pytestmark = pytest.mark.e2e

GROUP = """\
apiVersion: albingress.dev/v1alpha1
kind: ServerGroup
metadata: {name: checked}
spec:
  serverGroupId: sgp-checked
  serverGroupType: Ip
  healthCheckConfig:
    healthCheckEnabled: true
    healthCheckPath: /healthz
    healthCheckMethod: GET
    healthCheckCodes: [http_2xx]
    healthCheckInterval: 1
    healthCheckTimeout: 1
    healthyThreshold: 2
    unhealthyThreshold: 2
  servers:
    - {serverIp: 127.0.6.1, port: 8080}
    - {serverIp: 127.0.6.2, port: 8080}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: checked
  annotations:
    alb.ingress.kubernetes.io/actions.fwd: '[{"Type": "ForwardGroup", "ForwardConfig": {"ServerGroups": [{"ServerGroupID": "sgp-checked"}]}}]'
spec:
  ingressClassName: alb
  rules:
  - host: h.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: fwd, port: {name: use-annotation}}}}
"""


def spread(serve: Serve, n: int = 20) -> Counter[str]:
    return Counter(serve.server_of("h.example.com", f"/{i}") for i in range(n))


def test_unhealthy_server_leaves_and_rejoins_rotation(tmp_path: Path) -> None:
    steady = Backends({"one": ("127.0.6.1", 8080)})
    flaky = Backends({"two": ("127.0.6.2", 8080)})
    serve = Serve(tmp_path, workers=1)
    try:
        serve.write("group.yaml", GROUP)
        serve.start()
        assert spread(serve) == {"one": 10, "two": 10}

        flaky.proc.send_signal(signal.SIGUSR1)  # /healthz now answers 503
        failed_at = time.monotonic()
        wait_until(lambda: spread(serve, 4) == {"one": 4}, 10, "the failing server to leave")
        left = time.monotonic() - failed_at
        print(f"left rotation after {left:.2f} s")
        assert left <= 1 * 2 + 1 + 0.5, f"left rotation after {left:.2f} s"  # interval*2 + interval
        assert any(u.endswith("127.0.6.2:8080") for u in serve.config()["unhealthy"])

        flaky.proc.send_signal(signal.SIGUSR1)  # healthy again
        healed_at = time.monotonic()
        wait_until(lambda: "two" in spread(serve, 4), 10, "the server to rejoin")
        back = time.monotonic() - healed_at
        print(f"rejoined after {back:.2f} s")
        assert back <= 1 * 2 + 1 + 0.5, f"rejoined after {back:.2f} s"
        assert serve.config()["unhealthy"] == []
    finally:
        serve.stop()
        steady.stop()
        flaky.stop()
