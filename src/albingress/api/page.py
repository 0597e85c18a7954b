"""The live traffic page at ``GET /`` of the admin address, and the data it polls.

``GET /`` without a query string answers the page (``static/index.html``: plain HTML, a small
script, no external assets, no build step). ``GET /`` with a query string and ``POST /`` stay the
ALB OpenAPI (:mod:`.openapi`): an OpenAPI call always carries ``Action`` and its signature in
the query or the body, so nothing the SDK sends is mistaken for a page view.

The page polls ``GET /api/v1/traffic`` (:func:`traffic`) every second: for each listener and
rule, each server group's configured weight and share against the share it measurably got
(over the last minute, see :class:`.metrics.MetricsView`; the script also shows the share of the
last seconds from successive polls), the servers with their health and request counts (rates in
the page), recent errors, and the diagnostics of Ingresses that failed to compile.
``?limit=N`` bounds the rules listed (default 500; the totals still count every rule).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from albingress import ir
from albingress.api.metrics import ConfigState, MetricsView
from albingress.api.server import AdminRequest, AdminResponse, AdminServer, Handler
from albingress.dataplane.metrics import merge

DEFAULT_LIMIT = 500
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@cache
def page_html() -> bytes:
    return (resources.files("albingress.api") / "static" / "index.html").read_bytes()


def page_or(openapi: Handler) -> Handler:
    """``GET /``: the page when there is no query string, else ``openapi``."""

    async def handle(req: AdminRequest) -> AdminResponse:
        if req.raw_query or req.method not in ("GET", "HEAD"):
            return await openapi(req)
        return AdminResponse(
            200,
            "text/html; charset=utf-8",
            page_html(),
            {"cache-control": "no-store", "x-content-type-options": "nosniff"},
        )

    return handle


def _describe(rule: ir.Rule) -> tuple[str, str]:
    path = "" if rule.path is None else f"{rule.path.value} ({rule.path.type.value})"
    return rule.host or "*", path or "(any path)"


def traffic(
    view: MetricsView,
    snapshots: Iterable[Mapping[str, Any]],
    state: ConfigState,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """The page's data: see the module docstring."""
    totals = merge(snapshots)
    config = state.config or ir.IR((), ())
    labels = view.labels(config)
    counts = view.group_counts(totals)
    measured = view.measured(counts)
    per_rule: dict[tuple[int, str], int] = {}
    per_server: dict[str, list[int]] = {}
    for (port, rname, _gid, skey, status), n in totals.requests.items():
        per_rule[(port, rname)] = per_rule.get((port, rname), 0) + n
        if skey:
            tally = per_server.setdefault(skey, [0, 0])
            tally[0] += n
            if status >= 500:
                tally[1] += n
    listeners = []
    shown = total_rules = 0
    for lst in config.listeners:
        rules = []
        for rule in lst.rules:
            total_rules += 1
            if shown >= limit:
                continue
            shown += 1
            host, path = _describe(rule)
            final = rule.actions[-1] if rule.actions else None
            groups = []
            if isinstance(final, ir.ForwardAction):
                weights = sum(g.weight for g in final.groups)
                for g in final.groups:
                    key = (lst.port, rule.name, g.group_id)
                    groups.append(
                        {
                            "id": g.group_id,
                            "label": labels.groups.get(g.group_id, g.group_id),
                            "weight": g.weight,
                            "share": g.weight / weights if weights else 0.0,
                            "measured": measured.get(key),
                            "requests": counts.get(key, 0),
                        }
                    )
            rules.append(
                {
                    "name": rule.name,
                    "ingress": rule.ingress,
                    "host": host,
                    "path": path,
                    "action": final.kind if final is not None else "",
                    "requests": per_rule.get((lst.port, rule.name), 0),
                    "groups": groups,
                }
            )
        listeners.append({"port": lst.port, "protocol": lst.protocol, "rules": rules})
    servers = []
    for sg in config.server_groups:
        for s in sg.servers:
            skey = ir.server_key(sg.id, s.address, s.port)
            done, failed = per_server.get(skey, (0, 0))
            servers.append(
                {
                    "key": skey,
                    "group": labels.groups[sg.id],
                    "server": f"{s.address}:{s.port}",
                    "healthy": skey not in state.unhealthy,
                    "weight": s.weight,
                    "requests": done,
                    "errors": failed,
                }
            )
    fields = ("time", "listener", "rule", "group", "server", "status", "reason")
    errors = []
    for e in reversed(totals.errors):
        if len(e) >= 10:
            row: dict[str, Any] = dict(zip(fields, e[:7], strict=True))
            row["group"] = labels.groups.get(str(e[3]), str(e[3]))
            row["server"] = labels.servers.get(str(e[4]), ("", ""))[1] or str(e[4])
            row["request"] = f"{e[7]} {e[8]}{e[9]}"
            errors.append(row)
    return {
        "version": state.version,
        "reloadedAt": state.reloaded_at,
        "reloadOk": state.reload_ok,
        "workers": state.workers,
        "connections": totals.connections,
        "busy": totals.busy,
        "window": view.window,
        "listeners": listeners,
        "rulesTotal": total_rules,
        "rulesShown": shown,
        "servers": servers,
        "errors": errors,
        "failed": list(state.failed),
        "diagnostics": [
            d.to_json() for d in state.diagnostics if d.is_error or d.obj.kind == "Ingress"
        ][:200],
        "accessLog": {
            "lines": totals.log_lines,
            "dropped": totals.log_dropped,
            "error": totals.log_error,
        },
    }


def traffic_limit(req: AdminRequest) -> int:
    text = req.query.get("limit", "")
    return max(0, min(int(text), 100_000)) if text.isdigit() else DEFAULT_LIMIT


Collect = Callable[[], Awaitable[list[dict[str, Any]]]]


def mount_observability(
    server: AdminServer,
    collect: Collect,
    state: Callable[[], ConfigState],
    openapi: Handler | None,
    view: MetricsView | None = None,
) -> MetricsView:
    """Serve ``/metrics``, ``/api/v1/traffic`` and the page at ``/`` (``openapi`` keeps the rest
    of ``/``). ``collect`` returns the workers' counter snapshots; ``state`` what is served."""
    view = view or MetricsView()

    async def metrics(_: AdminRequest) -> AdminResponse:
        text = view.render(await collect(), state())
        return AdminResponse(200, PROMETHEUS_TYPE, text.encode())

    async def data(req: AdminRequest) -> AdminResponse:
        body = traffic(view, await collect(), state(), traffic_limit(req))
        return AdminResponse(
            200, "application/json", json.dumps(body).encode(), {"cache-control": "no-store"}
        )

    async def no_api(_: AdminRequest) -> AdminResponse:
        return AdminResponse(404, "text/plain", b"not found\n")

    server.route("GET", "/metrics", metrics)
    server.route("GET", "/api/v1/traffic", data)
    server.route("GET", "/", page_or(openapi or no_api))
    return view
