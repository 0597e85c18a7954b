"""How to reach the Kubernetes API: a kubeconfig file, or the in-cluster service account.

Only what a controller needs is read: the server URL, the CA (file or inline data, or
``insecure-skip-tls-verify``), and the credentials (a bearer token, a token file, or a client
certificate and key). Exec plugins and auth providers are not supported: a clear
:class:`~albingress.diagnostics.ConfigError` says so.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from albingress.diagnostics import ConfigError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Where the API server is and how to authenticate to it."""

    server: str  # "https://10.0.0.1:443" or "http://127.0.0.1:PORT"; no trailing "/"
    token: str = ""  # bearer token; "" when none
    token_file: str = ""  # re-read on each connection (projected tokens rotate)
    ca_file: str = ""  # PEM bundle; "" = system roots
    ca_data: bytes = b""  # PEM bytes from the kubeconfig's certificate-authority-data
    client_cert: str = ""  # PEM file
    client_key: str = ""  # PEM file
    insecure: bool = False  # skip TLS verification (kubeconfig insecure-skip-tls-verify)
    namespace: str = "default"  # the context's (or the pod's) namespace

    def bearer(self) -> str:
        if self.token_file:
            try:
                return Path(self.token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read token file {self.token_file}: {exc}") from exc
        return self.token

    def headers(self) -> dict[str, str]:
        token = self.bearer()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``https`` servers; ``None`` for plain ``http``."""
        if not self.server.startswith("https://"):
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file or None)
        if self.ca_data:
            ctx.load_verify_locations(cadata=self.ca_data.decode("ascii"))
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key or None)
        return ctx


def in_cluster() -> ClusterConfig:
    """The pod's service account, as every in-cluster client reads it."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ConfigError("not in a cluster (KUBERNETES_SERVICE_HOST unset): pass --kubeconfig")
    if ":" in host:
        host = f"[{host}]"
    namespace_file = SERVICE_ACCOUNT / "namespace"
    namespace = (
        namespace_file.read_text(encoding="utf-8").strip() if namespace_file.exists() else ""
    )
    return ClusterConfig(
        server=f"https://{host}:{port}",
        token_file=str(SERVICE_ACCOUNT / "token"),
        ca_file=str(SERVICE_ACCOUNT / "ca.crt"),
        namespace=namespace or "default",
    )


def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(what)
            return body if isinstance(body, dict) else {}
    raise ConfigError(f"{path}: no {what} named {name!r}")


def _inline_file(data: str, suffix: str) -> str:
    """Write base64 ``data`` to a private temporary file (ssl loads certificates from files)."""
    fd, name = tempfile.mkstemp(prefix="albingress-kube-", suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64decode(data))
    return name


def load_kubeconfig(path: str | Path, context: str = "") -> ClusterConfig:
    """The cluster, user and namespace of ``context`` (default: the current context)."""
    path = Path(path).expanduser()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a kubeconfig")
    name = context or str(doc.get("current-context") or "")
    if not name:
        raise ConfigError(f"{path}: no current-context; pass a context")
    ctx = _named(doc.get("contexts"), name, "context", path)
    cluster = _named(doc.get("clusters"), str(ctx.get("cluster")), "cluster", path)
    user = _named(doc.get("users"), str(ctx.get("user")), "user", path) if ctx.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise ConfigError(f"{path}: exec and auth-provider credentials are not supported")
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: cluster {ctx.get('cluster')!r} has no http(s) server")
    base = path.parent

    def rel(value: Any) -> str:
        return str(base / str(value)) if value else ""

    ca_data = cluster.get("certificate-authority-data")
    cert = rel(user.get("client-certificate"))
    key = rel(user.get("client-key"))
    if user.get("client-certificate-data"):
        cert = _inline_file(str(user["client-certificate-data"]), ".crt")
    if user.get("client-key-data"):
        key = _inline_file(str(user["client-key-data"]), ".key")
    return ClusterConfig(
        server=server,
        token=str(user.get("token") or ""),
        token_file=rel(user.get("tokenFile")),
        ca_file=rel(cluster.get("certificate-authority")),
        ca_data=base64.b64decode(str(ca_data)) if ca_data else b"",
        client_cert=cert,
        client_key=key,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        namespace=str(ctx.get("namespace") or "default"),
    )
