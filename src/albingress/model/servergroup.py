"""ServerGroup objects (``albingress.dev/v1alpha1``), validated by the ALB API's rules.

The spec uses the ALB OpenAPI field names in lowerCamel (reference section 5). Hybrid rules:
Instance groups take Ecs/Eni/Eci servers, Ip groups take Ip servers; an Ip server outside the load
balancer's own network (``vpc_cidrs``) needs ``remoteIpEnabled`` and an address inside
``remote_cidrs`` (the private ranges by default), and public addresses are refused, so the load
balancer is never an open relay.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from albingress import ir
from albingress.diagnostics import Collector
from albingress.model.actions import SERVER_GROUP_ID
from albingress.model.fields import COOKIE_NAME, Fields

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PRIVATE_RANGES = ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16")
LOCAL_RANGES = ("127.0.0.0/8",)
MAX_SERVERS = 1000
INSTANCE_SERVER_TYPES = ("Ecs", "Eni", "Eci")


def _nets(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """Where servers may be: the load balancer's own network, and reachable remote ranges."""

    vpc_cidrs: tuple[Network, ...] = field(default_factory=lambda: _nets(LOCAL_RANGES))
    remote_cidrs: tuple[Network, ...] = field(default_factory=lambda: _nets(PRIVATE_RANGES))

    @classmethod
    def from_strings(
        cls, vpc: tuple[str, ...] = (), remote: tuple[str, ...] = ()
    ) -> NetworkSettings:
        """Build from CIDR strings; raises ValueError naming a malformed one."""
        return cls(_nets(vpc or LOCAL_RANGES), _nets(remote or PRIVATE_RANGES))


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")
_NAME_CHARS = re.compile(r"[\w.\-]+")


def _within(ip: IPAddress, nets: tuple[Network, ...]) -> bool:
    return any(ip in net for net in nets if net.version == ip.version)


def _is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_SPACE:
        return False
    return not (ip.is_private or ip.is_loopback)


def _show(nets: tuple[Network, ...]) -> str:
    return ", ".join(map(str, nets))


def server_address_problem(
    ip: IPAddress, group_type: str, remote: bool, network: NetworkSettings
) -> str | None:
    """Why a server at ``ip`` may not join a group of ``group_type``, or None when it may.

    The one copy of the hybrid rules, used by the compiler (ServerGroup manifests) and by the API.
    """
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return f"{ip} cannot be a server address"
    if _within(ip, network.vpc_cidrs):
        return None
    if group_type != "Ip":
        return (
            f"{ip} is outside the load balancer's network ({_show(network.vpc_cidrs)}); "
            "remote servers go into Ip server groups with RemoteIpEnabled"
        )
    if not remote:
        return (
            f"{ip} is outside the load balancer's network ({_show(network.vpc_cidrs)}); "
            "set RemoteIpEnabled to attach a remote server"
        )
    if _is_public(ip):
        return f"{ip} is a public address; remote servers must have private addresses"
    if not _within(ip, network.remote_cidrs):
        return f"{ip} is outside the remote ranges ({_show(network.remote_cidrs)})"
    return None


def group_name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid ServerGroupName, or None when it is."""
    if not isinstance(name, str) or not 2 <= len(name) <= 128:
        return "ServerGroupName must be 2 to 128 characters long"
    if not name[0].isalpha():
        return "ServerGroupName must start with a letter"
    if not _NAME_CHARS.fullmatch(name):
        return "ServerGroupName may hold only letters, digits, '.', '_' and '-'"
    return None


def parse_server_group(
    spec: Mapping[str, Any], diag: Collector, network: NetworkSettings, where: str = "spec"
) -> ir.ServerGroup | None:
    """An IR server group from a ServerGroup spec; ``None`` when it has any error."""
    before = len(diag.items)
    f = Fields(spec, where, diag)
    group_id = f.string("serverGroupId", "ServerGroup.InvalidId", required=True)
    if group_id and not SERVER_GROUP_ID.fullmatch(group_id):
        diag.error(
            "ServerGroup.InvalidId",
            f.path("serverGroupId"),
            f"{group_id!r} is not sgp- followed by lowercase letters and digits",
        )
    elif group_id.endswith("*"):
        diag.warn(
            "ServerGroup.MaskedId",
            f.path("serverGroupId"),
            f"{group_id!r} ends in '*', as the Alibaba documentation masks IDs; accepted as written",
        )
    name = f.string("serverGroupName", "ServerGroup.InvalidName") or group_id
    if f.has("serverGroupName") and (why := group_name_problem(name)):
        diag.error("ServerGroup.InvalidName", f.path("serverGroupName"), why)
    group_type = f.string("serverGroupType", "ServerGroup.InvalidType") or "Instance"
    if group_type not in ("Instance", "Ip"):
        diag.error(
            "ServerGroup.InvalidType",
            f.path("serverGroupType"),
            f"serverGroupType {group_type!r} is not Instance or Ip",
        )
    protocol = _enum(f, "protocol", ir.Protocol, ir.Protocol.HTTP)
    scheduler = _enum(f, "scheduler", ir.Scheduler, ir.Scheduler.WRR)
    uch_key = ""
    uch = f.obj("uchConfig", "ServerGroup.InvalidUchConfig")
    if uch is not None:
        if uch.string("type", "ServerGroup.InvalidUchConfig") not in ("QueryString", ""):
            diag.error(
                "ServerGroup.InvalidUchConfig",
                uch.path("type"),
                "uchConfig.type must be QueryString",
            )
        uch_key = uch.string("value", "ServerGroup.InvalidUchConfig")
    if scheduler is ir.Scheduler.UCH and not uch_key:
        diag.error(
            "ServerGroup.InvalidUchConfig",
            f.path("uchConfig"),
            "scheduler Uch needs uchConfig.value (the query-string key)",
        )
    health = parse_health_check(f.obj("healthCheckConfig", "ServerGroup.InvalidHealthCheck"))
    if protocol is ir.Protocol.HTTPS and health.enabled and health.protocol == "HTTP":
        diag.warn(
            "ServerGroup.PlainHealthCheck",
            f.path("healthCheckConfig"),
            "the group's protocol is HTTPS but its health checks speak plain HTTP; set "
            "healthCheckProtocol HTTPS (or TCP) if the servers only speak TLS",
        )
    sticky = _sticky(f.obj("stickySessionConfig", "ServerGroup.InvalidStickySession"))
    servers = _servers(f, group_type, network)
    f.string("vpcId", "ServerGroup.InvalidVpcId")
    f.string("resourceGroupId", "ServerGroup.InvalidResourceGroupId")
    f.warn_unknown((), "ServerGroup.UnknownField")
    if any(d.is_error for d in diag.items[before:]):
        return None
    return ir.ServerGroup(
        id=group_id,
        name=name,
        source=ir.GroupSource.SERVER_GROUP,
        protocol=protocol,
        scheduler=scheduler,
        servers=tuple(sorted(servers, key=lambda s: (s.address, s.port))),
        health_check=health,
        sticky=sticky,
        uch_key=uch_key,
        group_type=group_type,
    )


def _enum(f: Fields, name: str, enum_type: Any, default: Any) -> Any:
    raw = f.string(name, f"ServerGroup.Invalid{name.capitalize()}")
    if not raw:
        return default
    for member in enum_type:
        if member.value.lower() == raw.lower():
            return member
    values = ", ".join(m.value for m in enum_type)
    f.diag.error(
        f"ServerGroup.Invalid{name.capitalize()}",
        f.path(name),
        f"{name} {raw!r} is not one of {values}",
    )
    return default


def parse_health_check(c: Fields | None) -> ir.HealthCheck:
    d = ir.HealthCheck()
    if c is None:
        return d
    code = "ServerGroup.InvalidHealthCheck"
    enabled = c.boolean("healthCheckEnabled", code)
    path = c.string("healthCheckPath", code) or d.path
    if not path.startswith("/"):
        c.diag.error(code, c.path("healthCheckPath"), f"healthCheckPath {path!r} must start with /")
    method = c.string("healthCheckMethod", code) or d.method
    if method.upper() not in ("GET", "POST", "HEAD"):
        c.diag.error(
            code,
            c.path("healthCheckMethod"),
            f"healthCheckMethod {method!r} is not GET, POST or HEAD",
        )
    protocol = c.string("healthCheckProtocol", code) or d.protocol
    if protocol not in ("HTTP", "HTTPS", "TCP", "gRPC"):
        c.diag.error(
            code,
            c.path("healthCheckProtocol"),
            f"healthCheckProtocol {protocol!r} is not HTTP, HTTPS, TCP or gRPC",
        )
    codes_raw = c.array("healthCheckCodes", code)
    codes = d.codes
    if codes_raw is not None:
        if not codes_raw or not all(isinstance(x, str) and x for x in codes_raw):
            c.diag.error(
                code,
                c.path("healthCheckCodes"),
                'healthCheckCodes is a non-empty list like ["http_2xx"]',
            )
        else:
            codes = tuple(codes_raw)
    return ir.HealthCheck(
        enabled=enabled,
        protocol=protocol,
        path=path,
        method=method.upper(),
        codes=codes,
        interval=c.integer("healthCheckInterval", code, lo=1, hi=50, default=d.interval)
        or d.interval,
        timeout=c.integer("healthCheckTimeout", code, lo=1, hi=300, default=d.timeout) or d.timeout,
        healthy_threshold=c.integer("healthyThreshold", code, lo=2, hi=10, default=3) or 3,
        unhealthy_threshold=c.integer("unhealthyThreshold", code, lo=2, hi=10, default=3) or 3,
        connect_port=c.integer("healthCheckConnectPort", code, lo=0, hi=65535, default=0) or 0,
        host=c.string("healthCheckHost", code),
    )


def _sticky(c: Fields | None) -> ir.StickySession:
    if c is None:
        return ir.StickySession()
    code = "ServerGroup.InvalidStickySession"
    enabled = c.boolean("stickySessionEnabled", code)
    stype = c.string("stickySessionType", code) or "Insert"
    if stype not in ("Insert", "Server"):
        c.diag.error(
            code,
            c.path("stickySessionType"),
            f"stickySessionType {stype!r} is not Insert or Server",
        )
    timeout = c.integer("cookieTimeout", code, lo=1, hi=86400, default=1000) or 1000
    cookie = c.string("cookie", code)
    if enabled and stype == "Server" and not cookie:
        c.diag.error(
            code, c.path("cookie"), "stickySessionType Server needs the backend's cookie name"
        )
    elif cookie and not COOKIE_NAME.fullmatch(cookie):
        c.diag.error(
            code,
            c.path("cookie"),
            f"cookie {cookie!r} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        )
    return ir.StickySession(enabled, stype, timeout, cookie)


def _servers(f: Fields, group_type: str, network: NetworkSettings) -> list[ir.Server]:
    raw = f.array("servers", "ServerGroup.InvalidServers") or []
    diag = f.diag
    if len(raw) > MAX_SERVERS:
        diag.error(
            "ServerGroup.TooManyServers",
            f.path("servers"),
            f"{len(raw)} servers; at most {MAX_SERVERS} in one group",
        )
    servers: list[ir.Server] = []
    seen: set[tuple[str, str, int]] = set()
    for index, item in enumerate(raw):
        where = f"{f.path('servers')}[{index}]"
        if not isinstance(item, dict):
            diag.error("ServerGroup.InvalidServer", where, "each server must be an object")
            continue
        s = Fields(item, where, diag)
        code = "ServerGroup.InvalidServer"
        stype = s.string("serverType", code) or ("Ip" if group_type == "Ip" else "Ecs")
        if group_type == "Ip" and stype != "Ip":
            diag.error(
                "Mismatch.ServerGroupType",
                s.path("serverType"),
                f"an Ip server group takes Ip servers, not {stype}",
            )
        elif group_type == "Instance" and stype not in INSTANCE_SERVER_TYPES:
            diag.error(
                "Mismatch.ServerGroupType",
                s.path("serverType"),
                f"an Instance server group takes Ecs, Eni or Eci servers, not {stype}",
            )
        ip_text = s.string("serverIp", code)
        server_id = s.string("serverId", code) or ip_text
        if stype == "Ip" and not ip_text:
            ip_text = server_id
        if not ip_text:
            diag.error(
                code, s.path("serverIp"), "serverIp is required (the address to send traffic to)"
            )
            continue
        port = s.integer("port", code, lo=1, hi=65535, required=True)
        weight = s.integer("weight", code, lo=0, hi=100, default=100)
        remote = s.boolean("remoteIpEnabled", code)
        description = s.string("description", code)
        s.warn_unknown((), "ServerGroup.UnknownField")
        if remote and group_type != "Ip":
            diag.error(
                code, s.path("remoteIpEnabled"), "remoteIpEnabled is only for servers of Ip groups"
            )
        try:
            problem = server_address_problem(
                ipaddress.ip_address(ip_text), group_type, remote, network
            )
        except ValueError:
            problem = f"{ip_text!r} is not an IP address"
        if problem:
            diag.error("ServerGroup.AddressNotAllowed", s.path("serverIp"), problem)
            continue
        if port is None or weight is None:
            continue
        key = (server_id, ip_text, port)
        if key in seen:
            diag.error(
                "ServerGroup.DuplicateServer",
                where,
                f"server {server_id} {ip_text}:{port} is listed twice",
            )
            continue
        seen.add(key)
        servers.append(ir.Server(ip_text, port, weight, server_id, stype, remote, description))
    return servers
