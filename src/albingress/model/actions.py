"""The ``alb.ingress.kubernetes.io/actions.<name>`` annotation: a JSON array of rule actions.

Rules enforced here (reference section 2):

- field names and ``Type`` values match case-insensitively; unknown fields warn;
- eight action types; an unknown type is an error naming it;
- order: TrafficLimit first, then InsertHeader / RemoveHeader / Rewrite / TrafficMirror in the order
  written, then exactly one final action (ForwardGroup, Redirect or FixedResponse);
- at most 3 (Basic) or 5 (Standard, StandardWithWaf) actions;
- ForwardGroup: 1-5 server groups, each by ServerGroupID (wins) or ServiceName + ServicePort,
  weights 0-100 (default 100 for a single entry, required otherwise), sticky session timeout
  1-86400 s (default 1000).

Server groups are not resolved here: a ForwardGroup keeps :class:`GroupRef` references that the
compiler resolves against Services and ServerGroups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from albingress import ir
from albingress.diagnostics import Collector
from albingress.model.fields import Fields, as_int, parse_json

EDITION_ACTION_CAPS = {"Basic": 3, "Standard": 5, "StandardWithWaf": 5}
MAX_FORWARD_GROUPS = 5

# A server group ID: "sgp-" and lowercase letters/digits. The Alibaba documentation masks the end
# of real IDs with "*" (the seed has "sgp-71aexb9y93ypo*****"); such IDs are accepted, with a
# warning, so that copied manifests work unchanged.
SERVER_GROUP_ID = re.compile(r"sgp-[a-z0-9]+\**")


@dataclass(frozen=True, slots=True)
class GroupRef:
    """One ForwardGroup entry, before resolution."""

    server_group_id: str  # "" when the entry names a Service
    service_name: str  # ignored when server_group_id is set
    service_port: int | str  # a port number, or a port name looked up on the Service
    weight: int  # 0-100
    field: str  # where the entry is, for diagnostics


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    groups: tuple[GroupRef, ...]  # 1-5 entries
    sticky: bool
    sticky_timeout: int
    field: str


ParsedAction = (
    ForwardSpec
    | ir.RedirectAction
    | ir.FixedResponseAction
    | ir.InsertHeaderAction
    | ir.RemoveHeaderAction
    | ir.RewriteAction
    | ir.TrafficMirrorAction
    | ir.TrafficLimitAction
)

_TYPES = {
    t.casefold(): t
    for t in (
        "ForwardGroup",
        "Redirect",
        "FixedResponse",
        "InsertHeader",
        "RemoveHeader",
        "Rewrite",
        "TrafficMirror",
        "TrafficLimit",
    )
}
_FINAL = ("ForwardGroup", "Redirect", "FixedResponse")
_MIDDLE = ("InsertHeader", "RemoveHeader", "Rewrite", "TrafficMirror")
REDIRECT_CODES = (301, 302, 303, 307, 308)
FIXED_CONTENT_TYPES = (
    "text/plain",
    "text/css",
    "text/html",
    "application/javascript",
    "application/json",
)
SYSTEM_HEADER_VALUES = ("ClientSrcPort", "ClientSrcIp", "Protocol", "SLBId", "SLBPort")
HEADER_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "upgrade",
        "content-length",
        "transfer-encoding",
        "keep-alive",
        "te",
        "host",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-host",
    }
)


def parse_actions(
    text: str, where: str, diag: Collector, edition: str = "Standard"
) -> tuple[ParsedAction, ...] | None:
    """Parse one actions annotation. ``None`` when it has any error (the rule is dropped)."""
    before = len(diag.items)
    data = parse_json(text, where, "Action.InvalidJSON", diag)
    if data is None and len(diag.items) > before:
        return None
    if not isinstance(data, list):
        diag.error("Action.NotAnArray", where, "the actions annotation must be a JSON array")
        return None
    if not data:
        diag.error("Action.NoFinalAction", where, "no actions: a rule needs one final action")
        return None
    parsed: list[ParsedAction] = []
    kinds: list[str] = []
    for index, item in enumerate(data):
        path = f"{where}[{index}]"
        if not isinstance(item, dict):
            diag.error("Action.NotAnObject", path, "each action must be a JSON object")
            continue
        fields = Fields(item, path, diag)
        type_name = fields.string("Type", "Action.MissingType", required=True)
        if not type_name:
            continue
        canonical = _TYPES.get(type_name.casefold())
        if canonical is None:
            diag.error(
                "Action.UnknownType",
                fields.path("Type"),
                f"unknown action type {type_name!r} (one of: {', '.join(_TYPES.values())})",
            )
            continue
        kinds.append(canonical)
        action = _PARSERS[canonical](fields)
        fields.warn_unknown(("Type", f"{canonical}Config"), "Action.UnknownField")
        if action is not None:
            parsed.append(action)
    _check_order(kinds, where, diag)
    cap = EDITION_ACTION_CAPS.get(edition, 5)
    if len(data) > cap:
        diag.error(
            "Action.TooMany",
            where,
            f"{len(data)} actions in one rule; the {edition} edition allows at most {cap}",
        )
    if "Rewrite" in kinds and kinds[-1:] != ["ForwardGroup"]:
        diag.error(
            "Action.RewriteWithoutForward", where, "Rewrite must be combined with a ForwardGroup"
        )
    if any(d.is_error for d in diag.items[before:]):
        return None
    return tuple(parsed)


def _check_order(kinds: list[str], where: str, diag: Collector) -> None:
    finals = [k for k in kinds if k in _FINAL]
    if len(finals) > 1:
        diag.error(
            "Action.MultipleFinalActions",
            where,
            f"only one final action is allowed, found {len(finals)}: {', '.join(finals)}",
        )
    elif not finals and kinds:
        diag.error(
            "Action.NoFinalAction",
            where,
            "a rule needs one final action: ForwardGroup, Redirect or FixedResponse",
        )
    elif finals and kinds[-1] not in _FINAL:
        diag.error("Action.Order", where, f"{finals[0]} must be the last action")
    for position, kind in enumerate(kinds):
        if kind == "TrafficLimit" and any(k != "TrafficLimit" for k in kinds[:position]):
            diag.error("Action.Order", where, "TrafficLimit must come before every other action")
            break


def _config(fields: Fields, name: str) -> Fields | None:
    return fields.obj(f"{name}Config", f"{name}.MissingConfig", required=True)


def _forward(fields: Fields) -> ForwardSpec | None:
    config = _config(fields, "Forward")
    if config is None:
        return None
    diag = config.diag
    entries = config.array("ServerGroups", "ForwardGroup.MissingServerGroups", required=True)
    groups: list[GroupRef] = []
    if entries is not None:
        if not entries:
            diag.error(
                "ForwardGroup.MissingServerGroups",
                config.path("ServerGroups"),
                "ServerGroups must name at least one server group",
            )
        if len(entries) > MAX_FORWARD_GROUPS:
            diag.error(
                "ForwardGroup.TooManyServerGroups",
                config.path("ServerGroups"),
                f"{len(entries)} server groups; at most {MAX_FORWARD_GROUPS} in one ForwardGroup",
            )
        seen: dict[str, str] = {}
        for index, entry in enumerate(entries):
            ref = _group_ref(entry, f"{config.path('ServerGroups')}[{index}]", len(entries), diag)
            if ref is None:
                continue
            ident = ref.server_group_id or f"{ref.service_name}:{ref.service_port}"
            if ident in seen:
                diag.error(
                    "ForwardGroup.DuplicateServerGroup",
                    ref.field,
                    f"server group {ident} is already listed at {seen[ident]}",
                )
            seen[ident] = ref.field
            groups.append(ref)
    sticky, timeout = False, 1000
    sticky_cfg = config.obj("ServerGroupStickySession", "ForwardGroup.InvalidStickySession")
    if sticky_cfg is not None:
        sticky = sticky_cfg.boolean("Enabled", "ForwardGroup.InvalidStickySession")
        timeout = (
            sticky_cfg.integer(
                "Timeout", "ForwardGroup.InvalidStickyTimeout", lo=1, hi=86400, default=1000
            )
            or 1000
        )
        sticky_cfg.warn_unknown(("Enabled", "Timeout"), "Action.UnknownField")
    config.warn_unknown(("ServerGroups", "ServerGroupStickySession"), "Action.UnknownField")
    if groups and all(g.weight == 0 for g in groups):
        diag.warn(
            "ForwardGroup.AllWeightsZero",
            config.path("ServerGroups"),
            "every server group has weight 0: the rule answers 503",
        )
    return ForwardSpec(tuple(groups), sticky, timeout, config.where)


def _group_ref(entry: object, path: str, count: int, diag: Collector) -> GroupRef | None:
    if not isinstance(entry, dict):
        diag.error("ForwardGroup.InvalidServerGroup", path, "each server group must be an object")
        return None
    fields = Fields(entry, path, diag)
    before = len(diag.items)
    group_id = fields.string("ServerGroupID", "ForwardGroup.InvalidServerGroupID").strip()
    name = fields.string("ServiceName", "ForwardGroup.InvalidServiceName").strip()
    port_raw = fields.raw("ServicePort")
    weight = fields.integer(
        "Weight",
        "ForwardGroup.InvalidWeight",
        lo=0,
        hi=100,
        default=100,
        required=count > 1,  # one entry defaults to 100; several need a weight each
        missing_code="ForwardGroup.WeightRequired",
    )
    fields.warn_unknown(
        ("ServerGroupID", "ServiceName", "ServicePort", "Weight"), "Action.UnknownField"
    )
    port: int | str = 0
    if group_id:
        if not SERVER_GROUP_ID.fullmatch(group_id):
            diag.error(
                "ForwardGroup.InvalidServerGroupID",
                fields.path("ServerGroupID"),
                f"{group_id!r} is not a server group ID (sgp- followed by lowercase letters and digits)",
            )
        if name or port_raw is not None:
            diag.warn(
                "ForwardGroup.ServiceIgnored",
                path,
                "ServerGroupID is set, so ServiceName/ServicePort in the same entry are ignored",
            )
    elif name:
        port = _service_port(port_raw, fields.path("ServicePort"), diag) or 0
    else:
        diag.error(
            "ForwardGroup.MissingServerGroup",
            path,
            "each entry needs ServerGroupID or ServiceName with ServicePort",
        )
    if len(diag.items) > before and any(d.is_error for d in diag.items[before:]):
        return None
    return GroupRef(group_id, name, port, weight if weight is not None else 100, path)


def _service_port(value: object, path: str, diag: Collector) -> int | str | None:
    if value is None:
        diag.error(
            "ForwardGroup.MissingServicePort", path, "ServicePort is required with ServiceName"
        )
        return None
    number = as_int(value, allow_string=True)
    if number is not None:
        if not 1 <= number <= 65535:
            diag.error(
                "ForwardGroup.InvalidServicePort", path, f"ServicePort {number} is not 1-65535"
            )
            return None
        return number
    if isinstance(value, str) and value.strip():
        return value.strip()  # a port name, looked up on the Service
    diag.error("ForwardGroup.InvalidServicePort", path, f"ServicePort {value!r} is not a port")
    return None


def _redirect(fields: Fields) -> ir.RedirectAction | None:
    c = _config(fields, "Redirect")
    if c is None:
        return None
    code_raw = c.integer(
        "HttpCode", "Redirect.InvalidHttpCode", lo=300, hi=308, default=302, allow_string=True
    )
    if code_raw is not None and code_raw not in REDIRECT_CODES:
        c.diag.error(
            "Redirect.InvalidHttpCode",
            c.path("HttpCode"),
            f"HttpCode {code_raw} is not one of 301, 302, 303, 307, 308",
        )
    host = c.string("Host", "Redirect.InvalidHost") or "${host}"
    path = c.string("Path", "Redirect.InvalidPath") or "${path}"
    port = c.raw("Port")
    port_text = "${port}" if port in (None, "") else str(port)
    if port_text != "${port}":
        number = as_int(port, allow_string=True)
        if number is None or not 1 <= number <= 63335:
            c.diag.error(
                "Redirect.InvalidPort", c.path("Port"), f"Port {port!r} is not 1-63335 or ${{port}}"
            )
    protocol = c.string("Protocol", "Redirect.InvalidProtocol") or "${protocol}"
    if protocol not in ("${protocol}", "HTTP", "HTTPS"):
        c.diag.error(
            "Redirect.InvalidProtocol",
            c.path("Protocol"),
            f"Protocol {protocol!r} is not HTTP, HTTPS or ${{protocol}}",
        )
    query = c.string("Query", "Redirect.InvalidQuery") or "${query}"
    if path != "${path}" and not path.startswith("/") and "${" not in path:
        c.diag.error("Redirect.InvalidPath", c.path("Path"), f"Path {path!r} must start with /")
    if (host, path, port_text, protocol, query) == (
        "${host}",
        "${path}",
        "${port}",
        "${protocol}",
        "${query}",
    ):
        c.diag.error(
            "Redirect.Loop",
            c.where,
            "Host, Path, Port, Protocol and Query are all left as they are: the redirect would loop",
        )
    c.warn_unknown(("HttpCode", "Host", "Path", "Port", "Protocol", "Query"), "Action.UnknownField")
    return ir.RedirectAction(host, code_raw or 302, path, port_text, protocol, query)


def _fixed(fields: Fields) -> ir.FixedResponseAction | None:
    c = _config(fields, "FixedResponse")
    if c is None:
        return None
    code = c.integer(
        "HttpCode",
        "FixedResponse.InvalidHttpCode",
        lo=200,
        hi=599,
        required=True,
        allow_string=True,
    )
    if code is not None and code // 100 not in (2, 4, 5):
        c.diag.error(
            "FixedResponse.InvalidHttpCode",
            c.path("HttpCode"),
            f"HttpCode {code} must be 2xx, 4xx or 5xx",
        )
    content = c.string("Content", "FixedResponse.InvalidContent")
    if len(content.encode()) > 1024:
        c.diag.error(
            "FixedResponse.ContentTooLong", c.path("Content"), "Content is limited to 1 KB"
        )
    ctype = c.string("ContentType", "FixedResponse.InvalidContentType") or "text/plain"
    if ctype not in FIXED_CONTENT_TYPES:
        c.diag.error(
            "FixedResponse.InvalidContentType",
            c.path("ContentType"),
            f"ContentType {ctype!r} is not one of {', '.join(FIXED_CONTENT_TYPES)}",
        )
    c.warn_unknown(("HttpCode", "Content", "ContentType"), "Action.UnknownField")
    return ir.FixedResponseAction(content, ctype, code or 200)


def _header_key(c: Fields, code: str) -> str:
    key = c.string("Key", code, required=True)
    if key and not HEADER_KEY.fullmatch(key):
        c.diag.error(code, c.path("Key"), f"header name {key!r}: 1-40 letters, digits, - or _")
    elif key.lower() in _RESERVED_HEADERS:
        c.diag.error(code, c.path("Key"), f"header {key!r} is managed by the load balancer")
    return key


def _insert_header(fields: Fields) -> ir.InsertHeaderAction | None:
    c = _config(fields, "InsertHeader")
    if c is None:
        return None
    key = _header_key(c, "InsertHeader.InvalidKey")
    value = c.string("Value", "InsertHeader.InvalidValue", required=True)
    vtype = c.string("ValueType", "InsertHeader.InvalidValueType") or "UserDefined"
    if vtype not in ("UserDefined", "ReferenceHeader", "SystemDefined"):
        c.diag.error(
            "InsertHeader.InvalidValueType",
            c.path("ValueType"),
            f"ValueType {vtype!r} is not UserDefined, ReferenceHeader or SystemDefined",
        )
    elif vtype == "SystemDefined" and value not in SYSTEM_HEADER_VALUES:
        c.diag.error(
            "InsertHeader.InvalidValue",
            c.path("Value"),
            f"a SystemDefined value is one of {', '.join(SYSTEM_HEADER_VALUES)}",
        )
    cover = c.boolean("CoverEnabled", "InsertHeader.InvalidCoverEnabled")
    c.warn_unknown(("Key", "Value", "ValueType", "CoverEnabled"), "Action.UnknownField")
    return ir.InsertHeaderAction(key, value, vtype, cover)


def _remove_header(fields: Fields) -> ir.RemoveHeaderAction | None:
    c = _config(fields, "RemoveHeader")
    if c is None:
        return None
    key = _header_key(c, "RemoveHeader.InvalidKey")
    c.warn_unknown(("Key",), "Action.UnknownField")
    return ir.RemoveHeaderAction(key)


def _rewrite(fields: Fields) -> ir.RewriteAction | None:
    c = _config(fields, "Rewrite")
    if c is None:
        return None
    host = c.string("Host", "Rewrite.InvalidHost") or "${host}"
    path = c.string("Path", "Rewrite.InvalidPath") or "${path}"
    query = c.string("Query", "Rewrite.InvalidQuery") or "${query}"
    if not path.startswith("/") and not path.startswith("${"):
        c.diag.error("Rewrite.InvalidPath", c.path("Path"), f"Path {path!r} must start with /")
    c.warn_unknown(("Host", "Path", "Query"), "Action.UnknownField")
    return ir.RewriteAction(host, path, query)


def _mirror(fields: Fields) -> ir.TrafficMirrorAction | None:
    c = _config(fields, "TrafficMirror")
    if c is None:
        return None
    target = c.string("TargetType", "TrafficMirror.InvalidTargetType") or "ForwardGroupMirror"
    if target != "ForwardGroupMirror":
        c.diag.error(
            "TrafficMirror.InvalidTargetType",
            c.path("TargetType"),
            f"TargetType {target!r} is not ForwardGroupMirror",
        )
    ids: list[str] = []
    group_cfg = c.obj("MirrorGroupConfig", "TrafficMirror.MissingServerGroup", required=True)
    if group_cfg is not None:
        tuples = (
            group_cfg.array("ServerGroupTuples", "TrafficMirror.MissingServerGroup", required=True)
            or []
        )
        for index, item in enumerate(tuples):
            path = f"{group_cfg.path('ServerGroupTuples')}[{index}]"
            if not isinstance(item, dict):
                c.diag.error("TrafficMirror.InvalidServerGroup", path, "must be an object")
                continue
            t = Fields(item, path, c.diag)
            sgid = t.string("ServerGroupID", "TrafficMirror.InvalidServerGroup", required=True)
            if sgid and not SERVER_GROUP_ID.fullmatch(sgid):
                c.diag.error(
                    "TrafficMirror.InvalidServerGroup",
                    t.path("ServerGroupID"),
                    f"{sgid!r} is not a server group ID",
                )
            ids.append(sgid)
        if not tuples:
            c.diag.error(
                "TrafficMirror.MissingServerGroup",
                group_cfg.where,
                "name one server group to mirror to",
            )
    c.warn_unknown(("TargetType", "MirrorGroupConfig"), "Action.UnknownField")
    return ir.TrafficMirrorAction(tuple(ids))


def _limit(fields: Fields) -> ir.TrafficLimitAction | None:
    c = _config(fields, "TrafficLimit")
    if c is None:
        return None
    qps = c.integer(
        "QPS", "TrafficLimit.InvalidQPS", lo=1, hi=1_000_000, required=True, allow_string=True
    )
    per_ip = c.integer(
        "QPSPerIp", "TrafficLimit.InvalidQPSPerIp", lo=1, hi=1_000_000, allow_string=True
    )
    if qps is not None and per_ip is not None and per_ip >= qps:
        c.diag.error(
            "TrafficLimit.InvalidQPSPerIp",
            c.path("QPSPerIp"),
            f"QPSPerIp ({per_ip}) must be less than QPS ({qps})",
        )
    c.warn_unknown(("QPS", "QPSPerIp"), "Action.UnknownField")
    return ir.TrafficLimitAction(qps or 1, per_ip or 0)


_PARSERS = {
    "ForwardGroup": _forward,
    "Redirect": _redirect,
    "FixedResponse": _fixed,
    "InsertHeader": _insert_header,
    "RemoveHeader": _remove_header,
    "Rewrite": _rewrite,
    "TrafficMirror": _mirror,
    "TrafficLimit": _limit,
}
