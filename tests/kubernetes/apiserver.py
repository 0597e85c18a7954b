"""A small Kubernetes API server emulator speaking the real HTTP protocol, on 127.0.0.1.

Why not kmock's emulator: its resourceVersion is a constant, its watch replays every object
instead of the events after a version, and it has no bookmarks and no ``410 Gone``; those are
exactly what a controller must get right. This one keeps one global resourceVersion counter (as
etcd does), an event history per resource that can be compacted, and serves:

- LIST ``GET /api/v1/[namespaces/NS/]PLURAL`` and ``/apis/G/V/...``: ``limit``/``continue``
  pagination, ``fieldSelector=type=...``; the collection's ``metadata.resourceVersion``;
- WATCH (``?watch=1``): a chunked stream of JSON lines; events after ``resourceVersion`` replayed
  from the history, then live; BOOKMARKs when ``allowWatchBookmarks=true``; ``410 Expired`` as an
  ERROR event when the version was compacted; ``timeoutSeconds`` honoured;
- GET, POST (409 AlreadyExists), PUT (409 Conflict on a stale ``resourceVersion``), PATCH
  (JSON merge patch), DELETE; ``/status`` subresources for kinds that have one.

Faults for tests: :meth:`drop_watches`, :meth:`compact`, :meth:`fail_next` (status code,
garbage, or hang), :meth:`pause` / :meth:`resume` (the port refuses connections).

The server runs its own event loop in a thread; tests call the methods below from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.kubernetes.apimodel import BY_KIND, BY_PATH, ApiError, Res, merge_patch, status_body


class _Watcher:
    """One open watch: events queued under the server's lock, a wake-up for the stream."""

    def __init__(self, res: Res, namespace: str, loop: asyncio.AbstractEventLoop) -> None:
        self.res = res
        self.namespace = namespace
        self.loop = loop
        self.pending: collections.deque[dict[str, Any] | None] = collections.deque()
        self.wakeup = asyncio.Event()

    def push(self, event: dict[str, Any] | None) -> None:
        self.pending.append(event)
        self.loop.call_soon_threadsafe(self.wakeup.set)


class ApiServer:
    """The emulator; ``with ApiServer() as api: api.url ...``."""

    def __init__(self, bookmark_interval: float = 0.5, tls: ssl.SSLContext | None = None) -> None:
        self.bookmark_interval = bookmark_interval
        self.tls = tls
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name)
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self.rv = 1000
        self.compacted = 0  # watches from a version below this get 410
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.queries: list[dict[str, str]] = []  # query parameters of every request
        self.missing: set[str] = set()
        self.paused = False  # while paused, a request on a kept-alive connection is cut  # kinds answered 404, as if their CRD were not installed
        self._lock = threading.RLock()
        self._watchers: list[_Watcher] = []
        self._faults: list[tuple[Callable[[str, str], bool], str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

    # ----------------------------------------------------------------- life

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.tls
        )
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def pause(self) -> None:
        """The API server goes away: the port refuses connections, open watches end."""
        self.paused = True
        if self._site is not None:
            self._call(self._site.stop())
            self._site = None
        self.drop_watches()
        self._call(self._close_connections())

    async def _close_connections(self) -> None:
        if self._runner is not None and self._runner.server is not None:
            for handler in self._runner.server.connections:
                handler.force_close()

    def resume(self) -> None:
        self.paused = False
        self._call(self._listen())

    # ----------------------------------------------------------------- faults

    def drop_watches(self) -> None:
        """End every open watch stream (as a load balancer in front of the server would)."""
        with self._lock:
            watchers, self._watchers = self._watchers, []
        for w in watchers:
            w.push(None)

    def compact(self) -> None:
        """Forget the event history: watches from an older version get 410 Gone."""
        with self._lock:
            self.compacted = self.rv
            self.history.clear()

    def fail_next(
        self, count: int, mode: str = "500", match: Callable[[str, str], bool] | None = None
    ) -> None:
        """The next ``count`` matching requests fail: mode "500", "503", "garbage" or "hang"."""
        with self._lock:
            for _ in range(count):
                self._faults.append((match or (lambda _m, _p: True), mode))

    # ----------------------------------------------------------------- state

    def _emit(self, res: Res, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self.history.setdefault(res.kind, []).append((self.rv, kind, event["object"]))
        ns = obj["metadata"].get("namespace", "")
        for w in list(self._watchers):
            if w.res is res and (not w.namespace or w.namespace == ns):
                w.push(event)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace (ignoring versions), like ``kubectl apply``."""
        res = BY_KIND[obj["kind"]]
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "default") if res.namespaced else ""
        with self._lock:
            if (res.kind, ns, meta["name"]) in self.objects:
                old = self.objects[(res.kind, ns, meta["name"])]
                body = copy.deepcopy(obj)
                body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                return self._write(res, ns, meta["name"], body, "PUT")
            return self._create(res, ns, copy.deepcopy(obj))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._delete(BY_KIND[kind], namespace if BY_KIND[kind].namespaced else "", name)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self.objects.get((kind, namespace if BY_KIND[kind].namespaced else "", name))
            return copy.deepcopy(found) if found else None

    def list(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for k, o in sorted(self.objects.items()) if k[0] == kind]

    def _create(self, res: Res, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["name"] = name
        if not isinstance(name, str) or not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        key = (res.kind, ns, name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res.plural} "{name}" already exists')
        self.rv += 1
        body["apiVersion"], body["kind"] = res.api_version, res.kind
        if res.namespaced:
            meta["namespace"] = ns
        meta.update(
            resourceVersion=str(self.rv),
            uid=str(uuid.uuid4()),
            creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self.objects[key] = body
        self._emit(res, "ADDED", body)
        return copy.deepcopy(body)

    def _write(
        self, res: Res, ns: str, name: str, body: dict[str, Any], how: str, sub: str = ""
    ) -> dict[str, Any]:
        key = (res.kind, ns, name)
        old = self.objects.get(key)
        if old is None:
            raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
        if how == "PATCH":
            new = merge_patch(old, body)
        else:
            want = (body.get("metadata") or {}).get("resourceVersion")
            if want and want != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {res.plural} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                )
            new = copy.deepcopy(body)
        if res.status:  # the main resource ignores status; /status changes only status
            if sub == "status":
                new = {**copy.deepcopy(old), "status": new.get("status")}
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "namespace", "name"):
            if fixed in old["metadata"]:
                meta[fixed] = old["metadata"][fixed]
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return copy.deepcopy(old)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[key] = new
        self._emit(res, "MODIFIED", new)
        return copy.deepcopy(new)

    def _delete(self, res: Res, ns: str, name: str) -> dict[str, Any]:
        old = self.objects.pop((res.kind, ns, name), None)
        if old is None:
            raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
        self.rv += 1
        old = copy.deepcopy(old)
        old["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(res, "DELETED", old)
        return old

    # ----------------------------------------------------------------- HTTP

    @staticmethod
    def _route(path: str) -> tuple[Res, str, str, str]:
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find {path}")
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        res = BY_PATH.get((group, version, rest[0]))
        if res is None:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource {path}"
            )
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        return res, ns, name, sub

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.paused and request.transport is not None:
            request.transport.abort()
            return web.Response(status=503)
        with self._lock:
            self.requests.append((request.method, request.path))
            self.queries.append(dict(request.query))
            fault = next((f for f in self._faults if f[0](request.method, request.path)), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None:
            mode = fault[1]
            if mode == "hang":
                await asyncio.sleep(3600)
            if mode == "garbage":
                return web.Response(
                    status=200, body=b"\x00<html>not json", content_type="text/html"
                )
            return web.json_response(
                status_body(int(mode), "InternalError", "injected"), status=int(mode)
            )
        try:
            res, ns, name, sub = self._route(request.path)
            if res.kind in self.missing:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            q = request.query
            if request.method == "GET" and q.get("watch") in ("1", "true") and not name:
                return await self._watch(request, res, ns)
            body: Any = None
            raw = await request.read()
            if request.method in ("POST", "PUT", "PATCH") or raw:
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"invalid JSON: {exc}") from exc
            with self._lock:
                result = self._dispatch(request.method, res, ns, name, sub, body, q)
            return web.json_response(result, status=201 if request.method == "POST" else 200)
        except ApiError as exc:
            return web.json_response(exc.body, status=exc.code)

    def _dispatch(
        self, method: str, res: Res, ns: str, name: str, sub: str, body: Any, q: Any
    ) -> dict[str, Any]:
        if method == "GET" and not name:
            return self._list(res, ns, q)
        if method == "GET":
            obj = self.objects.get((res.kind, ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
            return copy.deepcopy(obj)
        if method == "POST" and not name:
            if res.namespaced:
                body.setdefault("metadata", {})["namespace"] = ns or body.get("metadata", {}).get(
                    "namespace", "default"
                )
            return self._create(
                res, (body["metadata"].get("namespace", "") if res.namespaced else ""), body
            )
        if method in ("PUT", "PATCH") and name:
            return self._write(res, ns, name, body, method, sub)
        if method == "DELETE" and name:
            want = ((body or {}).get("preconditions") or {}).get("resourceVersion")
            current = self.objects.get((res.kind, ns, name))
            if want and current and current["metadata"]["resourceVersion"] != want:
                raise ApiError(409, "Conflict", f'precondition failed for {res.plural} "{name}"')
            self._delete(res, ns, name)
            return {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _matching(self, res: Res, ns: str, q: Any) -> list[dict[str, Any]]:
        selector = q.get("fieldSelector", "")
        out = []
        for (kind, ons, _), obj in sorted(self.objects.items()):
            if kind != res.kind or (ns and ons != ns):
                continue
            if selector.startswith("type=") and obj.get("type") != selector[5:]:
                continue
            out.append(obj)
        return out

    def _list(self, res: Res, ns: str, q: Any) -> dict[str, Any]:
        items = self._matching(res, ns, q)
        start = int(q.get("continue") or 0)
        limit = int(q.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": meta,
            "items": copy.deepcopy(page),
        }

    async def _watch(self, request: web.Request, res: Res, ns: str) -> web.StreamResponse:
        q = request.query
        since = int(q.get("resourceVersion") or 0)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        timeout = float(q.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        watcher = _Watcher(res, ns, self._loop)
        gone: dict[str, Any] | None = None
        with self._lock:
            if since and since < self.compacted:
                gone = status_body(
                    410, "Expired", f"too old resource version: {since} ({self.compacted})"
                )
            elif since:
                for v, t, o in self.history.get(res.kind, []):
                    if v > since and (not ns or o["metadata"].get("namespace") == ns):
                        watcher.pending.append({"type": t, "object": copy.deepcopy(o)})
            else:
                for o in self._matching(res, ns, q):
                    watcher.pending.append({"type": "ADDED", "object": copy.deepcopy(o)})
            if gone is None:
                self._watchers.append(watcher)
        if gone is not None:
            await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return resp
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not watcher.pending:
                    watcher.wakeup.clear()
                    left = deadline - time.monotonic()
                    try:
                        await asyncio.wait_for(
                            watcher.wakeup.wait(), min(left, self.bookmark_interval)
                        )
                    except TimeoutError:
                        if bookmarks:
                            await resp.write(self._bookmark(res, watcher))
                        continue
                batch = []
                with self._lock:
                    while watcher.pending:
                        batch.append(watcher.pending.popleft())
                for event in batch:
                    if event is None:
                        return resp
                    await resp.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
        return resp

    def _bookmark(self, res: Res, watcher: _Watcher) -> bytes:
        """A BOOKMARK at the newest version this watcher has been sent every event up to."""
        with self._lock:
            version = self.rv if not watcher.pending else 0
        if not version:
            return b""
        mark = {
            "type": "BOOKMARK",
            "object": {
                "kind": res.kind,
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(version)},
            },
        }
        return json.dumps(mark).encode() + b"\n"
