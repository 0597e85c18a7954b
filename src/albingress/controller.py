"""``albingress controller``: the load balancer configured from the Kubernetes API.

The same supervisor, workers, health checks and admin API as ``serve`` (see
:func:`albingress.serve.run_balancer`), with two parts swapped: the source is the Kubernetes API
(:mod:`albingress.sources.kube`, list + watch) and the server-group store is the ServerGroup custom
resource (:mod:`albingress.servergroups.crstore`). Only Ingresses of an IngressClass whose
controller is ``ingress.k8s.alibabacloud/alb`` (or with the legacy annotation) are served.

Endpoint changes take a fast path: when only EndpointSlices/Endpoints of Services the rules use
have changed, the last compiled IR is kept and only those Services' groups get new servers
(``dataclasses.replace``), without compiling the rules again.

Every replica serves traffic; the one holding the Lease writes back what users look for:
``status.loadBalancer.ingress`` on each served Ingress, Events (``FailedBuildModel`` with the
diagnostics, ``SuccessfullyReconciled``), and each ServerGroup's ``status`` (servers and health).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albingress import ir
from albingress.api.auth import load_or_create_credentials
from albingress.api.server import AdminRequest, AdminResponse
from albingress.compile.compiler import CompileOptions, CompileResult
from albingress.compile.services import ServiceIndex
from albingress.diagnostics import Diagnostic
from albingress.flags import add_balancer_flags, balancer_options
from albingress.serve import Runtime, ServeOptions, run_balancer
from albingress.servergroups.crstore import CustomResourceStore
from albingress.servergroups.store import ServerGroupStore
from albingress.sources.kube import (
    ClusterConfig,
    KubeClient,
    KubeError,
    KubernetesSource,
    SyncKubeClient,
    in_cluster,
    load_kubeconfig,
)
from albingress.sources.kube.client import INGRESS, SERVER_GROUP, SERVICE
from albingress.sources.kube.events import record_event
from albingress.sources.kube.lease import LeaderElector
from albingress.sources.kube.source import SERVICE_NAME_LABEL, Changes
from albingress.sources.snapshot import K8sObject, Snapshot

log = logging.getLogger("albingress.controller")


@dataclass(frozen=True, slots=True)
class ControllerOptions:
    """Settings of ``albingress controller`` on top of the load balancer's own."""

    serve: ServeOptions = field(default_factory=ServeOptions)
    kubeconfig: Path | None = None  # None: in-cluster service account
    context: str = ""  # kubeconfig context; "" = current
    namespaces: tuple[str, ...] = ()  # () = every namespace
    ingress_class: str = "alb"
    publish_address: tuple[str, ...] = ()  # IPs or host names written to Ingress status
    publish_service: str = ""  # "ns/name" of the Service whose address is written instead
    election_namespace: str = ""  # "" = the pod's (or the kubeconfig context's) namespace
    election_name: str = "albingress-leader"
    identity: str = ""  # "" = POD_NAME or host name + pid
    lease_duration: float = 15.0  # seconds
    renew_period: float = 5.0  # seconds
    retry_period: float = 2.0  # seconds
    servergroup_namespace: str = ""  # where API-created ServerGroups live; "" = election ns
    status_interval: float = 5.0  # seconds between status passes (health changes)
    sync_timeout: float = 60.0  # seconds to wait for the first LIST of every kind
    endpoints: bool = False  # also watch the older Endpoints objects


def parse_group_id(group_id: str) -> tuple[str, str, int] | None:
    """(namespace, service, port) of a Service group id ``svc:NS/NAME:PORT``."""
    if not group_id.startswith("svc:"):
        return None
    rest, _, port = group_id[4:].rpartition(":")
    namespace, _, name = rest.partition("/")
    return (namespace, name, int(port)) if port.isdigit() and name else None


class ControllerRuntime(Runtime):
    """The serve runtime over the Kubernetes source, with the endpoints-only fast path."""

    def __init__(
        self,
        options: ServeOptions,
        source: KubernetesSource,
        store: ServerGroupStore,
        compile_options: CompileOptions,
    ) -> None:
        super().__init__(options, source, store, compile_options)
        self.kube = source
        self.full_reloads = 0
        self.fast_reloads = 0
        self.last_reload_ms = 0.0  # time spent building the last config
        self.last_latency_ms = 0.0  # first event of the burst -> config published
        self.last_publish_ms = 0.0  # handing the last fast-path config to the workers

    def snapshot(self) -> Snapshot:
        # ServerGroups (created through the API or with kubectl) are watched by the source.
        return self.kube.snapshot()

    def reload(self) -> None:
        changes = self.kube.take_changes()
        started = time.perf_counter()
        if not (changes.endpoints_only and self.result is not None and self.fast_path(changes)):
            super().reload()
            self.full_reloads += 1
        now = time.perf_counter()
        self.last_reload_ms = (now - started) * 1000
        if changes.first_event:
            self.last_latency_ms = (now - changes.first_event) * 1000

    def fast_path(self, changes: Changes) -> bool:
        """New servers for the Services whose endpoints changed; False when a compile is needed."""
        assert self.result is not None
        wanted = changes.services

        def owned(ns: str, name: str, body: dict[str, Any]) -> bool:
            labels = (body.get("metadata") or {}).get("labels") or {}
            return (ns, labels.get(SERVICE_NAME_LABEL)) in wanted

        objects = [
            *self.kube.select("Service", lambda ns, name, _: (ns, name) in wanted),
            *self.kube.select("EndpointSlice", owned),
            *self.kube.select("Endpoints", lambda ns, name, _: (ns, name) in wanted),
        ]
        index = ServiceIndex(Snapshot(tuple(objects)))
        groups: list[ir.ServerGroup] = []
        changed: list[ir.ServerGroup] = []
        for group in self.result.ir.server_groups:
            where = parse_group_id(group.id) if group.source is ir.GroupSource.SERVICE else None
            if where is not None and where[:2] in wanted:
                port = index.resolve_port(*where)
                if isinstance(port, str) or not group.servers:
                    return False  # the Service or its port is gone, or had no endpoints
                servers = index.servers(where[0], where[1], port)
                if servers is None:
                    return False  # no endpoint objects at all: a diagnostic changes
                if servers != group.servers:
                    group = dataclasses.replace(group, servers=servers)
                    changed.append(group)
            groups.append(group)
        self.fast_reloads += 1
        if changed:
            new_ir = dataclasses.replace(self.result.ir, server_groups=tuple(groups))
            self.publish(dataclasses.replace(self.result, ir=new_ir), changed)
        return True

    def publish(self, result: CompileResult, changed: list[ir.ServerGroup]) -> None:
        """Hand a config whose ``changed`` groups have new servers to the workers (those groups
        alone) and to the health checks, without compiling."""
        self.result = result
        self.reloaded_at = time.time()
        self.version += 1
        started = time.perf_counter()
        if self.supervisor is not None:
            self.supervisor.publish_servers(result.ir, changed, self.version)
        self.last_publish_ms = (time.perf_counter() - started) * 1000
        if self.health is not None:
            self.health.update(result.ir)
        for callback in self.on_reload:
            callback(result, self.version)
        log.debug("config v%d: endpoints only", self.version)


class StatusWriter:
    """The leader's write-back: Ingress status and Events, ServerGroup status."""

    def __init__(
        self,
        client: KubeClient,
        runtime: ControllerRuntime,
        elector: LeaderElector,
        options: ControllerOptions,
    ) -> None:
        self.client = client
        self.runtime = runtime
        self.elector = elector
        self.options = options
        self.wake = asyncio.Event()
        self.writes = 0
        self._events: dict[tuple[str, str, str], tuple[str, str]] = {}
        elector.on_change.append(self._leadership)

    def _leadership(self, leader: bool) -> None:
        self._events.clear()  # a new leader says everything once
        self.wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.options.status_interval)
            self.wake.clear()
            if not self.elector.is_leader or self.runtime.result is None:
                continue
            try:
                await self.sync()
            except KubeError as exc:
                log.warning("status write-back: %s", exc)

    async def addresses(self) -> list[dict[str, str]]:
        names: list[str] = list(self.options.publish_address)
        if self.options.publish_service:
            ns, _, name = self.options.publish_service.partition("/")
            svc = await self.client.request("GET", SERVICE.path(ns, name))
            lb = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            if lb:
                return [{k: v for k, v in i.items() if k in ("ip", "hostname")} for i in lb]
            spec = svc.get("spec") or {}
            names = list(spec.get("externalIPs") or []) or [str(spec.get("clusterIP") or "")]
        out = []
        for value in names:
            if value:
                try:
                    out.append({"ip": str(ipaddress.ip_address(value))})
                except ValueError:
                    out.append({"hostname": value})
        return out

    async def sync(self) -> None:
        result = self.runtime.result
        assert result is not None
        errors: dict[tuple[str, str, str], list[Diagnostic]] = {}
        for d in result.diagnostics:
            if d.is_error:
                errors.setdefault((d.obj.kind, d.obj.namespace, d.obj.name), []).append(d)
        ingresses = {f"{o.namespace}/{o.name}": o for o in self.runtime.kube.objects("Ingress")}
        lb = await self.addresses()
        failed, served = set(result.failed), set(result.served)
        for key, obj in ingresses.items():
            current = ((obj.body.get("status") or {}).get("loadBalancer") or {}).get("ingress")
            want = lb if key in served else (None if current == lb else current)
            if lb and current != want:  # ours: our address; no longer ours: not our address
                patch = {"status": {"loadBalancer": {"ingress": want}}}
                await self._patch_status(INGRESS.path(obj.namespace, obj.name, "status"), patch)
            if key not in served:
                continue
            if key in failed:
                await self._event(obj, "FailedBuildModel", errors.get(obj.key, []), True)
            else:
                await self._event(obj, "SuccessfullyReconciled", [], False)
        for (kind, ns, name), diags in errors.items():
            if kind not in ("Ingress", "ServerGroup", "File"):
                found = [o for o in self.runtime.kube.objects(kind) if o.key == (kind, ns, name)]
                for obj in found:
                    await self._event(obj, "FailedBuildModel", diags, True)
        await self._server_groups(result, errors)
        live = {
            o.key for kind in ("Ingress", "ServerGroup") for o in self.runtime.kube.objects(kind)
        }
        self._events = {k: v for k, v in self._events.items() if k in live or k in errors}

    async def _event(
        self, obj: K8sObject, reason: str, diags: list[Diagnostic], warn: bool
    ) -> None:
        message = (
            "; ".join(f"{d.code}: {d.message}" for d in diags)
            if diags
            else ("Successfully reconciled" if not warn else "the object has errors")
        )
        if self._events.get(obj.key) == (reason, message):
            return
        await record_event(
            self.client, obj.body, reason, message, warn, instance=self.elector.identity
        )
        self._events[obj.key] = (reason, message)
        self.writes += 1

    async def _patch_status(self, path: str, patch: dict[str, Any]) -> None:
        await self.client.request("PATCH", path, patch, content_type="application/merge-patch+json")
        self.writes += 1

    async def _server_groups(
        self, result: CompileResult, errors: dict[tuple[str, str, str], list[Diagnostic]]
    ) -> None:
        groups = result.ir.groups_by_id()
        for obj in self.runtime.kube.objects("ServerGroup"):
            gid = str(obj.spec.get("serverGroupId") or obj.name)
            group = groups.get(gid)
            servers = []
            for s in group.servers if group else ():
                state = self.runtime.server_status(gid, {"serverIp": s.address, "port": s.port})
                servers.append(
                    {"serverIp": s.address, "port": s.port, "weight": s.weight, "status": state}
                )
            diags = errors.get(obj.key, [])
            valid = {
                "type": "Valid",
                "status": "False" if diags else "True",
                "reason": "Invalid" if diags else "Valid",
                "message": "; ".join(f"{d.code}: {d.message}" for d in diags)[:1024],
            }
            want = {
                "serverCount": len(servers),
                "servers": servers,
                "conditions": [valid],
                "inUseBy": self.runtime.in_use(gid),
            }
            if obj.body.get("status") != want:
                path = SERVER_GROUP.path(obj.namespace, obj.name, "status")
                await self._patch_status(path, {"status": want})
            if diags:
                await self._event(obj, "FailedBuildModel", diags, True)


# --------------------------------------------------------------------------- running


def _json(data: Any) -> AdminResponse:
    return AdminResponse(200, "application/json", json.dumps(data, indent=1).encode())


def cluster_config(options: ControllerOptions) -> ClusterConfig:
    if options.kubeconfig is not None:
        return load_kubeconfig(options.kubeconfig, options.context)
    return in_cluster()


async def run(options: ControllerOptions, config: ClusterConfig | None = None) -> int:
    """``albingress controller`` until SIGTERM/SIGINT."""
    config = config or cluster_config(options)
    home = options.election_namespace or config.namespace
    identity = (
        options.identity or os.environ.get("POD_NAME") or (f"{socket.gethostname()}_{os.getpid()}")
    )
    client = KubeClient(config)
    source = KubernetesSource(client, options.namespaces, endpoints=options.endpoints)
    store = CustomResourceStore(SyncKubeClient(config), options.servergroup_namespace or home)
    compile_options = CompileOptions(
        network=options.serve.network, ingress_class=options.ingress_class, embedded=False
    )
    runtime = ControllerRuntime(options.serve, source, store, compile_options)
    elector = LeaderElector(
        client,
        home,
        options.election_name,
        identity,
        options.lease_duration,
        options.renew_period,
        options.retry_period,
    )
    writer = StatusWriter(client, runtime, elector, options)
    runtime.on_reload.append(lambda _result, _version: writer.wake.set())
    state_dir = options.serve.state.parent
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys, key_path, created = load_or_create_credentials(options.serve.credentials, state_dir)
    if created:
        log.warning("created an AccessKey pair for the server-group API in %s", key_path)

    async def info(_: AdminRequest) -> AdminResponse:
        return _json(
            {
                "identity": identity,
                "leader": elector.is_leader,
                "synced": source.synced,
                "version": runtime.version,
                "fullReloads": runtime.full_reloads,
                "fastReloads": runtime.fast_reloads,
                "lastReloadMs": round(runtime.last_reload_ms, 3),
                "lastLatencyMs": round(runtime.last_latency_ms, 3),
                "lastPublishMs": round(runtime.last_publish_ms, 3),
                "statusWrites": writer.writes,
                "reflectors": source.stats(),
            }
        )

    log.info("listing objects from %s", config.server)
    if not await source.start(options.sync_timeout):
        log.warning("serving before every kind was listed; the rest follows as it arrives")
    runtime.kube.take_changes()  # the first reload compiles everything anyway
    tasks = [
        asyncio.create_task(elector.run(), name="leader-election"),
        asyncio.create_task(writer.run(), name="status-writer"),
    ]
    try:
        return await run_balancer(
            options.serve, runtime, keys, [("GET", "/api/v1/kubernetes", info)]
        )
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await elector.release()
        await source.stop()
        await client.close()


# --------------------------------------------------------------------------- command line


_MANY: dict[str, Any] = {"action": "append"}
_SECONDS: dict[str, Any] = {"type": float, "help": "seconds"}
# (flag, argparse keywords); the load balancer's own flags are serve's (albingress.flags).
_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--kubeconfig", {"help": "kubeconfig file (default: in-cluster service account)"}),
    ("--context", {"default": "", "help": "kubeconfig context (default: current)"}),
    ("--namespace", {**_MANY, "metavar": "NS", "help": "watch only NS (repeatable; default all)"}),
    ("--ingress-class", {"default": "alb", "help": "the legacy kubernetes.io/ingress.class value we serve (default alb); "
     "every IngressClass whose controller is ingress.k8s.alibabacloud/alb is served"}),
    ("--publish-address", {**_MANY, "metavar": "ADDR", "help": "address for Ingress status"}),
    ("--publish-service", {"default": "", "metavar": "NS/NAME", "help": "or this Service's"}),
    ("--election-namespace", {"default": "", "help": "namespace of the leader Lease"}),
    ("--election-name", {"default": "albingress-leader", "help": "name of the Lease"}),
    ("--identity", {"default": "", "help": "this replica's name (default: POD_NAME)"}),
    ("--lease-duration", {**_SECONDS, "default": 15.0}),
    ("--renew-period", {**_SECONDS, "default": 5.0}),
    ("--retry-period", {**_SECONDS, "default": 2.0}),
    ("--servergroup-namespace", {"default": "", "help": "namespace of API-made ServerGroups"}),
    ("--status-interval", {**_SECONDS, "default": 5.0}),
    ("--watch-endpoints", {"action": "store_true", "help": "also watch v1 Endpoints"}),
)  # fmt: skip


def add_parser(sub: Any) -> None:
    p = sub.add_parser("controller", help="run the load balancer from a Kubernetes cluster")
    for flag, keywords in _FLAGS:
        p.add_argument(flag, **keywords)
    add_balancer_flags(p)
    p.set_defaults(func=main)


def options_from_args(args: Any) -> ControllerOptions:
    serve = balancer_options(args)
    return ControllerOptions(
        serve=serve,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        context=args.context,
        namespaces=tuple(args.namespace or ()),
        ingress_class=args.ingress_class,
        publish_address=tuple(args.publish_address or ()),
        publish_service=args.publish_service,
        election_namespace=args.election_namespace,
        election_name=args.election_name,
        identity=args.identity,
        lease_duration=args.lease_duration,
        renew_period=args.renew_period,
        retry_period=args.retry_period,
        servergroup_namespace=args.servergroup_namespace,
        status_interval=args.status_interval,
        endpoints=args.watch_endpoints,
    )


def main(args: Any) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options = options_from_args(args)
    config = cluster_config(options)  # a bad kubeconfig is a ConfigError (exit 1) before starting
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        pass
    return asyncio.run(run(options, config))
