"""``albingress servergroups ...``: a friendly CLI over the server-group API.

It is a real client of the API: every command goes through the official ALB SDK
(``alibabacloud-alb20200616``) to the admin address, signed with an access key from
``--credentials FILE`` or from ``credentials.yaml`` next to the ``--state`` file (where ``serve``
creates one on first start). Tables by default, ``--format json`` for machines. API errors print
the API's code and message and exit 1; a bad command line exits 2.

Servers are written ``[SERVER_ID@]IP:PORT[/WEIGHT]`` (``[::1]:80`` for IPv6); an Ip group's
server id is its IP, an Instance group's (``i-...``) is given before ``@``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from albingress.api.sgclient import ApiFailure, all_groups, all_servers, call, find_key, make_client
from albingress.diagnostics import ConfigError

DEFAULT_ADMIN = "127.0.0.1:9080"
DEFAULT_STATE = ".albingress/state.db"
_SERVER_RE = re.compile(
    r"^(?:(?P<id>[^@\s]+)@)?(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]+):(?P<port>\d{1,5})(?:/(?P<weight>\d{1,3}))?$"
)


class UsageError(Exception):
    """The command line is wrong (exit 2)."""


@dataclass(frozen=True, slots=True)
class ServerArg:
    server_id: str
    ip: str
    port: int
    weight: int | None


def parse_server(text: str) -> ServerArg:
    match = _SERVER_RE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"bad server {text!r}: write [SERVER_ID@]IP:PORT[/WEIGHT]")
    ip = match.group("ip").strip("[]")
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError as exc:
        raise UsageError(f"bad server {text!r}: {ip!r} is not an IP address") from exc
    port = int(match.group("port"))
    weight = int(match.group("weight")) if match.group("weight") else None
    return ServerArg(match.group("id") or ip, ip, port, weight)


# --------------------------------------------------------------------------- arguments


def _common(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the command; only the outer level sets defaults, so a
    value given before the command is not reset by the command's parser."""

    def d(value: str) -> str:
        return value if defaults else argparse.SUPPRESS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--admin",
        default=d(DEFAULT_ADMIN),
        metavar="HOST:PORT",
        help=f"admin address (default {DEFAULT_ADMIN})",
    )
    p.add_argument(
        "--state",
        default=d(DEFAULT_STATE),
        metavar="PATH",
        help=f"state file of serve, whose credentials.yaml is used (default {DEFAULT_STATE})",
    )
    p.add_argument(
        "--credentials",
        default=None if defaults else argparse.SUPPRESS,
        metavar="FILE",
        help="credentials file (accessKeys: [{accessKeyId, accessKeySecret}])",
    )
    p.add_argument("--format", choices=("table", "json"), default=d("table"))
    return p


def add_parser(subparsers: Any) -> None:
    """Add ``servergroups`` and its commands to the ``albingress`` sub-command parsers."""
    sg = subparsers.add_parser(
        "servergroups", help="manage server groups through the ALB API", parents=[_common(True)]
    )
    common = _common(False)
    cmds = sg.add_subparsers(dest="sg_command", metavar="COMMAND", required=True)

    create = cmds.add_parser("create", parents=[common], help="create a server group")
    create.add_argument(
        "--name", required=True, help="ServerGroupName (2-128, starts with a letter)"
    )
    create.add_argument(
        "--type", default="Ip", choices=("Ip", "Instance"), help="ServerGroupType (default Ip)"
    )
    create.add_argument("--protocol", choices=("HTTP", "HTTPS", "gRPC"))
    create.add_argument("--scheduler", choices=("Wrr", "Wlc", "Sch", "Uch"))
    create.add_argument("--uch-key", help="query-string key hashed by the Uch scheduler")
    create.add_argument("--vpc-id")
    hc = create.add_argument_group("health checks")
    hc.add_argument("--health-check", action=argparse.BooleanOptionalAction, default=None)
    hc.add_argument("--health-check-path")
    hc.add_argument("--health-check-method", choices=("GET", "POST", "HEAD"))
    hc.add_argument("--health-check-protocol", choices=("HTTP", "HTTPS", "TCP", "gRPC"))
    hc.add_argument("--health-check-interval", type=int)
    hc.add_argument("--health-check-timeout", type=int)
    hc.add_argument("--healthy-threshold", type=int)
    hc.add_argument("--unhealthy-threshold", type=int)
    hc.add_argument("--health-check-codes", help="comma separated, e.g. http_2xx,http_3xx")
    hc.add_argument("--health-check-port", type=int, help="connect port (0 = the server's port)")
    hc.add_argument("--health-check-host")
    st = create.add_argument_group("sticky sessions")
    st.add_argument(
        "--sticky", choices=("Insert", "Server"), help="enable sticky sessions of this type"
    )
    st.add_argument("--cookie", help="the backend's cookie (with --sticky Server)")
    st.add_argument("--cookie-timeout", type=int)
    create.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="SERVER",
        help="add a server after creating (repeatable)",
    )
    _server_flags(create)

    cmds.add_parser("list", parents=[common], help="list server groups")
    for name, text in (("show", "a group and its servers"), ("delete", "delete a server group")):
        p = cmds.add_parser(name, parents=[common], help=text)
        p.add_argument("group_id", metavar="ID")
    for name, text in (
        ("add-servers", "add servers to a group"),
        ("remove-servers", "remove servers from a group"),
        ("update-servers", "change servers' weight or description"),
    ):
        p = cmds.add_parser(name, parents=[common], help=text)
        p.add_argument("group_id", metavar="ID")
        p.add_argument("servers", nargs="+", metavar="SERVER", help="[SERVER_ID@]IP:PORT[/WEIGHT]")
        _server_flags(p)


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight", type=int, help="weight 0-100 for servers given without /WEIGHT")
    p.add_argument("--description")
    p.add_argument(
        "--remote",
        action="store_true",
        help="RemoteIpEnabled: a cross-region or on-premises server",
    )
    p.add_argument(
        "--server-type",
        choices=("Ecs", "Eni", "Eci"),
        help="server type in Instance groups (default Ecs)",
    )


# --------------------------------------------------------------------------- output


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [
        ["" if v is None else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.format == "json" else text)


def _servers_table(servers: list[dict[str, Any]]) -> str:
    rows = [
        (
            s.get("ServerId"),
            s.get("ServerIp"),
            s.get("Port"),
            s.get("Weight"),
            s.get("ServerType"),
            "yes" if s.get("RemoteIpEnabled") else "",
            s.get("Status"),
            s.get("Description"),
        )
        for s in servers
    ]
    return table(
        rows, ("SERVER", "IP", "PORT", "WEIGHT", "TYPE", "REMOTE", "STATUS", "DESCRIPTION")
    )


# --------------------------------------------------------------------------- commands


def _group_row(g: dict[str, Any]) -> tuple[Any, ...]:
    hc = g.get("HealthCheckConfig") or {}
    return (
        g.get("ServerGroupId"),
        g.get("ServerGroupName"),
        g.get("ServerGroupType"),
        g.get("Protocol"),
        g.get("Scheduler"),
        g.get("ServerCount"),
        "on" if hc.get("HealthCheckEnabled") else "off",
    )


_GROUP_HEADERS = ("ID", "NAME", "TYPE", "PROTOCOL", "SCHEDULER", "SERVERS", "HEALTHCHECK")


def _server_maps(
    args: argparse.Namespace, group_type: str, *, partial: bool
) -> list[dict[str, Any]]:
    if args.weight is not None and not 0 <= args.weight <= 100:
        raise UsageError("--weight must be from 0 to 100")
    out = []
    for text in args.servers:
        server = parse_server(text)
        stype = "Ip" if group_type == "Ip" else (args.server_type or "Ecs")
        if group_type == "Ip" and server.server_id != server.ip:
            raise UsageError(
                f"bad server {text!r}: an Ip group's server id is its IP; drop the ID@"
            )
        item: dict[str, Any] = {
            "ServerType": stype,
            "ServerId": server.server_id,
            "ServerIp": server.ip,
            "Port": server.port,
        }
        weight = server.weight if server.weight is not None else args.weight
        if weight is not None:
            item["Weight"] = weight
        if args.description is not None:
            item["Description"] = args.description
        if not partial and args.remote:
            item["RemoteIpEnabled"] = True
        out.append(item)
    return out


def _group_type(client: Any, gid: str) -> str:
    groups = all_groups(client, [gid])
    if not groups:
        raise ApiFailure(f"ResourceNotFound.ServerGroup: The server group {gid} does not exist.")
    return str(groups[0].get("ServerGroupType") or "Instance")


def cmd_create(args: argparse.Namespace, client: Any) -> int:
    from alibabacloud_alb20200616 import models as m

    hc: dict[str, Any] = {
        "HealthCheckEnabled": args.health_check,
        "HealthCheckPath": args.health_check_path,
        "HealthCheckMethod": args.health_check_method,
        "HealthCheckProtocol": args.health_check_protocol,
        "HealthCheckInterval": args.health_check_interval,
        "HealthCheckTimeout": args.health_check_timeout,
        "HealthyThreshold": args.healthy_threshold,
        "UnhealthyThreshold": args.unhealthy_threshold,
        "HealthCheckCodes": args.health_check_codes.split(",") if args.health_check_codes else None,
        "HealthCheckConnectPort": args.health_check_port,
        "HealthCheckHost": args.health_check_host,
    }
    hc = {k: v for k, v in hc.items() if v is not None}
    req = m.CreateServerGroupRequest(
        server_group_name=args.name,
        server_group_type=args.type,
        protocol=args.protocol,
        scheduler=args.scheduler,
        vpc_id=args.vpc_id,
    )
    if args.uch_key:
        req.uch_config = m.CreateServerGroupRequestUchConfig(type="QueryString", value=args.uch_key)
    if hc:
        req.health_check_config = m.CreateServerGroupRequestHealthCheckConfig().from_map(hc)
    if args.sticky or args.cookie_timeout is not None or args.cookie:
        sticky: dict[str, Any] = {"StickySessionEnabled": bool(args.sticky)}
        if args.sticky:
            sticky["StickySessionType"] = args.sticky
        if args.cookie:
            sticky["Cookie"] = args.cookie
        if args.cookie_timeout is not None:
            sticky["CookieTimeout"] = args.cookie_timeout
        req.sticky_session_config = m.CreateServerGroupRequestStickySessionConfig().from_map(sticky)
    args.servers = args.server
    servers = _server_maps(args, args.type, partial=False) if args.server else []
    body = call(lambda: client.create_server_group(req)).body
    gid = body.server_group_id
    if servers:
        add = m.AddServersToServerGroupRequest(server_group_id=gid).from_map(
            {"ServerGroupId": gid, "Servers": servers}
        )
        call(lambda: client.add_servers_to_server_group(add))
    _emit(args, {"ServerGroupId": gid, "JobId": body.job_id}, str(gid))
    return 0


def cmd_list(args: argparse.Namespace, client: Any) -> int:
    groups = all_groups(client)
    _emit(args, groups, table([_group_row(g) for g in groups], _GROUP_HEADERS))
    return 0


def cmd_show(args: argparse.Namespace, client: Any) -> int:
    groups = all_groups(client, [args.group_id])
    if not groups:
        raise ApiFailure(
            f"ResourceNotFound.ServerGroup: The server group {args.group_id} does not exist."
        )
    group = groups[0]
    servers = all_servers(client, args.group_id)
    hc = group.get("HealthCheckConfig") or {}
    sticky = group.get("StickySessionConfig") or {}
    lines = [table([_group_row(group)], _GROUP_HEADERS), ""]
    if hc.get("HealthCheckEnabled"):
        lines.append(
            f"health check: {hc.get('HealthCheckProtocol')} {hc.get('HealthCheckMethod')} "
            f"{hc.get('HealthCheckPath')} every {hc.get('HealthCheckInterval')}s, timeout "
            f"{hc.get('HealthCheckTimeout')}s, healthy {hc.get('HealthyThreshold')}, unhealthy "
            f"{hc.get('UnhealthyThreshold')}, codes {','.join(hc.get('HealthCheckCodes') or [])}"
        )
    if sticky.get("StickySessionEnabled"):
        lines.append(
            f"sticky sessions: {sticky.get('StickySessionType')}, {sticky.get('CookieTimeout')}s"
        )
    lines.append(_servers_table(servers) if servers else "no servers")
    _emit(args, {**group, "Servers": servers}, "\n".join(lines))
    return 0


def cmd_delete(args: argparse.Namespace, client: Any) -> int:
    from alibabacloud_alb20200616 import models as m

    req = m.DeleteServerGroupRequest(server_group_id=args.group_id)
    body = call(lambda: client.delete_server_group(req)).body
    _emit(args, {"JobId": body.job_id}, f"deleted {args.group_id}")
    return 0


def cmd_servers(args: argparse.Namespace, client: Any) -> int:
    from alibabacloud_alb20200616 import models as m

    gid = args.group_id
    gtype = _group_type(client, gid)
    command = args.sg_command
    servers = _server_maps(args, gtype, partial=command != "add-servers")
    req: Any
    if command == "add-servers":
        req = m.AddServersToServerGroupRequest().from_map(
            {"ServerGroupId": gid, "Servers": servers}
        )
        body = call(lambda: client.add_servers_to_server_group(req)).body
    elif command == "remove-servers":
        plain = [
            {k: v for k, v in s.items() if k in ("ServerType", "ServerId", "ServerIp", "Port")}
            for s in servers
        ]
        req = m.RemoveServersFromServerGroupRequest().from_map(
            {"ServerGroupId": gid, "Servers": plain}
        )
        body = call(lambda: client.remove_servers_from_server_group(req)).body
    else:
        if all("Weight" not in s and "Description" not in s for s in servers):
            raise UsageError(
                "update-servers needs a weight (IP:PORT/WEIGHT or --weight) or --description"
            )
        req = m.UpdateServerGroupServersAttributeRequest().from_map(
            {"ServerGroupId": gid, "Servers": servers}
        )
        body = call(lambda: client.update_server_group_servers_attribute(req)).body
    verb = {"add-servers": "added", "remove-servers": "removed", "update-servers": "updated"}[
        command
    ]
    _emit(
        args,
        {"JobId": body.job_id},
        f"{verb} {len(servers)} server{'s' * (len(servers) != 1)} in {gid}",
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "create": cmd_create,
    "list": cmd_list,
    "show": cmd_show,
    "delete": cmd_delete,
    "add-servers": cmd_servers,
    "remove-servers": cmd_servers,
    "update-servers": cmd_servers,
}


def run(args: argparse.Namespace) -> int:
    """Run ``albingress servergroups <command>``: 0 done, 1 API or setup error, 2 usage error."""
    try:
        client = make_client(args.admin, find_key(args.state, args.credentials))
        return COMMANDS[args.sg_command](args, client)
    except UsageError as exc:
        print(f"albingress servergroups: {exc}", file=sys.stderr)
        return 2
    except (ApiFailure, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
