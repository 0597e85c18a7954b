"""The ``albingress`` command: one sub-command per job.

Exit codes: 0 success, 1 the input has errors (or a runtime failure), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from albingress import __version__, ir
from albingress.compile.compiler import CompileOptions, CompileResult, compile_snapshot
from albingress.compile.render import render_plan
from albingress.diagnostics import ConfigError
from albingress.flags import (
    FlagError,
    add_balancer_flags,
    add_network_flags,
    balancer_options,
    network_from_args,
)
from albingress.model.servergroup import NetworkSettings
from albingress.sources import files
from albingress.sources.snapshot import with_api_groups


class UsageError(Exception):
    """The command line is wrong: exit 2."""


def compile_paths(
    paths: Sequence[str], network: NetworkSettings, state: str | None = None
) -> CompileResult:
    """Compile manifests, with the server groups of a state file when one is named."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or directory: {', '.join(missing)}")
    snapshot = files.load(paths)
    if state is not None:
        if not Path(state).is_file():
            raise UsageError(f"--state {state}: no such state file")
        from albingress.servergroups.sqlite import SqliteStore

        store = SqliteStore(state)
        try:
            snapshot = with_api_groups(snapshot, store.objects(), f"state:{state}")
        finally:
            store.close()
    return compile_snapshot(snapshot, CompileOptions(network=network))


def cmd_validate(args: argparse.Namespace) -> int:
    result = compile_paths(args.paths, network_from_args(args), args.state)
    diags = result.diagnostics
    if args.format == "json":
        print(json.dumps([d.to_json() for d in diags], indent=2))
    else:
        for d in diags:
            print(d.line())
        errors = sum(1 for d in diags if d.is_error)
        warnings = len(diags) - errors
        ok = len(result.served) - len(result.failed)
        print(
            f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}; "
            f"{ok} of {len(result.served)} Ingresses valid",
            file=sys.stderr if diags else sys.stdout,
        )
    return 1 if result.has_errors else 0


def cmd_plan(args: argparse.Namespace) -> int:
    result = compile_paths(args.paths, network_from_args(args), args.state)
    if args.format == "json":
        print(json.dumps(ir.to_json(result.ir), indent=2, sort_keys=True))
    else:
        print(render_plan(result.ir), end="")
        errors = [d for d in result.diagnostics if d.is_error]
        if errors:
            print(
                f"\n{len(errors)} errors: the rules they concern are left out "
                "(run `albingress validate` for details)",
                file=sys.stderr,
            )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from albingress import explain

    if bool(args.manifests) == bool(args.admin):
        raise UsageError("give --manifests DIR or --admin HOST:PORT (one of them)")
    if args.manifests and not all(Path(p).exists() for p in args.manifests):
        raise UsageError(f"no such file or directory: {', '.join(args.manifests)}")
    headers = []
    for item in args.header or ():
        name, sep, value = item.partition(":")
        if not sep:
            raise UsageError(f"--header {item!r}: expected NAME:VALUE")
        headers.append((name.strip().encode(), value.strip().encode()))
    path, _, query = args.path.partition("?")
    try:
        table, unhealthy = explain.load(args.manifests, args.admin, network_from_args(args))
    except OSError as exc:
        print(
            f"albingress explain: cannot reach the admin API at {args.admin}: {exc}",
            file=sys.stderr,
        )
        return 1
    req = explain.Request(
        args.host,
        path or "/",
        args.method.upper(),
        query,
        tuple(headers),
        args.client_ip,
        args.listener,
    )
    result = explain.explain(table, req, unhealthy)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(explain.render(result), end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from albingress.serve import run

    _setup_logging(args.log_level)
    options = balancer_options(args, Path(args.manifests))
    if not options.manifests.is_dir():
        raise UsageError(f"--manifests {args.manifests}: not a directory")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        pass
    return asyncio.run(run(options))


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="albingress",
        description="A self-hosted ALB Ingress: Alibaba Cloud ALB Ingress manifests on your own machines.",
    )
    parser.add_argument("--version", action="version", version=f"albingress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check manifests; one line per problem")
    p.add_argument("paths", nargs="+", metavar="PATH", help="manifest files or directories")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--state", help="also use the server groups of this state file (serve's SQLite)")
    add_network_flags(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="print the routing table the load balancer would use")
    p.add_argument("paths", nargs="+", metavar="PATH", help="manifest files or directories")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--state", help="also use the server groups of this state file (serve's SQLite)")
    add_network_flags(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("explain", help="which rule a request hits, its server groups, and why")
    p.add_argument("host", metavar="HOST")
    p.add_argument("path", metavar="PATH", help="the request path, with an optional ?query")
    p.add_argument("--manifests", action="append", metavar="PATH", help="compile these manifests")
    p.add_argument("--admin", metavar="HOST:PORT", help="ask a running load balancer instead")
    p.add_argument("--method", default="GET")
    p.add_argument("--header", action="append", metavar="NAME:VALUE")
    p.add_argument("--client-ip", default="127.0.0.1")
    p.add_argument("--listener", type=int, default=80, help="ALB listener port (default 80)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    add_network_flags(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("serve", help="run the load balancer from a directory of manifests")
    p.add_argument(
        "--manifests", required=True, metavar="DIR", help="manifests directory (watched)"
    )
    add_balancer_flags(p)
    p.set_defaults(func=cmd_serve)

    from albingress import demo
    from albingress.api import sgcli

    demo.add_parser(sub)
    sgcli.add_parser(sub)
    from albingress import controller, webhook

    controller.add_parser(sub)
    webhook.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "servergroups":
        from albingress.api import sgcli

        return sgcli.run(args)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except (UsageError, FlagError) as exc:
        print(f"albingress {args.command}: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"albingress {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
