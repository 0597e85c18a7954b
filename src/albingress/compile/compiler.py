"""``compile_snapshot``: Snapshot -> (IR, diagnostics). Pure: no I/O, no clock, no logging.

Passes, in order:

1. ``_load_balancer``   IngressClasses of our controller, their AlbConfig: listeners and edition.
2. ``_server_groups``   ServerGroup objects validated into IR groups (by ID).
3. ``_ingresses``       Ingresses of our class parsed (model layer), each with its own diagnostics.
4. ``_resolve``         ForwardGroup entries resolved to server groups (Services built from their
                        endpoints, IDs looked up); a path that cannot be resolved is dropped alone.
5. ``_canaries``        canary Ingresses folded into the rules of the Ingress they shadow.
6. ``_order``           rules sorted by precedence per listener: Ingress order, then Exact before
                        Prefix before ImplementationSpecific, then the longest path, then a named
                        host before a wildcard host before no host, then namespace/name and
                        position; shadowed duplicates are warned about.

An Ingress with errors loses only the paths the errors are about; the others keep serving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from albingress import ir
from albingress.compile.services import ServiceIndex, service_group_id
from albingress.diagnostics import Collector, Diagnostic
from albingress.model.actions import EDITION_ACTION_CAPS, ForwardSpec, GroupRef, ParsedAction
from albingress.model.annotations import PREFIX, IngressOptions
from albingress.model.ingress import (
    ALB_CONTROLLER,
    CAPTURE,
    LEGACY_CLASS_ANNOTATION,
    IngressSpec,
    PathSpec,
    parse_ingress,
)
from albingress.model.servergroup import NetworkSettings, parse_server_group
from albingress.sources.snapshot import K8sObject, Snapshot

DEFAULT_LISTENER = ("HTTP", 80)
_TYPE_RANK = {
    ir.PathType.EXACT: 0,
    ir.PathType.PREFIX: 1,
    ir.PathType.IMPLEMENTATION_SPECIFIC: 2,
    ir.PathType.REGEX: 3,
}


@dataclass(frozen=True, slots=True)
class CompileOptions:
    network: NetworkSettings = field(default_factory=NetworkSettings)
    ingress_class: str = "alb"  # implied IngressClass (embedded) and the legacy annotation value
    embedded: bool = True  # files mode: the class above is implied without an IngressClass object


@dataclass(frozen=True, slots=True)
class CompileResult:
    ir: ir.IR
    diagnostics: tuple[Diagnostic, ...]  # sorted; the snapshot's own problems included
    served: tuple[str, ...]  # "ns/name" of the Ingresses of our class
    failed: tuple[str, ...]  # "ns/name" of served Ingresses with at least one error

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.diagnostics)


@dataclass(slots=True)
class _Ctx:
    snapshot: Snapshot
    options: CompileOptions
    collectors: dict[tuple[str, str, str], Collector] = field(default_factory=dict)
    listeners: dict[int, str] = field(default_factory=dict)  # port -> protocol
    edition: str = "Standard"
    groups: dict[str, ir.ServerGroup] = field(default_factory=dict)
    invalid_groups: dict[str, str] = field(default_factory=dict)  # id -> why
    group_owner: dict[str, str] = field(default_factory=dict)  # service group id -> ingress
    services: ServiceIndex | None = None  # built on first use

    def diag(self, obj: K8sObject) -> Collector:
        c = self.collectors.get(obj.key)
        if c is None:
            c = self.collectors[obj.key] = Collector(obj.ref)
        return c


@dataclass(frozen=True, slots=True)
class _Placed:
    """A resolved rule, not yet ordered."""

    sort_key: tuple[object, ...]
    listeners: tuple[int, ...]
    rule: ir.Rule
    ingress: IngressSpec
    spec: PathSpec

    @property
    def path_position(self) -> tuple[int, int]:
        return self.spec.position


def compile_snapshot(snapshot: Snapshot, options: CompileOptions | None = None) -> CompileResult:
    ctx = _Ctx(snapshot, options or CompileOptions())
    classes = _load_balancer(ctx)
    _server_groups(ctx)
    ingresses = _ingresses(ctx, classes)
    placed: list[_Placed] = []
    canaries: list[tuple[IngressSpec, PathSpec, ir.Rule, tuple[int, ...]]] = []
    for obj, spec in ingresses:
        for item in _resolve(ctx, obj, spec):
            if spec.options.canary is not None:
                canaries.append((spec, item.spec, item.rule, item.listeners))
            else:
                placed.append(item)
    placed = _canaries(ctx, placed, canaries, {o.key[1:]: o for o, _ in ingresses})
    listeners = _order(ctx, placed, ingresses)
    used = {g.group_id for lst in listeners for rule in lst.rules for g in _forward_groups(rule)}
    groups = tuple(
        ctx.groups[k]
        for k in sorted(ctx.groups)
        if ctx.groups[k].source is ir.GroupSource.SERVER_GROUP or k in used
    )
    diagnostics = [*snapshot.diagnostics]
    for c in ctx.collectors.values():
        diagnostics.extend(c.items)
    diagnostics.sort(key=Diagnostic.sort_key)
    served = tuple(sorted(f"{o.namespace}/{o.name}" for o, _ in ingresses))
    failed = tuple(
        sorted(f"{o.namespace}/{o.name}" for o, _ in ingresses if ctx.diag(o).has_errors)
    )
    return CompileResult(ir.IR(listeners, groups, ctx.edition), tuple(diagnostics), served, failed)


def _forward_groups(rule: ir.Rule) -> tuple[ir.WeightedGroup, ...]:
    out: list[ir.WeightedGroup] = []
    for action in rule.actions:
        if isinstance(action, ir.ForwardAction):
            out.extend(action.groups)
        elif isinstance(action, ir.TrafficMirrorAction):
            out.extend(ir.WeightedGroup(g, 0) for g in action.group_ids)
    return tuple(out)


# --------------------------------------------------------------------------- pass 1


def _load_balancer(ctx: _Ctx) -> set[str]:
    """Names of IngressClasses that are ours; fills in listeners and edition."""
    classes: set[str] = set()
    configs = ctx.snapshot.index("AlbConfig")
    default_class = ""
    seen_config: K8sObject | None = None
    for obj in ctx.snapshot.of_kind("IngressClass"):
        if obj.spec.get("controller") != ALB_CONTROLLER:
            continue
        classes.add(obj.name)
        if str(obj.annotations.get("ingressclass.kubernetes.io/is-default-class")) == "true":
            default_class = obj.name
        params = obj.spec.get("parameters")
        if not isinstance(params, dict):
            continue
        diag = ctx.diag(obj)
        if params.get("kind") != "AlbConfig" or params.get("apiGroup") not in (
            None,
            "alibabacloud.com",
        ):
            diag.error(
                "IngressClass.InvalidParameters",
                "spec.parameters",
                "parameters must name an AlbConfig (apiGroup alibabacloud.com)",
            )
            continue
        config = configs.get(("", str(params.get("name"))))
        if config is None:
            diag.error(
                "IngressClass.AlbConfigNotFound",
                "spec.parameters.name",
                f"AlbConfig {params.get('name')!r} not found",
            )
            continue
        if seen_config is not None and seen_config.name != config.name:
            diag.warn(
                "IngressClass.SeveralAlbConfigs",
                "spec.parameters",
                f"one load balancer serves every class; listeners of AlbConfig {config.name} are merged with {seen_config.name}'s",
            )
        seen_config = seen_config or config
        _alb_config(ctx, config)
    if ctx.options.embedded and not any(
        o.name == ctx.options.ingress_class for o in ctx.snapshot.of_kind("IngressClass")
    ):
        classes.add(ctx.options.ingress_class)
    if not ctx.listeners:
        ctx.listeners[DEFAULT_LISTENER[1]] = DEFAULT_LISTENER[0]
    if default_class:
        classes.add("")  # Ingresses without a class belong to the default class, which is ours
    return classes


def _alb_config(ctx: _Ctx, config: K8sObject) -> None:
    diag = ctx.diag(config)
    spec = config.spec
    edition = (
        (spec.get("config") or {}).get("edition") if isinstance(spec.get("config"), dict) else None
    )
    if edition is not None:
        if edition not in EDITION_ACTION_CAPS:
            diag.error(
                "AlbConfig.InvalidEdition",
                "spec.config.edition",
                f"edition {edition!r} is not Basic, Standard or StandardWithWaf",
            )
        else:
            ctx.edition = edition
    listeners = spec.get("listeners") or []
    if not isinstance(listeners, list):
        diag.error("AlbConfig.InvalidListeners", "spec.listeners", "spec.listeners must be a list")
        return
    for index, item in enumerate(listeners):
        where = f"spec.listeners[{index}]"
        port = item.get("port") if isinstance(item, dict) else None
        protocol = str(item.get("protocol", "HTTP")).upper() if isinstance(item, dict) else ""
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            diag.error(
                "AlbConfig.InvalidListener",
                f"{where}.port",
                f"listener port {port!r} is not 1-65535",
            )
            continue
        if protocol not in ("HTTP", "HTTPS"):
            diag.error(
                "AlbConfig.InvalidListener",
                f"{where}.protocol",
                f"listener protocol {protocol!r} is not HTTP or HTTPS",
            )
            continue
        if ctx.listeners.get(port, protocol) != protocol:
            diag.error(
                "AlbConfig.ListenerConflict",
                where,
                f"port {port} is already an {ctx.listeners[port]} listener",
            )
            continue
        ctx.listeners[port] = protocol


# --------------------------------------------------------------------------- pass 2


def _server_groups(ctx: _Ctx) -> None:
    for obj in ctx.snapshot.of_kind("ServerGroup"):
        diag = ctx.diag(obj)
        spec = dict(obj.spec)
        spec.setdefault("serverGroupId", obj.name)
        group = parse_server_group(spec, diag, ctx.options.network)
        gid = str(spec.get("serverGroupId"))
        if group is None:
            ctx.invalid_groups[gid] = f"ServerGroup {obj.ref.key} has errors"
            continue
        if group.id in ctx.groups:
            diag.error(
                "ServerGroup.DuplicateId",
                "spec.serverGroupId",
                f"server group ID {group.id} is declared twice",
            )
            continue
        ctx.groups[group.id] = group


# --------------------------------------------------------------------------- pass 3


def _ingresses(ctx: _Ctx, classes: set[str]) -> list[tuple[K8sObject, IngressSpec]]:
    result = []
    for obj in ctx.snapshot.of_kind("Ingress"):
        class_name = obj.spec.get("ingressClassName")
        legacy = obj.annotations.get(LEGACY_CLASS_ANNOTATION)
        if class_name is None and legacy is not None:
            ours = legacy == ctx.options.ingress_class
        else:
            ours = (class_name or "") in classes
        if not ours:
            if class_name is None and legacy is None:
                ctx.diag(obj).warn(
                    "Ingress.NoClass",
                    "spec.ingressClassName",
                    "no ingressClassName and no default IngressClass of ours: not served (set ingressClassName: alb)",
                )
            continue
        result.append((obj, parse_ingress(obj, ctx.diag(obj), ctx.edition)))
    return result


# --------------------------------------------------------------------------- pass 4


def _resolve(ctx: _Ctx, obj: K8sObject, spec: IngressSpec) -> list[_Placed]:
    diag = ctx.diag(obj)
    services = _services(ctx)
    opts = spec.options
    ports = _listeners_for(ctx, opts, diag)
    placed = []
    for path in spec.paths:
        before = len(diag.items)
        actions = [_resolve_action(ctx, a, spec, services, diag) for a in path.actions]
        if any(d.is_error for d in diag.items[before:]) or not ports:
            continue
        resolved = tuple(a for a in actions if a is not None)
        resolved = _apply_options(opts, path, resolved, ctx.edition)
        name = f"{spec.key}/rules/{path.position[0]}/paths/{path.position[1]}"
        if path.path is None:
            name = f"{spec.key}/defaultBackend"
        rule = ir.Rule(name, spec.key, opts.order, path.host, path.path, path.conditions, resolved)
        placed.append(_Placed(_sort_key(rule, path), ports, rule, spec, path))
    return placed


def _services(ctx: _Ctx) -> ServiceIndex:
    if ctx.services is None:
        ctx.services = ServiceIndex(ctx.snapshot)
    return ctx.services


def _sort_key(rule: ir.Rule, path: PathSpec) -> tuple[object, ...]:
    if rule.path is None:
        type_rank, length = 9, 0
    else:
        type_rank, length = _TYPE_RANK[rule.path.type], len(rule.path.value)
    # Between rules otherwise equal, a named host beats a wildcard host, which beats no host.
    host_rank = 2 if not rule.host else 1 if rule.host.startswith("*.") else 0
    return (rule.order, type_rank, -length, host_rank, rule.ingress, (*path.position, 0, 0))


def _listeners_for(ctx: _Ctx, opts: IngressOptions, diag: Collector) -> tuple[int, ...]:
    wanted = opts.listen_ports or (DEFAULT_LISTENER,)
    ports = []
    for protocol, port in wanted:
        have = ctx.listeners.get(port)
        if have is None:
            diag.error(
                "Ingress.ListenerNotFound",
                PREFIX + "listen-ports",
                f"no {protocol} listener on port {port} (listeners: {', '.join(f'{p}:{n}' for n, p in sorted(ctx.listeners.items()))})",
            )
        elif have != protocol:
            diag.error(
                "Ingress.ListenerNotFound",
                PREFIX + "listen-ports",
                f"port {port} is an {have} listener, not {protocol}",
            )
        else:
            ports.append(port)
    return tuple(sorted(set(ports)))


def _resolve_action(
    ctx: _Ctx, action: ParsedAction, spec: IngressSpec, services: ServiceIndex, diag: Collector
) -> ir.Action | None:
    if isinstance(action, ir.TrafficMirrorAction):
        for mirror_id in action.group_ids:
            _lookup_group(ctx, mirror_id, "TrafficMirror", diag)
        return action
    if not isinstance(action, ForwardSpec):
        return action
    groups = []
    for ref in action.groups:
        gid = _resolve_ref(ctx, ref, spec, services, diag)
        if gid is not None:
            groups.append(ir.WeightedGroup(gid, ref.weight))
    if len(groups) != len(action.groups):
        return None
    return ir.ForwardAction(tuple(groups), action.sticky, action.sticky_timeout)


def _lookup_group(ctx: _Ctx, gid: str, field_name: str, diag: Collector) -> bool:
    if gid in ctx.groups:
        return True
    why = ctx.invalid_groups.get(gid)
    if why:
        diag.error(
            "Backend.ServerGroupInvalid", field_name, f"server group {gid} cannot be used: {why}"
        )
    else:
        diag.error(
            "Backend.ServerGroupNotFound",
            field_name,
            f"server group {gid} not found (declare a ServerGroup or create it through the API)",
        )
    return False


def _resolve_ref(
    ctx: _Ctx, ref: GroupRef, spec: IngressSpec, services: ServiceIndex, diag: Collector
) -> str | None:
    if ref.server_group_id:
        return (
            ref.server_group_id
            if _lookup_group(ctx, ref.server_group_id, ref.field, diag)
            else None
        )
    port = services.resolve_port(spec.namespace, ref.service_name, ref.service_port)
    if isinstance(port, str):
        code = (
            "Backend.ServiceNotFound"
            if port.endswith("not found")
            else "Backend.ServicePortNotFound"
        )
        diag.error(code, ref.field, port)
        return None
    gid = service_group_id(spec.namespace, ref.service_name, port.port)
    opts = spec.options
    wanted = ir.ServerGroup(
        id=gid,
        name=f"{spec.namespace}/{ref.service_name}:{port.port}",
        source=ir.GroupSource.SERVICE,
        protocol=opts.protocol,
        scheduler=opts.scheduler,
        servers=(),
        health_check=opts.health_check,
        sticky=opts.sticky,
        uch_key=opts.uch_key,
    )
    existing = ctx.groups.get(gid)
    if existing is not None:
        if dataclasses.replace(existing, servers=()) != wanted:
            diag.warn(
                "Backend.ConflictingGroupSettings",
                ref.field,
                f"Service {ref.service_name}:{port.port} is also used by {ctx.group_owner[gid]} with other health-check, sticky or scheduler settings; that Ingress's settings win",
            )
        return gid
    servers = services.servers(spec.namespace, ref.service_name, port)
    if servers is None:
        diag.warn(
            "Backend.NoEndpoints",
            ref.field,
            f"Service {spec.namespace}/{ref.service_name} has no EndpointSlices or Endpoints: its share goes to the other groups",
        )
        servers = ()
    ctx.groups[gid] = dataclasses.replace(wanted, servers=servers)
    ctx.group_owner[gid] = spec.key
    return gid


def _takes_every_path(path: ir.PathMatch | None) -> bool:
    if path is None:
        return True
    if path.type is ir.PathType.PREFIX:
        return path.value.strip("/") == ""
    return path.type is ir.PathType.IMPLEMENTATION_SPECIFIC and path.value in ("*", "/*")


def _host_covers(cover: str, host: str) -> bool:
    """Every request for ``host`` is also one for ``cover`` (an Ingress host or wildcard)."""
    if not cover or cover == host:
        return True
    return (
        cover.startswith("*.") and host.endswith(cover[1:]) and "." not in host[: -len(cover) + 1]
    )


def _apply_options(
    opts: IngressOptions, path: PathSpec, actions: tuple[ir.Action, ...], edition: str
) -> tuple[ir.Action, ...]:
    """Ingress-wide annotations that add actions: traffic limit, rewrite-target."""
    out = list(actions)
    captures = CAPTURE.search(opts.rewrite_target) is not None
    if (
        opts.rewrite_target
        and isinstance(out[-1], ir.ForwardAction)
        and not any(isinstance(a, ir.RewriteAction) for a in out)
        and not (captures and (path.path is None or path.path.type is not ir.PathType.REGEX))
    ):
        out.insert(len(out) - 1, ir.RewriteAction(path=opts.rewrite_target))
    if opts.traffic_limit is not None and not any(
        isinstance(a, ir.TrafficLimitAction) for a in out
    ):
        out.insert(0, opts.traffic_limit)
    return tuple(out)


# --------------------------------------------------------------------------- pass 5


def _canaries(
    ctx: _Ctx,
    placed: list[_Placed],
    canaries: list[tuple[IngressSpec, PathSpec, ir.Rule, tuple[int, ...]]],
    objects: Mapping[tuple[str, str], K8sObject],
) -> list[_Placed]:
    for spec, path, rule, ports in canaries:
        canary = spec.options.canary
        assert canary is not None
        diag = ctx.diag(objects[(spec.namespace, spec.name)])
        mains = [
            i
            for i, p in enumerate(placed)
            if p.rule.host == rule.host
            and p.rule.path == rule.path
            and set(p.listeners) & set(ports)
        ]
        if not mains:
            diag.warn(
                "Canary.NoMainIngress",
                path.field,
                f"no other Ingress serves host {rule.host or '*'} path {rule.path.value if rule.path else '*'}: the canary is not served",
            )
            continue
        index = mains[0]
        main = placed[index]
        extra: list[tuple[str, ir.Condition]] = []
        if canary.header:
            value = canary.header_value or "always"
            extra.append(("header", ir.Condition("Header", (value,), canary.header.lower())))
        if canary.cookie:
            extra.append(("cookie", ir.Condition("Cookie", (f"{canary.cookie}=always",))))
        for n, (label, cond) in enumerate(extra):
            new_rule = dataclasses.replace(
                rule,
                name=f"{rule.name}/canary-by-{label}",
                order=main.rule.order,
                conditions=(*main.rule.conditions, cond),
            )
            placed.append(
                _Placed(
                    (*main.sort_key[:-1], (*main.path_position, -1, n)),
                    main.listeners,
                    new_rule,
                    spec,
                    path,
                )
            )
        if canary.weight is not None:
            placed[index] = _weighted(main, rule, canary.weight, diag, path.field)
    return placed


def _weighted(
    main: _Placed, canary_rule: ir.Rule, weight: int, diag: Collector, where: str
) -> _Placed:
    final = main.rule.final
    canary_final = canary_rule.final
    if not isinstance(final, ir.ForwardAction) or not isinstance(canary_final, ir.ForwardAction):
        diag.error(
            "Canary.NotForward",
            where,
            "canary-weight needs both the main and the canary rule to forward to server groups",
        )
        return main
    total = sum(g.weight for g in final.groups) or 1
    groups = [
        ir.WeightedGroup(g.group_id, round(g.weight * (100 - weight) / total)) for g in final.groups
    ]
    groups.extend(ir.WeightedGroup(g.group_id, weight) for g in canary_final.groups)
    if len(groups) > 5:
        diag.error(
            "Canary.TooManyServerGroups",
            where,
            "main and canary together name more than 5 server groups",
        )
        return main
    new_final = dataclasses.replace(final, groups=tuple(groups))
    rule = dataclasses.replace(main.rule, actions=(*main.rule.actions[:-1], new_final))
    return dataclasses.replace(main, rule=rule)


# --------------------------------------------------------------------------- pass 6


def _order(
    ctx: _Ctx, placed: list[_Placed], ingresses: list[tuple[K8sObject, IngressSpec]]
) -> tuple[ir.Listener, ...]:
    by_key = {f"{o.namespace}/{o.name}": o for o, _ in ingresses}
    explicit: dict[int, str] = {}
    for obj, spec in ingresses:
        if spec.options.order_explicit and spec.paths:
            other = explicit.get(spec.options.order)
            if other is not None:
                ctx.diag(obj).warn(
                    "Ingress.OrderConflict",
                    PREFIX + "order",
                    f"order {spec.options.order} is also set on Ingress {other}; ties are broken by namespace/name",
                )
            else:
                explicit[spec.options.order] = spec.key
    placed.sort(key=lambda p: p.sort_key)
    listeners = []
    for port in sorted(ctx.listeners):
        rules: list[ir.Rule] = []
        seen: dict[tuple[object, ...], str] = {}
        catch_alls: list[ir.Rule] = []  # rules before, taking every request of their host
        for item in placed:
            if port not in item.listeners:
                continue
            rule = item.rule
            if ctx.listeners[port] == "HTTP" and item.ingress.options.ssl_redirect:
                redirect = ir.RedirectAction(protocol="HTTPS", port="443", http_code=308)
                rule = dataclasses.replace(rule, actions=(redirect,))
            ident = (rule.host, rule.path, rule.conditions)
            if ident in seen and seen[ident] != rule.name:
                ctx.diag(by_key[rule.ingress]).warn(
                    "Rule.Shadowed",
                    item.spec.field,
                    f"rule {rule.name} matches the same requests as {seen[ident]}, which comes first: it never gets traffic",
                )
            else:
                cover = next((c for c in catch_alls if _host_covers(c.host, rule.host)), None)
                if cover is not None:
                    ctx.diag(by_key[rule.ingress]).warn(
                        "Rule.Shadowed",
                        item.spec.field,
                        f"rule {rule.name} comes after {cover.name}, which takes every path"
                        f"{' of its host' if cover.host else ''} first (precedence: order, then "
                        "path type, then length): it never gets traffic",
                    )
            seen.setdefault(ident, rule.name)
            if not rule.conditions and _takes_every_path(rule.path):
                catch_alls.append(rule)
            rules.append(rule)
        listeners.append(ir.Listener(port, ctx.listeners[port], tuple(rules)))
    return tuple(listeners)
