"""Command-line flags shared by several commands, and the options they build.

``serve`` and ``controller`` run the same load balancer, so they take the same flags for it:
listeners, admin address, state, workers, credentials, the hybrid-network ranges, and one flag per
data-plane setting (generated from :class:`~albingress.dataplane.settings.ProxySettings`, so a new
setting is a new flag with its default and unit in the help).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from albingress.diagnostics import ConfigError
from albingress.model.servergroup import NetworkSettings

if TYPE_CHECKING:
    from albingress.serve import ServeOptions


class FlagError(ConfigError):
    """A flag's value is unusable: a usage error (exit 2)."""


def add_network_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vpc-cidr",
        action="append",
        metavar="CIDR",
        help="the load balancer's own network (repeatable; default 127.0.0.0/8)",
    )
    p.add_argument(
        "--remote-cidr",
        action="append",
        metavar="CIDR",
        help="ranges remote (RemoteIpEnabled) servers may be in (repeatable; default: private ranges)",
    )


def network_from_args(args: argparse.Namespace) -> NetworkSettings:
    try:
        return NetworkSettings.from_strings(
            tuple(args.vpc_cidr or ()), tuple(args.remote_cidr or ())
        )
    except ValueError as exc:
        raise FlagError(f"bad CIDR: {exc}") from exc


def _proxy_fields() -> list[tuple[str, type, Any, str]]:
    from albingress.dataplane.settings import ProxySettings

    hints = {
        "connect_timeout": "seconds to connect to a server",
        "response_timeout": "seconds to the first byte of a server's response (then 504)",
        "idle_timeout": "seconds a client connection may idle between requests",
        "drain_timeout": "seconds in-flight requests get to finish on SIGTERM",
        "max_header_bytes": "request line and headers, bytes (over it: 431)",
        "max_connections": "client connections per worker (over it: refused)",
        "max_retries": "extra tries on another server when nothing was sent yet",
        "max_headers": "header fields in one message",
        "max_body_bytes": "request body, bytes; 0: no limit, as ALB (over it: 413)",
    }
    out = []
    for f in dataclasses.fields(ProxySettings):
        default = f.default
        kind = (
            type(default)
            if isinstance(default, int | float) and not isinstance(default, bool)
            else None
        )
        if kind is None:
            continue
        out.append((f.name, kind, default, hints.get(f.name, f.name.replace("_", " "))))
    return out


def add_balancer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        action="append",
        metavar="PORT=HOST:PORT",
        help="bind ALB listener PORT to a local address (default 80=127.0.0.1:8080, 443=127.0.0.1:8443)",
    )
    p.add_argument("--admin", default="127.0.0.1:9080", metavar="HOST:PORT", help="admin address")
    p.add_argument("--state", default=".albingress/state.db", help="state file (SQLite)")
    p.add_argument(
        "--workers", type=int, default=0, help="worker processes (default: one per core)"
    )
    p.add_argument("--credentials", help="AccessKey file for the server-group API")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--access-log",
        default="-",
        metavar="PATH|-|off",
        help="one JSON line per request: to standard output (-, the default), a file, or off",
    )
    p.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count requests for /metrics and the live page (default on)",
    )
    add_network_flags(p)
    limits = p.add_argument_group("data-plane limits and timeouts")
    for name, kind, default, hint in _proxy_fields():
        limits.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            metavar="N",
            help=f"{hint} (default {default})",
        )


def balancer_options(args: argparse.Namespace, manifests: Path = Path(".")) -> ServeOptions:
    """ServeOptions from the flags of :func:`add_balancer_flags`; ConfigError on a bad value."""
    from albingress.dataplane.accesslog import parse_destination
    from albingress.dataplane.settings import ProxySettings
    from albingress.serve import ServeOptions, parse_address, parse_listen

    changes = {
        name: getattr(args, name)
        for name, _, _, _ in _proxy_fields()
        if getattr(args, name, None) is not None
    }
    if args.workers < 0:
        raise FlagError("--workers must be 0 (one per core) or more")
    try:
        proxy = ProxySettings(**changes)
    except ConfigError as exc:
        raise FlagError(str(exc)) from exc
    return ServeOptions(
        manifests=manifests,
        listen=parse_listen(args.listen or ()),
        admin=parse_address(args.admin, "--admin"),
        state=Path(args.state),
        workers=args.workers,
        network=network_from_args(args),
        credentials=Path(args.credentials) if args.credentials else None,
        proxy=proxy,
        metrics=args.metrics,
        access_log=parse_destination(args.access_log),
    )
