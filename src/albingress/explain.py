"""``albingress explain HOST PATH``: which rule a request hits, what it does, and why.

The answer comes from the data plane's own routing table (:mod:`albingress.dataplane.routing`), so
it is the rule a worker would pick. The "why" lists every rule of the listener in precedence
order up to the one chosen, each with the part that did not match (host, path or conditions),
and the rules that also match but come later, with the precedence step that put them later.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from albingress import ir
from albingress.compile.compiler import CompileOptions, compile_snapshot
from albingress.compile.render import describe_action, describe_match, shares
from albingress.dataplane.routing import RoutingTable
from albingress.model.servergroup import NetworkSettings
from albingress.sources import files


@dataclass(frozen=True, slots=True)
class Request:
    host: str
    path: str
    method: str = "GET"
    query: str = ""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    client_ip: str = "127.0.0.1"
    listener: int = 80


def _matches(rule: ir.Rule, req: Request) -> bool:
    table = RoutingTable.build(ir.IR((ir.Listener(req.listener, "HTTP", (rule,)),), ()))
    found = table.route(
        req.listener, req.host, req.path, req.method, req.query, req.headers, req.client_ip
    )
    return found is not None


def why_not(rule: ir.Rule, req: Request) -> str:
    """The parts of ``rule`` that ``req`` does not match ("" when it matches)."""
    misses = []
    if rule.host and not _matches(dataclasses.replace(rule, path=None, conditions=()), req):
        misses.append(f"host is not {rule.host}")
    if rule.path is not None and not _matches(
        dataclasses.replace(rule, host="", conditions=()), req
    ):
        misses.append(f"path does not match {rule.path.value} ({rule.path.type.value})")
    if rule.conditions and not _matches(dataclasses.replace(rule, host="", path=None), req):
        misses.append("conditions do not hold")
    return "; ".join(misses)


def precedence_step(winner: ir.Rule, later: ir.Rule) -> str:
    """Which precedence step puts ``later`` after ``winner``."""
    if winner.order != later.order:
        return f"order {winner.order} < {later.order}"
    rank = {
        ir.PathType.EXACT: 0,
        ir.PathType.PREFIX: 1,
        ir.PathType.IMPLEMENTATION_SPECIFIC: 2,
        ir.PathType.REGEX: 3,
    }
    w_rank = rank[winner.path.type] if winner.path else 9
    l_rank = rank[later.path.type] if later.path else 9
    if w_rank != l_rank:
        return "Exact before Prefix before ImplementationSpecific before Regex"
    w_len = len(winner.path.value) if winner.path else 0
    l_len = len(later.path.value) if later.path else 0
    if w_len != l_len:
        return f"longer path first ({w_len} > {l_len} characters)"
    if bool(winner.host) != bool(later.host) or winner.host.startswith(
        "*."
    ) != later.host.startswith("*."):
        return "a named host before a wildcard host before no host"
    return "same precedence: namespace/name, then position"


def explain(table: ir.IR, req: Request, unhealthy: frozenset[str] = frozenset()) -> dict[str, Any]:
    listener = next((lst for lst in table.listeners if lst.port == req.listener), None)
    if listener is None:
        return {"error": f"no listener on port {req.listener}"}
    routing = RoutingTable.build(table)
    rule = routing.route(
        req.listener, req.host, req.path, req.method, req.query, req.headers, req.client_ip
    )
    considered = []
    later = []
    reached = False
    for index, candidate in enumerate(listener.rules, 1):
        if rule is not None and reached:
            if not why_not(candidate, req):
                later.append(
                    {
                        "priority": index,
                        "rule": candidate.name,
                        "why_later": precedence_step(rule, candidate),
                    }
                )
            continue
        if candidate is rule or candidate == rule:
            considered.append({"priority": index, "rule": candidate.name, "verdict": "match"})
            reached = True
        else:
            considered.append(
                {"priority": index, "rule": candidate.name, "verdict": why_not(candidate, req)}
            )
    result: dict[str, Any] = {
        "request": {
            "host": req.host,
            "path": req.path,
            "method": req.method,
            "listener": req.listener,
        },
        "rule": rule.name if rule else None,
        "considered": considered,
        "also_matching_later": later,
    }
    if rule is None:
        result["answer"] = "404: no rule matches"
        return result
    groups = table.groups_by_id()
    host, path = describe_match(rule)
    result["match"] = {"host": host, "path": path, "ingress": rule.ingress, "order": rule.order}
    result["actions"] = [describe_action(a) for a in rule.actions]
    final = rule.final
    if isinstance(final, ir.ForwardAction):
        out = []
        for weighted, share in shares(final):
            group = groups[weighted.group_id]
            healthy = [
                f"{s.address}:{s.port}"
                for s in group.servers
                if s.weight > 0 and ir.server_key(group.id, s.address, s.port) not in unhealthy
            ]
            out.append(
                {
                    "group": group.name,
                    "id": group.id,
                    "weight": weighted.weight,
                    "share": round(share, 1),
                    "servers": len(group.servers),
                    "healthy": healthy,
                }
            )
        result["forward"] = out
    return result


def render(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['error']}\n"
    req = result["request"]
    lines = [f"{req['method']} {req['host']}{req['path']} on listener {req['listener']}"]
    if result["rule"] is None:
        lines.append("  -> 404: no rule matches")
    else:
        m = result["match"]
        lines.append(f"  -> rule {result['rule']}")
        lines.append(f"     {m['host']}  {m['path']}  [Ingress {m['ingress']}, order {m['order']}]")
        for action in result["actions"]:
            lines.append(f"     {action}")
        for g in result.get("forward", []):
            lines.append(
                f"       weight {g['weight']:>3}  {g['share']:5.1f}%  {g['group']} [{g['id']}]  "
                f"{len(g['healthy'])}/{g['servers']} servers healthy"
            )
    lines.append("  why:")
    for c in result["considered"]:
        verdict = (
            "MATCH: the first rule that matches"
            if c["verdict"] == "match"
            else f"skipped: {c['verdict']}"
        )
        lines.append(f"    #{c['priority']:<3} {c['rule']}: {verdict}")
    for c in result["also_matching_later"]:
        lines.append(
            f"    #{c['priority']:<3} {c['rule']}: also matches, but later ({c['why_later']})"
        )
    return "\n".join(lines) + "\n"


def load(
    manifests: Sequence[str] | None, admin: str | None, network: NetworkSettings
) -> tuple[ir.IR, frozenset[str]]:
    """The IR from manifests (compiled here) or from a running load balancer's admin API."""
    if admin:
        host, _, port = admin.rpartition(":")
        conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=5)
        try:
            conn.request("GET", "/api/v1/config")
            data = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return ir.from_json(data["ir"]), frozenset(data.get("unhealthy", ()))
    snapshot = files.load([Path(p) for p in manifests or ()])
    return compile_snapshot(snapshot, CompileOptions(network=network)).ir, frozenset()
