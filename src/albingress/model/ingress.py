"""An Ingress (networking.k8s.io/v1) parsed into rule specs, with every problem recorded.

Each path of each rule becomes one :class:`PathSpec`. A path whose backend port is named
``use-annotation`` takes its actions from ``actions.<service name>``; any other backend is a plain
forward to that Service. A problem in one path drops that path only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from albingress import ir
from albingress.diagnostics import Collector
from albingress.model.actions import ForwardSpec, GroupRef, ParsedAction, parse_actions
from albingress.model.annotations import PREFIX, IngressOptions, parse_options
from albingress.model.conditions import parse_conditions
from albingress.sources.snapshot import K8sObject

USE_ANNOTATION = "use-annotation"
ALB_CONTROLLER = "ingress.k8s.alibabacloud/alb"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOST = re.compile(rf"(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*")


@dataclass(frozen=True, slots=True)
class PathSpec:
    position: tuple[int, int]  # (rule index, path index); (-1, -1) for the default backend
    host: str  # lowercase; "" = any host
    path: ir.PathMatch | None  # None: the default backend (any path)
    actions: tuple[ParsedAction, ...]  # last one final; ForwardSpec unresolved
    conditions: tuple[ir.Condition, ...]
    field: str  # "spec.rules[0].http.paths[1]"


@dataclass(frozen=True, slots=True)
class IngressSpec:
    namespace: str
    name: str
    options: IngressOptions
    paths: tuple[PathSpec, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


CAPTURE = re.compile(r"\$\{([1-9])\}")  # ${1}..${9} in a rewrite template


def normalise_path(path_type: ir.PathType, value: str) -> str:
    if path_type is ir.PathType.PREFIX and value != "/":
        return value.rstrip("/") or "/"
    return value


def parse_ingress(obj: K8sObject, diag: Collector, edition: str = "Standard") -> IngressSpec:
    annotations = obj.annotations
    options = parse_options(annotations, diag)
    spec = obj.spec
    paths: list[PathSpec] = []
    used_names: set[str] = set()

    rules = spec.get("rules")
    if rules is not None and not isinstance(rules, list):
        diag.error("Ingress.InvalidRules", "spec.rules", "spec.rules must be a list")
        rules = []
    for r_index, rule in enumerate(rules or []):
        where = f"spec.rules[{r_index}]"
        if not isinstance(rule, dict):
            diag.error("Ingress.InvalidRule", where, "each rule must be an object")
            continue
        host = rule.get("host") or ""
        if not isinstance(host, str) or (host and not _HOST.fullmatch(host.lower())):
            diag.error(
                "Ingress.InvalidHost",
                f"{where}.host",
                f"{host!r} is not a DNS name (a leading '*.' is allowed)",
            )
            continue
        http = rule.get("http")
        if http is None:
            continue
        raw_paths = http.get("paths") if isinstance(http, dict) else None
        if not isinstance(raw_paths, list):
            diag.error("Ingress.InvalidPaths", f"{where}.http.paths", "http.paths must be a list")
            continue
        for p_index, raw in enumerate(raw_paths):
            pwhere = f"{where}.http.paths[{p_index}]"
            item = _parse_path(
                raw,
                pwhere,
                host.lower(),
                (r_index, p_index),
                annotations,
                options,
                used_names,
                diag,
                edition,
            )
            if item is not None:
                paths.append(item)

    default = spec.get("defaultBackend")
    if default is not None:
        if CAPTURE.search(options.rewrite_target):
            diag.warn(
                "Ingress.RewriteCapture",
                "spec.defaultBackend",
                "rewrite-target uses capture groups and the default backend has no path to "
                "take them from: requests to it are not rewritten",
            )
        actions = _backend(
            default, "spec.defaultBackend", annotations, options, used_names, diag, edition
        )
        if actions is not None:
            paths.append(PathSpec((-1, -1), "", None, actions, (), "spec.defaultBackend"))
    if not rules and default is None:
        diag.warn("Ingress.NoRules", "spec", "the Ingress has no rules and no defaultBackend")

    for full in annotations:
        if isinstance(full, str) and full.startswith(PREFIX + "actions."):
            name = full[len(PREFIX + "actions.") :]
            if name not in used_names:
                diag.warn(
                    "Action.Unused",
                    full,
                    f"no path has backend service {name!r} with port name use-annotation, "
                    "so this actions annotation is not used",
                )
    return IngressSpec(obj.namespace, obj.name, options, tuple(paths))


def _parse_path(
    raw: object,
    where: str,
    host: str,
    position: tuple[int, int],
    annotations: dict[str, object],
    options: IngressOptions,
    used_names: set[str],
    diag: Collector,
    edition: str,
) -> PathSpec | None:
    if not isinstance(raw, dict):
        diag.error("Ingress.InvalidPath", where, "each path must be an object")
        return None
    before = len(diag.items)
    type_raw = raw.get("pathType")
    try:
        path_type = ir.PathType(type_raw)
        if path_type is ir.PathType.REGEX:  # ours, not a Kubernetes pathType
            raise ValueError(type_raw)
    except ValueError:
        if type_raw is None:
            diag.error(
                "Ingress.MissingPathType",
                f"{where}.pathType",
                "pathType is required (Exact, Prefix or ImplementationSpecific)",
            )
        else:
            diag.error(
                "Ingress.InvalidPathType",
                f"{where}.pathType",
                f"pathType {type_raw!r} is not Exact, Prefix or ImplementationSpecific",
            )
        return None
    value = raw.get("path")
    if value is None:
        value = "/"
    if not isinstance(value, str) or not value.startswith("/"):
        diag.error("Ingress.InvalidPath", f"{where}.path", f"path {value!r} must start with /")
        return None
    if path_type is not ir.PathType.IMPLEMENTATION_SPECIFIC and ("*" in value or "?" in value):
        diag.error(
            "Ingress.WildcardInPath",
            f"{where}.path",
            f"path {value!r} has '*' or '?': only pathType ImplementationSpecific takes ALB "
            "wildcards (or, with use-regex, regular expressions)",
        )
        return None
    if len(value) > 128:
        diag.error("Ingress.InvalidPath", f"{where}.path", "path is longer than 128 characters")
        return None
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value):
        diag.error(
            "Ingress.InvalidPath",
            f"{where}.path",
            f"path {value!r} has spaces or control characters",
        )
        return None
    groups = 0
    if options.use_regex and path_type is ir.PathType.IMPLEMENTATION_SPECIFIC:
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            diag.error(
                "Ingress.InvalidRegex",
                f"{where}.path",
                f"path {value!r} is not a regular expression (use-regex): {exc}",
            )
            return None
        path_type = ir.PathType.REGEX
    backend = raw.get("backend")
    actions = _backend(backend, f"{where}.backend", annotations, options, used_names, diag, edition)
    templates = [options.rewrite_target]
    for action in actions or ():
        if isinstance(action, ir.RewriteAction):  # also from the actions annotation
            templates += (action.host, action.path, action.query)
    wanted = max((int(n) for t in templates for n in CAPTURE.findall(t)), default=0)
    if wanted and path_type is not ir.PathType.REGEX:
        diag.error(
            "Ingress.RewriteCapture",
            f"{where}.path",
            f"a rewrite uses ${{{wanted}}}: that needs use-regex and a pathType "
            "ImplementationSpecific path with capture groups",
        )
        return None
    if wanted > groups:
        diag.error(
            "Ingress.RewriteCapture",
            f"{where}.path",
            f"a rewrite uses ${{{wanted}}} but path {value!r} has {groups} capture group(s)",
        )
        return None
    conditions: tuple[ir.Condition, ...] = ()
    name = _service_name(backend)
    if name:
        cond_key = f"{PREFIX}conditions.{name}"
        cond_raw = annotations.get(cond_key)
        if cond_raw is not None:
            if not isinstance(cond_raw, str):
                diag.error("Annotation.NotAString", cond_key, "annotation values must be strings")
                return None
            direction = str(annotations.get(f"{PREFIX}rule-direction.{name}", "Request"))
            parsed = parse_conditions(cond_raw, cond_key, diag, response=direction == "Response")
            if parsed is None:
                return None
            if direction == "Response":
                diag.warn(
                    "Condition.ResponseNotExecuted",
                    cond_key,
                    "response-direction rules are validated but not executed yet",
                )
                return None
            conditions = parsed
    if actions is None or any(d.is_error for d in diag.items[before:]):
        return None
    match = ir.PathMatch(path_type, normalise_path(path_type, value))
    return PathSpec(position, host, match, actions, conditions, where)


def _service_name(backend: object) -> str:
    if isinstance(backend, dict) and isinstance(backend.get("service"), dict):
        name = backend["service"].get("name")
        return name if isinstance(name, str) else ""
    return ""


def _backend(
    backend: object,
    where: str,
    annotations: dict[str, object],
    options: IngressOptions,
    used_names: set[str],
    diag: Collector,
    edition: str,
) -> tuple[ParsedAction, ...] | None:
    if not isinstance(backend, dict):
        diag.error("Ingress.MissingBackend", where, "backend is required")
        return None
    if "resource" in backend:
        diag.error(
            "Ingress.ResourceBackend",
            f"{where}.resource",
            "resource backends are not supported; use a Service",
        )
        return None
    service = backend.get("service")
    if not isinstance(service, dict):
        diag.error("Ingress.MissingBackend", f"{where}.service", "backend.service is required")
        return None
    name = service.get("name")
    if not isinstance(name, str) or not name:
        diag.error(
            "Ingress.MissingServiceName",
            f"{where}.service.name",
            "backend.service.name is required",
        )
        return None
    port = service.get("port")
    if not isinstance(port, dict):
        diag.error(
            "Ingress.MissingServicePort",
            f"{where}.service.port",
            "backend.service.port (name or number) is required",
        )
        return None
    port_name, port_number = port.get("name"), port.get("number")
    if port_name == USE_ANNOTATION:
        key = f"{PREFIX}actions.{name}"
        used_names.add(name)
        text = annotations.get(key)
        if text is None:
            diag.error(
                "Action.MissingAnnotation",
                f"{where}.service",
                f"port name use-annotation needs the annotation {key}",
            )
            return None
        if not isinstance(text, str):
            diag.error("Annotation.NotAString", key, "annotation values must be strings")
            return None
        actions = parse_actions(text, key, diag, edition)
        if actions is None:
            return None
        final = actions[-1]
        if (
            options.canary is not None
            and options.canary.weight is not None
            and isinstance(final, ForwardSpec)
        ):
            diag.error(
                "Canary.WithForwardGroup",
                PREFIX + "canary-weight",
                "canary-weight cannot be combined with a ForwardGroup action; put the weights in the ForwardGroup",
            )
            return None
        return actions
    if isinstance(port_number, bool) or (
        port_number is not None and not isinstance(port_number, int)
    ):
        diag.error(
            "Ingress.InvalidServicePort",
            f"{where}.service.port.number",
            f"port number {port_number!r} is not an integer",
        )
        return None
    if isinstance(port_number, int):
        if not 1 <= port_number <= 65535:
            diag.error(
                "Ingress.InvalidServicePort",
                f"{where}.service.port.number",
                f"port {port_number} is not 1-65535",
            )
            return None
        ref_port: int | str = port_number
    elif isinstance(port_name, str) and port_name:
        ref_port = port_name
    else:
        diag.error(
            "Ingress.MissingServicePort",
            f"{where}.service.port",
            "backend.service.port needs a name or a number",
        )
        return None
    ref = GroupRef("", name, ref_port, 100, f"{where}.service")
    return (ForwardSpec((ref,), False, 1000, f"{where}.service"),)
