"""Objects and processes for the Kubernetes-mode tests: manifests as dicts, a running controller.

The controller is a real ``python -m albingress controller`` process reading a kubeconfig that
points at the emulator (:mod:`tests.kubernetes.apiserver`) on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.harness import ROOT, AdminProcess, free_port, wait_until

CONTROLLER = "ingress.k8s.alibabacloud/alb"


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emu",
                "contexts": [
                    {
                        "name": "emu",
                        "context": {"cluster": "emu", "user": "u", "namespace": "albingress"},
                    }
                ],
                "clusters": [{"name": "emu", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "test-token"}}],
            }
        )
    )
    return path


def ingress_class(name: str = "alb", controller: str = CONTROLLER, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": controller, **spec},
    }


def service(name: str, ns: str = "default", port: int = 80, target: int = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"port": port, "targetPort": target, "protocol": "TCP"}]},
    }


def endpoint_slice(
    service_name: str, addresses: list[str], port: int, ns: str = "default", suffix: str = "a"
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-{suffix}",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"port": port, "protocol": "TCP", "name": ""}],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True}, "targetRef": {"name": f"pod-{a}"}}
            for a in addresses
        ],
    }


def ingress(
    name: str,
    host: str,
    backend: str,
    ns: str = "default",
    path: str = "/",
    port: int = 80,
    cls: str | None = "alb",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": path,
                            "pathType": "Prefix",
                            "backend": {"service": {"name": backend, "port": {"number": port}}},
                        }
                    ]
                },
            }
        ]
    }
    if cls is not None:
        spec["ingressClassName"] = cls
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
        "spec": spec,
    }


class Controller(AdminProcess):
    """``albingress controller`` against the emulator, on free loopback ports."""

    def __init__(
        self,
        workdir: Path,
        server: str,
        identity: str = "c1",
        workers: int = 1,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.kubeconfig = kubeconfig(workdir / f"kubeconfig-{identity}", server)
        self.port = free_port()
        self.admin = free_port()
        self.identity = identity
        self.workers = workers
        self.extra = extra
        self.log = workdir / f"controller-{identity}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        """Start the process; a port taken meanwhile by another process is retried with others."""
        for _ in range(3):
            self._spawn()
            if not wait:
                return
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    break
                try:
                    if self.admin_get("/healthz")[0] == 200:
                        return
                except (OSError, http.client.HTTPException):
                    pass
                time.sleep(0.05)
            else:
                raise AssertionError(
                    f"the controller is not healthy after 60 s:\n{self.log_text()[-3000:]}"
                )
            if "in use" not in self.log_text():
                raise AssertionError(f"the controller exited:\n{self.log_text()[-3000:]}")
            self.port, self.admin = free_port(), free_port()
        raise AssertionError("no free ports for the controller")

    def _spawn(self) -> None:
        cmd = [
            sys.executable, "-m", "albingress", "controller", "--kubeconfig", str(self.kubeconfig),
            "--listen", f"80=127.0.0.1:{self.port}", "--listen", f"443=127.0.0.1:{free_port()}",
            "--admin", f"127.0.0.1:{self.admin}", "--state", str(self.workdir / "state" / "x"),
            "--workers", str(self.workers), "--vpc-cidr", "127.0.0.0/8",
            "--identity", self.identity, "--lease-duration", "2", "--renew-period", "0.3",
            "--retry-period", "0.2", "--status-interval", "0.5",
            "--publish-address", "127.0.0.1", "--access-log", "off", *self.extra,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        return super().stop(sig, timeout)

    def info(self) -> dict[str, Any]:
        status, body = self.admin_get("/api/v1/kubernetes")
        assert status == 200, body
        data: dict[str, Any] = json.loads(body)
        return data

    def get(self, host: str, path: str = "/", port: int | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def server_of(self, host: str, path: str = "/") -> str:
        status, body = self.get(host, path)
        return str(json.loads(body)["server"]) if status == 200 else f"HTTP {status}"

    def wait_server(self, host: str, want: str, path: str = "/", timeout: float = 20) -> None:
        wait_until(lambda: self.server_of(host, path) == want, timeout, f"{host}{path} -> {want}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def forward_ingress(
    name: str, host: str, group_ids: list[str], ns: str = "default"
) -> dict[str, Any]:
    """An Ingress whose only path forwards to server groups by ID (the actions annotation)."""
    groups = [{"ServerGroupID": g, "Weight": 100 // len(group_ids)} for g in group_ids]
    action = [{"Type": "ForwardGroup", "ForwardConfig": {"ServerGroups": groups}}]
    obj = ingress(
        name,
        host,
        "fwd",
        ns,
        annotations={"alb.ingress.kubernetes.io/actions.fwd": json.dumps(action)},
    )
    backend = obj["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    backend["service"]["port"] = {"name": "use-annotation"}
    return obj


def server_group(
    group_id: str, servers: list[tuple[str, int]], ns: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": "albingress.dev/v1alpha1",
        "kind": "ServerGroup",
        "metadata": {"name": group_id, "namespace": ns},
        "spec": {
            "serverGroupId": group_id,
            "serverGroupName": "group-" + group_id[4:],
            "serverGroupType": "Ip",
            "servers": [
                {"serverType": "Ip", "serverId": a, "serverIp": a, "port": p, "weight": 100}
                for a, p in servers
            ],
        },
    }
