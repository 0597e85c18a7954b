"""A small Kubernetes API client: the few verbs a controller uses, async (aiohttp) and blocking.

Why our own client rather than kubernetes-asyncio, lightkube or kr8s: a controller needs list
with pagination, watch streams with bookmarks and ``410 Gone``, merge patches, status
subresources and optimistic concurrency, on plain JSON (the compiler reads raw objects, not
generated models). That is a few hundred lines over aiohttp, typed end to end, with every
failure mapped to our own exceptions; the generated clients bring thousands of model classes we
would convert back to dicts, and hide the watch protocol we must handle exactly.

Exceptions::

    KubeError                  any failure talking to the API server (an AlbingressError)
    ├── ApiStatusError         the server answered an error Status (status, reason, message)
    │   └── GoneError          410: the resourceVersion is too old; list again
    └── KubeTransportError     unreachable, timed out, or the answer is not JSON we can read
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

from albingress.diagnostics import AlbingressError
from albingress.sources.kube.config import ClusterConfig

MERGE_PATCH = "application/merge-patch+json"


class KubeError(AlbingressError):
    """Talking to the Kubernetes API failed."""


class ApiStatusError(KubeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class GoneError(ApiStatusError):
    """410 Gone / Expired: the resourceVersion asked for is no longer in the watch cache."""


class KubeTransportError(KubeError):
    """The API server cannot be reached, timed out, or sent something that is not JSON."""


@dataclass(frozen=True, slots=True)
class Resource:
    """One API resource: where its URLs are and what its objects are called."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "", subresource: str = "") -> str:
        """The URL path of the collection (all namespaces when ``namespace`` is ""), or one object."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


INGRESS = Resource("networking.k8s.io", "v1", "ingresses", "Ingress")
INGRESS_CLASS = Resource("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False)
ALB_CONFIG = Resource("alibabacloud.com", "v1", "albconfigs", "AlbConfig", False)
SERVICE = Resource("", "v1", "services", "Service")
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
ENDPOINT_SLICE = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
SECRET = Resource("", "v1", "secrets", "Secret")
SERVER_GROUP = Resource("albingress.dev", "v1alpha1", "servergroups", "ServerGroup")
EVENT = Resource("", "v1", "events", "Event")
LEASE = Resource("coordination.k8s.io", "v1", "leases", "Lease")


def _status_error(status: int, body: bytes) -> ApiStatusError:
    reason, message = "", body[:200].decode("utf-8", "replace")
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            reason = str(doc.get("reason") or "")
            message = str(doc.get("message") or message)
    except ValueError:
        pass
    cls = GoneError if status == 410 else ApiStatusError
    return cls(status, reason or http.client.responses.get(status, ""), message)


def _decode(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise KubeTransportError(f"{what}: the answer is not JSON") from exc
    if not isinstance(doc, dict):
        raise KubeTransportError(f"{what}: the answer is not a JSON object")
    return doc


class KubeClient:
    """Async verbs over one aiohttp session; create it inside the running loop."""

    def __init__(self, config: ClusterConfig, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        self._ssl: ssl.SSLContext | bool = config.ssl_context() or False
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
                headers={"Accept": "application/json", "User-Agent": "albingress"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One call; the decoded JSON object, or :class:`KubeError`."""
        url = self.config.server + path
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.config.headers(), "Content-Type": content_type}
        what = f"{method} {path}"
        try:
            async with self._client().request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise KubeTransportError(f"{what}: {exc or type(exc).__name__}") from exc
        if status >= 400:
            raise _status_error(status, raw)
        return _decode(raw, what)

    async def list(
        self, resource: Resource, namespace: str = "", params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Every object, following ``continue`` tokens; one list body with all items."""
        items: list[Any] = []
        query = {"limit": "500", **(params or {})}
        while True:
            page = await self.request("GET", resource.path(namespace), params=query)
            got = page.get("items")
            if not isinstance(got, list):
                raise KubeTransportError(f"list {resource.plural}: no items in the answer")
            items.extend(got)
            meta = page.get("metadata") if isinstance(page.get("metadata"), dict) else {}
            token = str(meta.get("continue") or "") if meta else ""
            if not token:
                return {"metadata": meta or {}, "items": items}
            query = {**query, "continue": token}

    async def watch(
        self,
        resource: Resource,
        namespace: str,
        resource_version: str,
        timeout_seconds: int,
        params: dict[str, str] | None = None,
        read_timeout: float = 0.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch stream's events, one decoded JSON object a line, until the server ends it.

        ``read_timeout`` (default 120 s) bounds the silence between two lines: a connection
        that a middlebox dropped without a reset is noticed, and the stream simply ends (the
        caller watches again from its last version; API servers send a bookmark about every
        minute, so a live stream is never that quiet).
        """
        query = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
            **({"resourceVersion": resource_version} if resource_version else {}),
            **(params or {}),
        }
        url = f"{self.config.server}{resource.path(namespace)}?{urlencode(query)}"
        silence = read_timeout or 120.0
        what = f"watch {resource.plural}"
        try:
            async with self._client().get(
                url,
                headers=self.config.headers(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=silence),
            ) as resp:
                if resp.status >= 400:
                    raise _status_error(resp.status, await resp.read())
                while True:
                    try:
                        line = await resp.content.readline()
                    except TimeoutError:
                        return  # silent too long: end here, the caller watches again
                    if not line:
                        return
                    if line.strip():
                        yield _decode(line, what)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise KubeTransportError(f"{what}: {exc or type(exc).__name__}") from exc


class SyncKubeClient:
    """Blocking verbs (http.client), for callers that are not coroutines (the server-group store).

    One connection per call: these are rare writes, and a fresh connection never inherits a
    half-read answer from an earlier failure.
    """

    def __init__(self, config: ClusterConfig, timeout: float = 5.0) -> None:
        self.config = config
        self.timeout = timeout
        parts = urlsplit(config.server)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._ssl = config.ssl_context()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        url = path + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {
            **self.config.headers(),
            "Content-Type": content_type,
            "Accept": "application/json",
        }
        what = f"{method} {path}"
        try:
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            raise KubeTransportError(f"{what}: {exc or type(exc).__name__}") from exc
        finally:
            conn.close()
        if status >= 400:
            raise _status_error(status, raw)
        return _decode(raw, what)
