"""Pure validation of a server group, with the ranges and defaults of ALB's OpenAPI (2020-06-16).

A group arrives as the ``spec`` of a Kubernetes-shaped ``ServerGroup`` object (lowerCamel field
names, see :mod:`albingress.servergroups.store`), whether it was declared in a manifest or created
through the API. :func:`normalize_group_spec` checks every field, collects every problem (never
stops at the first) and returns the spec with every default filled in; :func:`validate_group_spec`
returns only the problems. A problem is ``(code, field, message)`` where ``code`` is the ALB error
code (``IllegalParam.HealthCheckInterval``, ``MissingParam.ServerGroupName``,
``Mismatch.ServerGroupType``) and ``field`` the path inside the spec (``servers[2].port``).

The network rules use :class:`albingress.model.servergroup.NetworkSettings` (``vpc_cidrs``, the
load balancer's own network, loopback by default; ``remote_cidrs``, where RemoteIpEnabled servers
may be, the private ranges by default), the same settings ``--vpc-cidr``/``--remote-cidr`` give
the compiler; public addresses are refused whatever ``remote_cidrs`` says.

Values may be typed (YAML) or strings (the RPC form of the API): ``"80"`` reads as 80 and
``"True"``/``"false"`` as booleans. No I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

from albingress.model.servergroup import (
    NetworkSettings,
    group_name_problem,
    server_address_problem,
)

Problem = tuple[str, str, str]  # (ALB error code, field path in the spec, message)

GROUP_ID_RE = re.compile(r"^sgp-[a-z0-9]+$")
_COOKIE_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,200}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]{1,80}$")
_GRPC_CODE_RE = re.compile(r"^\d{1,2}(-\d{1,2})?$")

GROUP_TYPES = ("Instance", "Ip")
PROTOCOLS = ("HTTP", "HTTPS", "gRPC")
SCHEDULERS = ("Wrr", "Wlc", "Sch", "Uch")
HC_METHODS = ("GET", "POST", "HEAD")
HC_PROTOCOLS = ("HTTP", "HTTPS", "TCP", "gRPC")
HTTP_CODES = ("http_2xx", "http_3xx", "http_4xx", "http_5xx")
STICKY_TYPES = ("Insert", "Server")
SERVER_TYPES_BY_GROUP = {"Instance": ("Ecs", "Eni", "Eci"), "Ip": ("Ip",)}
ALL_SERVER_TYPES = ("Ecs", "Eni", "Eci", "Ip")

MAX_SERVERS_PER_GROUP = 1000
MAX_SERVERS_PER_CALL = 200

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Reader:
    """Reads typed values out of a mapping, recording a problem for each bad one."""

    __slots__ = ("problems",)

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def bad(self, name: str, field: str, message: str) -> None:
        self.problems.append((f"IllegalParam.{name}", field, message))

    def missing(self, name: str, field: str, message: str) -> None:
        self.problems.append((f"MissingParam.{name}", field, message))

    def integer(
        self, src: Mapping[str, Any], key: str, field: str, lo: int, hi: int, default: int
    ) -> int:
        raw = src.get(key)
        name = _upper(key)
        if raw is None or raw == "":
            return default
        value: int | None = None
        if isinstance(raw, bool):
            value = None
        elif isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"-?\d{1,12}", raw.strip()):
            value = int(raw.strip())
        if value is None:
            self.bad(name, field, f"{name} must be an integer from {lo} to {hi}, not {raw!r}")
            return default
        if not lo <= value <= hi:
            self.bad(name, field, f"{name} must be from {lo} to {hi}, not {value}")
            return default
        return value

    def boolean(self, src: Mapping[str, Any], key: str, field: str, default: bool) -> bool:
        raw = src.get(key)
        if raw is None or raw == "":
            return default
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        name = _upper(key)
        self.bad(name, field, f"{name} must be true or false, not {raw!r}")
        return default

    def choice(
        self, src: Mapping[str, Any], key: str, field: str, allowed: Sequence[str], default: str
    ) -> str:
        raw = src.get(key)
        if raw is None or raw == "":
            return default
        name = _upper(key)
        if isinstance(raw, str):
            for option in allowed:
                if raw.strip().lower() == option.lower():
                    return option
        self.bad(name, field, f"{name} must be one of {', '.join(allowed)}, not {raw!r}")
        return default

    def text(self, src: Mapping[str, Any], key: str, field: str, max_len: int) -> str:
        raw = src.get(key)
        if raw is None:
            return ""
        name = _upper(key)
        if not isinstance(raw, str):
            self.bad(name, field, f"{name} must be a string, not {raw!r}")
            return ""
        if len(raw) > max_len:
            self.bad(name, field, f"{name} must be at most {max_len} characters")
            return ""
        return raw

    def mapping(self, src: Mapping[str, Any], key: str, field: str) -> Mapping[str, Any]:
        raw = src.get(key)
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            name = _upper(key)
            self.bad(name, field, f"{name} must be an object, not {raw!r}")
            return {}
        return raw


def _upper(key: str) -> str:
    return key[:1].upper() + key[1:]


# --------------------------------------------------------------------------- group fields


def _health_check(r: _Reader, src: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    f = "healthCheckConfig."
    enabled = r.boolean(src, "healthCheckEnabled", f + "healthCheckEnabled", False)
    default_proto = "gRPC" if protocol == "gRPC" else "HTTP"
    hc_proto = r.choice(
        src, "healthCheckProtocol", f + "healthCheckProtocol", HC_PROTOCOLS, default_proto
    )
    path = src.get("healthCheckPath")
    if path is None or path == "":
        path = "/"
    elif not isinstance(path, str) or not path.startswith("/") or len(path) > 80 or " " in path:
        r.bad(
            "HealthCheckPath",
            f + "healthCheckPath",
            "HealthCheckPath must start with / and be 1 to 80 characters without spaces",
        )
        path = "/"
    default_codes = ["0"] if hc_proto == "gRPC" else ["http_2xx", "http_3xx"]
    codes_raw = src.get("healthCheckCodes")
    codes: list[str] = default_codes
    if codes_raw is not None and codes_raw != []:
        items = codes_raw.split(",") if isinstance(codes_raw, str) else codes_raw
        if not isinstance(items, list | tuple) or not all(isinstance(c, str) for c in items):
            r.bad(
                "HealthCheckCodes",
                f + "healthCheckCodes",
                "HealthCheckCodes must be a list of strings",
            )
        elif hc_proto == "gRPC":
            codes = [c.strip() for c in items]
            if not all(_GRPC_CODE_RE.fullmatch(c) for c in codes):
                r.bad(
                    "HealthCheckCodes",
                    f + "healthCheckCodes",
                    "gRPC HealthCheckCodes are status codes such as 0 or ranges such as 0-99",
                )
                codes = default_codes
        else:
            codes = [c.strip().lower() for c in items]
            if not all(c in HTTP_CODES for c in codes):
                r.bad(
                    "HealthCheckCodes",
                    f + "healthCheckCodes",
                    f"HealthCheckCodes must be among {', '.join(HTTP_CODES)}",
                )
                codes = default_codes
            else:
                codes = sorted(set(codes))
    host = r.text(src, "healthCheckHost", f + "healthCheckHost", 80)
    if host and not _HOST_RE.fullmatch(host):
        r.bad(
            "HealthCheckHost",
            f + "healthCheckHost",
            "HealthCheckHost may hold only letters, digits, '.' and '-'",
        )
        host = ""
    interval = r.integer(src, "healthCheckInterval", f + "healthCheckInterval", 1, 50, 2)
    timeout = r.integer(src, "healthCheckTimeout", f + "healthCheckTimeout", 1, 300, 5)
    return {
        "healthCheckEnabled": enabled,
        "healthCheckProtocol": hc_proto,
        "healthCheckPath": path,
        "healthCheckMethod": r.choice(
            src, "healthCheckMethod", f + "healthCheckMethod", HC_METHODS, "HEAD"
        ),
        "healthCheckInterval": interval,
        "healthCheckTimeout": timeout,
        "healthyThreshold": r.integer(src, "healthyThreshold", f + "healthyThreshold", 2, 10, 3),
        "unhealthyThreshold": r.integer(
            src, "unhealthyThreshold", f + "unhealthyThreshold", 2, 10, 3
        ),
        "healthCheckCodes": codes,
        "healthCheckConnectPort": r.integer(
            src, "healthCheckConnectPort", f + "healthCheckConnectPort", 0, 65535, 0
        ),
        "healthCheckHost": host,
    }


def _sticky(r: _Reader, src: Mapping[str, Any]) -> dict[str, Any]:
    f = "stickySessionConfig."
    enabled = r.boolean(src, "stickySessionEnabled", f + "stickySessionEnabled", False)
    kind = r.choice(src, "stickySessionType", f + "stickySessionType", STICKY_TYPES, "Insert")
    timeout = r.integer(src, "cookieTimeout", f + "cookieTimeout", 1, 86400, 1000)
    cookie = r.text(src, "cookie", f + "cookie", 200)
    if cookie and not _COOKIE_RE.fullmatch(cookie):
        r.bad("Cookie", f + "cookie", "Cookie must be a cookie name: no spaces, ';' or ','")
        cookie = ""
    if enabled and kind == "Server" and not cookie:
        r.missing("Cookie", f + "cookie", "Cookie is required when StickySessionType is Server")
    return {
        "stickySessionEnabled": enabled,
        "stickySessionType": kind,
        "cookieTimeout": timeout,
        "cookie": cookie,
    }


def normalize_group_spec(
    spec: Mapping[str, Any], settings: NetworkSettings
) -> tuple[dict[str, Any], list[Problem]]:
    """The spec with every default filled in, and every problem found.

    ``serverGroupId`` is checked when present (``sgp-`` and lowercase letters or digits) and
    copied; the caller decides whether it is required.
    """
    r = _Reader()
    out: dict[str, Any] = {}
    gid = spec.get("serverGroupId")
    if gid is not None:
        if not isinstance(gid, str) or not GROUP_ID_RE.fullmatch(gid):
            r.bad(
                "ServerGroupId",
                "serverGroupId",
                f"ServerGroupId must be sgp- followed by lowercase letters or digits, not {gid!r}",
            )
        else:
            out["serverGroupId"] = gid
    name = spec.get("serverGroupName")
    if name is None or name == "":
        r.missing("ServerGroupName", "serverGroupName", "ServerGroupName is required")
    elif (why := group_name_problem(name)) is not None:
        r.bad("ServerGroupName", "serverGroupName", why)
    out["serverGroupName"] = name if isinstance(name, str) else ""
    group_type = r.choice(spec, "serverGroupType", "serverGroupType", GROUP_TYPES, "Instance")
    out["serverGroupType"] = group_type
    protocol = r.choice(spec, "protocol", "protocol", PROTOCOLS, "HTTP")
    out["protocol"] = protocol
    scheduler = r.choice(spec, "scheduler", "scheduler", SCHEDULERS, "Wrr")
    out["scheduler"] = scheduler
    uch = r.mapping(spec, "uchConfig", "uchConfig")
    uch_value = r.text(uch, "value", "uchConfig.value", 100)
    uch_type = r.choice(uch, "type", "uchConfig.type", ("QueryString",), "QueryString")
    if scheduler == "Uch" and not uch_value:
        r.missing(
            "UchConfig",
            "uchConfig.value",
            "UchConfig.Value (the query-string key) is required with the Uch scheduler",
        )
    if uch_value or scheduler == "Uch":
        out["uchConfig"] = {"type": uch_type, "value": uch_value}
    vpc = r.text(spec, "vpcId", "vpcId", 128)
    out["vpcId"] = vpc
    out["healthCheckConfig"] = _health_check(
        r, r.mapping(spec, "healthCheckConfig", "healthCheckConfig"), protocol
    )
    out["stickySessionConfig"] = _sticky(
        r, r.mapping(spec, "stickySessionConfig", "stickySessionConfig")
    )
    servers_raw = spec.get("servers")
    servers: list[dict[str, Any]] = []
    if servers_raw is None:
        servers_raw = []
    if not isinstance(servers_raw, list | tuple):
        r.bad("Servers", "servers", "Servers must be a list")
        servers_raw = []
    if len(servers_raw) > MAX_SERVERS_PER_GROUP:
        r.problems.append(
            (
                "QuotaExceeded.ServersNum",
                "servers",
                f"a server group holds at most {MAX_SERVERS_PER_GROUP} servers",
            )
        )
    for i, item in enumerate(servers_raw):
        server, problems = normalize_server(item, group_type, settings, f"servers[{i}]")
        r.problems.extend(problems)
        if server is not None:
            servers.append(server)
    r.problems.extend(duplicate_servers(servers, "servers"))
    out["servers"] = servers
    return out, r.problems


def validate_group_spec(spec: Mapping[str, Any], settings: NetworkSettings) -> list[Problem]:
    """Every problem of a ServerGroup spec, as ``(code, field, message)``; empty when valid."""
    return normalize_group_spec(spec, settings)[1]


# --------------------------------------------------------------------------- servers


def server_key(server: Mapping[str, Any]) -> tuple[str, int]:
    """How a server is told apart inside a group: (ServerId, Port); Ip servers' id is the IP."""
    return (
        str(server.get("serverId") or server.get("serverIp") or ""),
        int(server.get("port") or 0),
    )


def duplicate_servers(servers: Sequence[Mapping[str, Any]], field: str) -> list[Problem]:
    seen: set[tuple[str, int]] = set()
    problems: list[Problem] = []
    for server in servers:
        key = server_key(server)
        if key in seen:
            problems.append(
                ("IllegalParam.Servers", field, f"server {key[0]}:{key[1]} is listed twice")
            )
        seen.add(key)
    return problems


def normalize_server(
    item: Any, group_type: str, settings: NetworkSettings, field: str, *, partial: bool = False
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """One server with defaults filled in, or None and the problems.

    ``partial``: only identify the server (ServerId/ServerIp, Port, ServerType), as
    RemoveServersFromServerGroup and UpdateServerGroupServersAttribute do; address rules and
    weight defaults are not applied.
    """
    r = _Reader()
    if not isinstance(item, Mapping):
        r.bad("Servers", field, "each server must be an object")
        return None, r.problems
    server_type = r.choice(item, "serverType", field + ".serverType", ALL_SERVER_TYPES, "")
    if not server_type and item.get("serverType") in (None, ""):
        r.missing("ServerType", field + ".serverType", f"{field}: ServerType is required")
    elif server_type and server_type not in SERVER_TYPES_BY_GROUP.get(group_type, ()):
        r.problems.append(
            (
                "Mismatch.ServerGroupType",
                field + ".serverType",
                f"{field}: a server of type {server_type} cannot join a server group of type {group_type} "
                f"(Instance groups take Ecs, Eni, Eci; Ip groups take Ip)",
            )
        )
    server_id = r.text(item, "serverId", field + ".serverId", 128)
    server_ip = r.text(item, "serverIp", field + ".serverIp", 64)
    if server_type == "Ip" or (not server_type and group_type == "Ip"):
        server_ip = server_ip or server_id
        server_id = server_id or server_ip
        if server_id != server_ip:
            r.bad(
                "ServerId",
                field + ".serverId",
                f"{field}: the ServerId of an Ip server is its ServerIp",
            )
    if not server_id:
        r.missing("ServerId", field + ".serverId", f"{field}: ServerId is required")
    port = r.integer(item, "port", field + ".port", 1, 65535, 0)
    if item.get("port") in (None, ""):
        r.missing("Port", field + ".port", f"{field}: Port is required")
    weight = r.integer(item, "weight", field + ".weight", 0, 100, 100)
    description = r.text(item, "description", field + ".description", 256)
    remote = r.boolean(item, "remoteIpEnabled", field + ".remoteIpEnabled", False)
    if partial:
        out: dict[str, Any] = {"serverId": server_id, "serverIp": server_ip, "port": port}
        if server_type:
            out["serverType"] = server_type
        if item.get("weight") not in (None, ""):
            out["weight"] = weight
        if item.get("description") is not None:
            out["description"] = description
        return (None if r.problems else out), r.problems
    if not server_ip:
        r.missing(
            "ServerIp",
            field + ".serverIp",
            f"{field}: ServerIp is required (albingress has no instance metadata to look it up)",
        )
    else:
        try:
            ip = ipaddress.ip_address(server_ip.strip())
        except ValueError:
            r.bad(
                "ServerIp",
                field + ".serverIp",
                f"{field}: ServerIp {server_ip!r} is not an IP address",
            )
        else:
            server_ip = str(ip)
            if server_type == "Ip":
                server_id = server_ip
            why = server_address_problem(ip, group_type, remote, settings)
            if why is not None:
                r.bad("ServerIp", field + ".serverIp", f"{field}: {why}")
    if remote and group_type != "Ip":
        r.bad(
            "RemoteIpEnabled",
            field + ".remoteIpEnabled",
            f"{field}: RemoteIpEnabled is only for Ip server groups",
        )
    if r.problems:
        return None, r.problems
    return {
        "serverType": server_type,
        "serverId": server_id,
        "serverIp": server_ip,
        "port": port,
        "weight": weight,
        "description": description,
        "remoteIpEnabled": remote,
    }, []
