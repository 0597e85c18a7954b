"""The intermediate representation: what the data plane needs, and nothing else.

The compiler turns a snapshot of manifests into one :class:`IR`; the data plane builds its routing
table and balancers from it. Everything here is frozen, uses tuples, and is JSON serialisable with
:func:`to_json` so that ``plan``, golden tests and ``/api/v1/config`` are stable.

Shape::

    IR
    ├── listeners: Listener(port, protocol)
    │   └── rules (in precedence order): Rule(host, path, conditions, actions)
    │       └── actions: pre-actions in order, then exactly one final action
    │           └── ForwardAction: (server group id, weight) pairs
    └── server_groups: ServerGroup(id, scheduler, health check, sticky)
        └── servers: Server(address, port, weight)
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- enums


class Protocol(enum.Enum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"
    GRPC = "gRPC"


class Scheduler(enum.Enum):
    WRR = "Wrr"  # smooth weighted round robin
    WLC = "Wlc"  # fewest active requests, weighted
    SCH = "Sch"  # source-IP hash
    UCH = "Uch"  # URL (query string) hash


class PathType(enum.Enum):
    EXACT = "Exact"
    PREFIX = "Prefix"
    IMPLEMENTATION_SPECIFIC = "ImplementationSpecific"
    # not an Ingress pathType: an ImplementationSpecific path of an Ingress with use-regex, a
    # regular expression matched from the start of the path (its groups feed ${1}..${3})
    REGEX = "Regex"


class GroupSource(enum.Enum):
    SERVICE = "Service"  # built from a Kubernetes Service's endpoints
    SERVER_GROUP = "ServerGroup"  # declared as a ServerGroup manifest or created through the API


# --------------------------------------------------------------------------- server groups


@dataclass(frozen=True, slots=True)
class Server:
    address: str  # IP address, never empty
    port: int  # 1-65535
    weight: int  # 0-100; 0 takes no new traffic
    server_id: str  # ECS id, pod name, or the IP for Ip servers
    server_type: str = "Ip"  # Ecs | Eni | Eci | Ip | Pod
    remote: bool = False  # RemoteIpEnabled: outside the load balancer's own network
    description: str = ""


@dataclass(frozen=True, slots=True)
class HealthCheck:
    enabled: bool = False
    protocol: str = "HTTP"  # HTTP | HTTPS | TCP | gRPC
    path: str = "/"  # starts with "/"
    method: str = "HEAD"  # GET | POST | HEAD
    codes: tuple[str, ...] = ("http_2xx", "http_3xx")  # http_2xx.. or gRPC codes
    interval: int = 2  # seconds, 1-50
    timeout: int = 5  # seconds, 1-300
    healthy_threshold: int = 3  # 2-10
    unhealthy_threshold: int = 3  # 2-10
    connect_port: int = 0  # 0 = the server's own port
    host: str = ""  # Host header for HTTP checks; "" = the server address


@dataclass(frozen=True, slots=True)
class StickySession:
    enabled: bool = False
    type: str = "Insert"  # Insert (we set the cookie) | Server (the backend's cookie)
    cookie_timeout: int = 1000  # seconds, 1-86400
    cookie: str = ""  # the backend's cookie name, for type Server


@dataclass(frozen=True, slots=True)
class ServerGroup:
    id: str  # "sgp-..." for API/manifest groups; "svc-<ns>-<name>-<port>" for Services
    name: str  # what people recognise: the ServerGroupName, or "ns/service:port"
    source: GroupSource
    protocol: Protocol
    scheduler: Scheduler
    servers: tuple[Server, ...]  # sorted by (address, port); may be empty
    health_check: HealthCheck = HealthCheck()
    sticky: StickySession = StickySession()
    uch_key: str = ""  # the query-string key hashed by Scheduler.UCH
    group_type: str = "Ip"  # Instance | Ip (ALB ServerGroupType); Service groups are Ip


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class WeightedGroup:
    group_id: str  # key into IR.server_groups; always present there
    weight: int  # 0-100; the share is weight / sum of weights


@dataclass(frozen=True, slots=True)
class ForwardAction:
    groups: tuple[WeightedGroup, ...]  # 1-5 entries
    sticky: bool = False  # ServerGroupStickySession.Enabled
    sticky_timeout: int = 1000  # seconds, 1-86400
    kind: str = "ForwardGroup"


@dataclass(frozen=True, slots=True)
class RedirectAction:
    host: str = "${host}"
    http_code: int = 302  # 301 | 302 | 303 | 307 | 308
    path: str = "${path}"
    port: str = "${port}"
    protocol: str = "${protocol}"
    query: str = "${query}"
    kind: str = "Redirect"


@dataclass(frozen=True, slots=True)
class FixedResponseAction:
    content: str = ""
    content_type: str = "text/plain"
    http_code: int = 200  # 2xx, 4xx or 5xx
    kind: str = "FixedResponse"


@dataclass(frozen=True, slots=True)
class InsertHeaderAction:
    key: str
    value: str
    value_type: str = "UserDefined"  # UserDefined | ReferenceHeader | SystemDefined
    cover: bool = False  # replace an existing header of that name
    kind: str = "InsertHeader"


@dataclass(frozen=True, slots=True)
class RemoveHeaderAction:
    key: str
    kind: str = "RemoveHeader"


@dataclass(frozen=True, slots=True)
class RewriteAction:
    host: str = "${host}"
    path: str = "${path}"
    query: str = "${query}"
    kind: str = "Rewrite"


@dataclass(frozen=True, slots=True)
class TrafficMirrorAction:
    group_ids: tuple[str, ...]  # server groups that get a copy of each request
    kind: str = "TrafficMirror"


@dataclass(frozen=True, slots=True)
class TrafficLimitAction:
    qps: int  # >= 1
    qps_per_ip: int = 0  # 0 = no per-IP limit; otherwise < qps
    kind: str = "TrafficLimit"


Action = (
    ForwardAction
    | RedirectAction
    | FixedResponseAction
    | InsertHeaderAction
    | RemoveHeaderAction
    | RewriteAction
    | TrafficMirrorAction
    | TrafficLimitAction
)
FINAL_ACTIONS = (ForwardAction, RedirectAction, FixedResponseAction)


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class PathMatch:
    type: PathType
    value: str  # starts with "/"; Prefix values have no trailing "/" except the root "/"


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition block; values inside one block are ORed, blocks are ANDed."""

    type: str  # Host | Path | Header | Cookie | QueryString | Method | SourceIp
    values: tuple[str, ...]  # never empty; for Cookie/QueryString "key=value" pairs
    key: str = ""  # header name (lowercase) for Header


@dataclass(frozen=True, slots=True)
class Rule:
    name: str  # "ns/ingress/rules/0/paths/1" — stable, unique within the IR
    ingress: str  # "ns/name" of the Ingress it came from
    order: int  # the Ingress's order annotation, 1-1000
    host: str  # "" = any host; lowercase; may start with "*."
    path: PathMatch | None  # None = any path (default backend)
    conditions: tuple[Condition, ...]
    actions: tuple[Action, ...]  # pre-actions in order, then exactly one final action

    @property
    def final(self) -> Action:
        return self.actions[-1]


@dataclass(frozen=True, slots=True)
class Listener:
    port: int  # the ALB listener port (80, 443, ...); bound locally by --listen
    protocol: str  # HTTP | HTTPS
    rules: tuple[Rule, ...]  # in precedence order: the first that matches wins


@dataclass(frozen=True, slots=True)
class IR:
    listeners: tuple[Listener, ...]  # sorted by port
    server_groups: tuple[ServerGroup, ...]  # sorted by id; every id a rule names is here
    edition: str = "Standard"  # Basic | Standard | StandardWithWaf

    def group(self, group_id: str) -> ServerGroup:
        for g in self.server_groups:
            if g.id == group_id:
                return g
        raise KeyError(group_id)

    def groups_by_id(self) -> dict[str, ServerGroup]:
        return {g.id: g for g in self.server_groups}


# --------------------------------------------------------------------------- serialisation


_SCALARS = (str, int, bool, float, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    names = _FIELD_NAMES.get(kind)
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if kind is tuple or kind is list:
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
        return _plain(value)
    return value


def to_json(ir: IR) -> dict[str, Any]:
    """The IR as plain JSON data (dicts, lists, strings, numbers, booleans)."""
    result: dict[str, Any] = _plain(ir)
    return result


_ACTION_TYPES: dict[str, type[Any]] = {
    "ForwardGroup": ForwardAction,
    "Redirect": RedirectAction,
    "FixedResponse": FixedResponseAction,
    "InsertHeader": InsertHeaderAction,
    "RemoveHeader": RemoveHeaderAction,
    "Rewrite": RewriteAction,
    "TrafficMirror": TrafficMirrorAction,
    "TrafficLimit": TrafficLimitAction,
}


def _action_from_json(data: dict[str, Any]) -> Action:
    cls = _ACTION_TYPES[data["kind"]]
    if cls is ForwardAction:
        groups = tuple(WeightedGroup(**g) for g in data["groups"])
        return ForwardAction(groups, data["sticky"], data["sticky_timeout"])
    if cls is TrafficMirrorAction:
        return TrafficMirrorAction(tuple(data["group_ids"]))
    action: Action = cls(**data)
    return action


def group_to_json(group: ServerGroup) -> dict[str, Any]:
    """One server group as plain JSON data (the part of :func:`to_json` it is)."""
    result: dict[str, Any] = _plain(group)
    return result


def group_from_json(g: dict[str, Any]) -> ServerGroup:
    """Inverse of :func:`group_to_json`."""
    return ServerGroup(
        id=g["id"],
        name=g["name"],
        source=GroupSource(g["source"]),
        protocol=Protocol(g["protocol"]),
        scheduler=Scheduler(g["scheduler"]),
        servers=tuple(Server(**s) for s in g["servers"]),
        health_check=HealthCheck(
            **{**g["health_check"], "codes": tuple(g["health_check"]["codes"])}
        ),
        sticky=StickySession(**g["sticky"]),
        uch_key=g["uch_key"],
        group_type=g["group_type"],
    )


def from_json(data: dict[str, Any]) -> IR:
    """Inverse of :func:`to_json`: how workers receive a new IR from the supervisor."""
    groups = [group_from_json(g) for g in data["server_groups"]]
    listeners = []
    for lst in data["listeners"]:
        rules = []
        for r in lst["rules"]:
            path = r["path"]
            rules.append(
                Rule(
                    name=r["name"],
                    ingress=r["ingress"],
                    order=r["order"],
                    host=r["host"],
                    path=PathMatch(PathType(path["type"]), path["value"]) if path else None,
                    conditions=tuple(
                        Condition(c["type"], tuple(c["values"]), c["key"]) for c in r["conditions"]
                    ),
                    actions=tuple(_action_from_json(a) for a in r["actions"]),
                )
            )
        listeners.append(Listener(lst["port"], lst["protocol"], tuple(rules)))
    return IR(tuple(listeners), tuple(groups), data["edition"])


# --------------------------------------------------------------------------- health


def server_key(group_id: str, address: str, port: int) -> str:
    """The key under which a server's health is reported: ``group_id|address:port``.

    Active health checks (run once, in the supervisor) publish the set of unhealthy keys; every
    worker takes servers with those keys out of rotation. A server in two groups has two keys,
    since each group has its own health-check settings.
    """
    return f"{group_id}|{address}:{port}"
