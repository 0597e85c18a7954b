"""``albingress serve``: the embedded load balancer, configured from a directory of manifests.

One supervisor process runs everything but the data plane:

- the sources: the manifests directory (polled, see :mod:`albingress.sources.watch`) and the
  server-group store (SQLite, written through the API);
- the compiler, on every change; an Ingress whose new version has errors keeps its last good
  version (the diagnostics are logged), so one broken edit never takes rules away;
- the active health checks, whose verdicts go to every worker;
- the admin server: ``/healthz``, ``/api/v1/config``, ``/metrics``, ``/api/v1/traffic``, the
  live page at ``GET /`` and the ALB OpenAPI at ``/`` (see :mod:`albingress.api.page`).

The workers (see :mod:`albingress.dataplane.supervisor`) get each new IR and swap it in atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albingress import ir
from albingress.api.auth import AccessKey, load_or_create_credentials
from albingress.api.metrics import ConfigState
from albingress.api.openapi import mount
from albingress.api.page import mount_observability
from albingress.api.server import AdminRequest, AdminResponse, AdminServer, Handler
from albingress.compile.compiler import CompileOptions, CompileResult, compile_snapshot
from albingress.dataplane.settings import ProxySettings
from albingress.dataplane.supervisor import Supervisor
from albingress.diagnostics import ConfigError, Diagnostic
from albingress.model.servergroup import NetworkSettings
from albingress.servergroups.health import HealthChecker
from albingress.servergroups.sqlite import SqliteStore
from albingress.servergroups.store import ServerGroupStore
from albingress.sources import Source
from albingress.sources.snapshot import K8sObject, Snapshot, with_api_groups
from albingress.sources.watch import FilesSource

log = logging.getLogger("albingress.serve")

DEFAULT_LISTEN = {80: ("127.0.0.1", 8080), 443: ("127.0.0.1", 8443)}
DEFAULT_ADMIN = ("127.0.0.1", 9080)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Settings of the load balancer, whatever its source (files or Kubernetes)."""

    manifests: Path = Path(".")  # the files source's directory (serve only)
    listen: Mapping[int, tuple[str, int]] = field(default_factory=lambda: dict(DEFAULT_LISTEN))
    admin: tuple[str, int] = DEFAULT_ADMIN
    state: Path = Path(".albingress/state.db")
    workers: int = 0  # 0: one per core
    network: NetworkSettings = field(default_factory=NetworkSettings)
    credentials: Path | None = None
    proxy: ProxySettings = field(default_factory=ProxySettings)
    metrics: bool = True  # workers count requests for /metrics and the live page
    access_log: str | None = None  # None: off; "-": standard output; else a file path


def parse_listen(values: Sequence[str]) -> dict[int, tuple[str, int]]:
    """``PORT=HOST:PORT`` pairs; the defaults for ports not named."""
    result = dict(DEFAULT_LISTEN)
    for value in values:
        port_text, sep, address = value.partition("=")
        host, colon, local = address.rpartition(":")
        if not sep or not colon or not port_text.isdigit() or not local.isdigit():
            raise ConfigError(
                f"--listen {value!r}: expected PORT=HOST:PORT, like 80=127.0.0.1:8080"
            )
        result[int(port_text)] = (host.strip("[]") or "127.0.0.1", int(local))
    return result


def parse_address(value: str, flag: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit():
        raise ConfigError(f"{flag} {value!r}: expected HOST:PORT, like 127.0.0.1:9080")
    return host.strip("[]") or "127.0.0.1", int(port)


class Runtime:
    """Sources -> compiler -> workers and health checks; the state the admin API shows."""

    def __init__(
        self,
        options: ServeOptions,
        source: Source,
        store: ServerGroupStore,
        compile_options: CompileOptions | None = None,
    ) -> None:
        self.options = options
        self.source = source
        self.store = store
        self.compile_options = compile_options or CompileOptions(network=options.network)
        self.on_reload: list[Callable[[CompileResult, int], None]] = []
        self.version = 0
        self.result: CompileResult | None = None
        self.reloaded_at = 0.0
        self.reload_ok = True  # False after a reload that raised (the last good config serves)
        self.last_good: dict[tuple[str, str, str], K8sObject] = {}
        self._logged: set[Diagnostic] = set()
        self.supervisor: Supervisor | None = None
        self.health: HealthChecker | None = None

    # ----------------------------------------------------------------- compile

    def snapshot(self) -> Snapshot:
        return with_api_groups(self.source.snapshot(), self.store.objects())

    def compile(self) -> CompileResult:
        snap = self.snapshot()
        options = self.compile_options
        result = compile_snapshot(snap, options)
        # An Ingress whose current version has errors keeps its last good version.
        current = {o.key: o for o in snap.objects if o.kind == "Ingress"}
        substitutes = []
        for failed_key in result.failed:
            ns, name = failed_key.split("/", 1)
            obj_key = ("Ingress", ns, name)
            good = self.last_good.get(obj_key)
            if good is not None and good.body != current[obj_key].body:
                substitutes.append(good)
        if substitutes:
            kept = compile_snapshot(snap.merged(substitutes), options)
            for obj in substitutes:
                log.warning(
                    "Ingress %s/%s has errors: its last good version keeps serving",
                    obj.namespace,
                    obj.name,
                )
            result = CompileResult(kept.ir, result.diagnostics, kept.served, result.failed)
        failed = set(result.failed)
        last_good: dict[tuple[str, str, str], K8sObject] = {}
        for key, obj in current.items():
            if f"{key[1]}/{key[2]}" not in failed:
                last_good[key] = obj
            elif key in self.last_good:
                last_good[key] = self.last_good[key]
        self.last_good = last_good
        return result

    def reload(self) -> None:
        started = time.perf_counter()
        result = self.compile()
        changed = self.result is None or result.ir != self.result.ir
        self._log_diagnostics(result.diagnostics)
        self.result = result
        self.reloaded_at = time.time()
        self.reload_ok = True
        if not changed:
            return
        self.version += 1
        if self.supervisor is not None:
            self.supervisor.publish_config(result.ir, self.version)
        if self.health is not None:
            self.health.update(result.ir)
        for callback in self.on_reload:
            callback(result, self.version)
        rules = sum(len(lst.rules) for lst in result.ir.listeners)
        log.info(
            "config v%d: %d rules, %d server groups, %d errors (compiled in %.1f ms)",
            self.version,
            rules,
            len(result.ir.server_groups),
            sum(1 for d in result.diagnostics if d.is_error),
            (time.perf_counter() - started) * 1000,
        )

    def _log_diagnostics(self, diagnostics: Sequence[Diagnostic]) -> None:
        current = set(diagnostics)
        for d in diagnostics:
            if d not in self._logged:
                (log.error if d.is_error else log.warning)("%s", d.line())
        self._logged = current

    # ----------------------------------------------------------------- admin views

    def in_use(self, group_id: str) -> list[str]:
        if self.result is None:
            return []
        names = []
        for listener in self.result.ir.listeners:
            for rule in listener.rules:
                for action in rule.actions:
                    ids: tuple[str, ...] = ()
                    if isinstance(action, ir.ForwardAction):
                        ids = tuple(g.group_id for g in action.groups)
                    elif isinstance(action, ir.TrafficMirrorAction):
                        ids = action.group_ids
                    if group_id in ids:
                        names.append(rule.name)
        return sorted(set(names))

    def server_status(self, group_id: str, server: Mapping[str, Any]) -> str:
        if self.health is None:
            return "Available"
        status = self.health.status(
            group_id, str(server.get("serverIp")), int(server.get("port") or 0)
        )
        return "Available" if status == "Unused" else status

    def config_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "version": self.version,
            "reloadedAt": self.reloaded_at,
            "ir": ir.to_json(result.ir) if result else None,
            "failedIngresses": list(result.failed) if result else [],
            "unhealthy": sorted(self.health.unhealthy()) if self.health else [],
            "diagnostics": [d.to_json() for d in result.diagnostics] if result else [],
        }

    def metrics_state(self) -> ConfigState:
        result = self.result
        return ConfigState(
            config=result.ir if result else None,
            version=self.version,
            reloaded_at=self.reloaded_at,
            reload_ok=self.reload_ok,
            unhealthy=self.health.unhealthy() if self.health else frozenset(),
            failed=result.failed if result else (),
            diagnostics=result.diagnostics if result else (),
            workers=len(self.supervisor.worker_pids()) if self.supervisor else 0,
        )


async def _json_response(data: Any, status: int = 200) -> AdminResponse:
    return AdminResponse(status, "application/json", json.dumps(data, indent=1).encode())


async def run(options: ServeOptions) -> int:
    """``albingress serve``: the files source and the SQLite store."""
    state_dir = options.state.parent
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = SqliteStore(options.state)
    try:
        keys, key_path, created = load_or_create_credentials(options.credentials, state_dir)
        if created:
            log.warning("created an AccessKey pair for the server-group API in %s", key_path)
        source = FilesSource([options.manifests])
        return await run_balancer(options, Runtime(options, source, store), keys)
    finally:
        store.close()


async def run_balancer(
    options: ServeOptions,
    runtime: Runtime,
    keys: tuple[AccessKey, ...],
    routes: Sequence[tuple[str, str, Handler]] = (),
) -> int:
    """Run the supervisor, workers, health checks and admin server for ``runtime`` until a signal.

    Shared by ``serve`` and ``controller``: only the source and the store differ.
    """
    workers = options.workers or os.cpu_count() or 1
    supervisor = Supervisor(
        options.listen,
        workers,
        options.proxy,
        metrics=options.metrics,
        access_log=options.access_log,
    )
    runtime.supervisor = supervisor
    health = HealthChecker(supervisor.publish_health)
    runtime.health = health
    admin = AdminServer(*options.admin)

    first_config_live = asyncio.Event()

    async def healthz(_: AdminRequest) -> AdminResponse:
        live = first_config_live.is_set() and supervisor.worker_pids()
        return AdminResponse(200 if live else 503, "text/plain", b"ok\n" if live else b"starting\n")

    async def config(_: AdminRequest) -> AdminResponse:
        return await _json_response(runtime.config_json())

    admin.route("GET", "/healthz", healthz)
    admin.route("GET", "/api/v1/config", config)
    for method, path, handler in routes:
        admin.route(method, path, handler)
    api = mount(admin, runtime.store, keys, options.network, runtime.in_use, runtime.server_status)
    mount_observability(admin, supervisor.collect_metrics, runtime.metrics_state, api.handle)

    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def mark_changed() -> None:
        loop.call_soon_threadsafe(changed.set)

    runtime.store.subscribe(mark_changed)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    runtime.reload()
    await supervisor.start()
    await admin.start()
    if await supervisor.wait_applied(runtime.version, timeout=30):
        first_config_live.set()
    else:
        log.error("the workers did not take the first config within 30 s")
    tasks = [
        asyncio.create_task(health.run(), name="health-checks"),
        asyncio.create_task(runtime.source.run(mark_changed), name="source"),
    ]
    host, port = admin.bound
    log.info(
        "serving %s: listeners %s, admin http://%s:%d, %d workers",
        runtime.source.description,
        ", ".join(f"{p}={h}:{lp}" for p, (h, lp) in sorted(supervisor.bound.items())),
        host,
        port,
        workers,
    )
    stopping = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            waiting = asyncio.create_task(changed.wait())
            await asyncio.wait({waiting, stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if changed.is_set() and not stop.is_set():
                changed.clear()
                try:
                    runtime.reload()
                except Exception:  # a bug must not stop serving the last good config
                    runtime.reload_ok = False
                    runtime.reloaded_at = time.time()
                    log.exception("reload failed; the last good config keeps serving")
    finally:
        log.info("stopping: draining in-flight requests")
        stopping.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await admin.stop()
        await supervisor.stop()
    return 0
