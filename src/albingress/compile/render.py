"""The routing table as people read it: the text form of ``albingress plan``."""

from __future__ import annotations

from albingress import ir


def describe_match(rule: ir.Rule) -> tuple[str, str]:
    host = rule.host or "*"
    if rule.path is None:
        path = "(default backend)"
    else:
        path = f"{rule.path.value} ({rule.path.type.value})"
    return host, path


def describe_action(action: ir.Action) -> str:
    if isinstance(action, ir.ForwardAction):
        sticky = f", sticky {action.sticky_timeout}s" if action.sticky else ""
        return f"ForwardGroup ({len(action.groups)} server groups{sticky})"
    if isinstance(action, ir.RedirectAction):
        return (
            f"Redirect {action.http_code} -> {action.protocol}://{action.host}:{action.port}"
            f"{action.path}?{action.query}"
        )
    if isinstance(action, ir.FixedResponseAction):
        return f"FixedResponse {action.http_code} {action.content_type} {action.content!r}"
    if isinstance(action, ir.InsertHeaderAction):
        return f"InsertHeader {action.key}: {action.value} ({action.value_type})"
    if isinstance(action, ir.RemoveHeaderAction):
        return f"RemoveHeader {action.key}"
    if isinstance(action, ir.RewriteAction):
        return f"Rewrite host={action.host} path={action.path} query={action.query}"
    if isinstance(action, ir.TrafficMirrorAction):
        return f"TrafficMirror -> {', '.join(action.group_ids)}"
    return f"TrafficLimit {action.qps} qps" + (
        f", {action.qps_per_ip} per client IP" if action.qps_per_ip else ""
    )


def shares(action: ir.ForwardAction) -> list[tuple[ir.WeightedGroup, float]]:
    """Each group with its configured share in percent (weight / sum of weights)."""
    total = sum(g.weight for g in action.groups)
    return [(g, 100.0 * g.weight / total if total else 0.0) for g in action.groups]


def _servers(group: ir.ServerGroup) -> str:
    if not group.servers:
        return "no servers"
    parts = []
    for s in group.servers[:6]:
        tag = " remote" if s.remote else ""
        parts.append(f"{s.address}:{s.port} w{s.weight}{tag}")
    more = f" (+{len(group.servers) - 6} more)" if len(group.servers) > 6 else ""
    return ", ".join(parts) + more


def render_plan(table: ir.IR) -> str:
    groups = table.groups_by_id()
    lines: list[str] = []
    for listener in table.listeners:
        lines.append(
            f"Listener {listener.protocol}:{listener.port} "
            f"({len(listener.rules)} rules, edition {table.edition})"
        )
        if not listener.rules:
            lines.append("  (no rules: every request gets 404)")
        for priority, rule in enumerate(listener.rules, 1):
            host, path = describe_match(rule)
            lines.append(f"  #{priority:<3} {host}  {path}  [{rule.ingress}, order {rule.order}]")
            for cond in rule.conditions:
                key = f" {cond.key}" if cond.key else ""
                lines.append(f"        if {cond.type}{key} in {', '.join(cond.values)}")
            for action in rule.actions:
                lines.append(f"        {describe_action(action)}")
                if isinstance(action, ir.ForwardAction):
                    for weighted, share in shares(action):
                        group = groups[weighted.group_id]
                        lines.append(
                            f"          weight {weighted.weight:>3}  {share:5.1f}%  "
                            f"{group.name} [{group.id}]"
                        )
                        lines.append(f"                         {_servers(group)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
