"""Routing a request and carrying out its rule's actions, in ALB's order.

Pre-actions first: TrafficLimit (503 when over), InsertHeader / RemoveHeader (the upstream
request's headers), Rewrite (its host, path and query), TrafficMirror (a copy to each mirror
group, see :mod:`.mirror`; sent after the other pre-actions, so it sees the rewritten request).
Then the final action: ForwardGroup hands the request to the balancer
(:meth:`.exchange.Exchange.forward`), Redirect and FixedResponse are answered here. What each
action computes lives in :mod:`.actions`; this module only applies it to an exchange.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from albingress.dataplane import actions as act
from albingress.dataplane.mirror import mirror
from albingress.ir import (
    FixedResponseAction,
    ForwardAction,
    InsertHeaderAction,
    RedirectAction,
    RemoveHeaderAction,
    RewriteAction,
    Rule,
    TrafficLimitAction,
    TrafficMirrorAction,
)

if TYPE_CHECKING:
    from albingress.dataplane.exchange import Exchange


def start(ex: Exchange) -> None:
    ctx = ex.client.ctx
    table = ctx.table
    if table is None:
        ex.fail(503, "no configuration loaded yet")
        return
    client = ex.client
    host = ex.host.decode("latin-1")
    rule = ctx.route(
        table,
        client.listener_port,
        host,
        ex.path,
        ex.method,
        ex.query,
        ex.raw_headers,
        client.client_ip,
    )
    if rule is None:
        ex.fail(404, f"no rule matches host {host!r} and path {ex.path!r}")
        return
    ex.rule = rule
    actions = rule.actions
    final = actions[-1]
    if len(actions) > 1 and not _pre_actions(ex, rule):
        return
    if type(final) is ForwardAction:
        ex.forward()
    elif type(final) is RedirectAction:
        location = act.redirect_location(
            final, client.scheme, host, client.listener_port, ex.path, ex.query
        )
        ex.respond(final.http_code, b"", [(b"Location", location.encode("latin-1"))])
    elif type(final) is FixedResponseAction:
        code, headers, body = act.fixed_response(final)
        ex.respond(code, body, [h for h in headers if h[0].lower() != b"content-length"])
    else:
        ex.fail(500, f"rule {rule.name} has no final action")


def start_simple(ex: Exchange) -> bool:
    """``start`` for the fast lane: False (and nothing done) unless the rule only forwards."""
    ctx = ex.client.ctx
    table = ctx.table
    if table is None:
        return False
    client = ex.client
    rule = ctx.route(
        table,
        client.listener_port,
        ex.host.decode("latin-1"),
        ex.path,
        ex.method,
        ex.query,
        ex.raw_headers,
        client.client_ip,
    )
    if rule is None or len(rule.actions) != 1 or type(rule.actions[0]) is not ForwardAction:
        return False
    ex.rule = rule
    ex.forward()
    return True


def _pre_actions(ex: Exchange, rule: Rule) -> bool:
    """Run the pre-actions in order; False when the request was answered (limited)."""
    ctx = ex.client.ctx
    header_actions = []
    mirrors: list[str] = []
    rewritten = False
    host = ex.host.decode("latin-1")
    path, query = ex.path, ex.query
    for action in rule.actions[:-1]:
        if type(action) is TrafficLimitAction:
            if not ctx.limiter.allow(rule.name, action, ex.client.client_ip):
                ex.fail(503, f"traffic limit of rule {rule.name} reached")
                return False
        elif type(action) in (InsertHeaderAction, RemoveHeaderAction):
            header_actions.append(action)
        elif type(action) is RewriteAction:
            host, path, query = act.rewrite(action, host, path, query)
            rewritten = True
        elif type(action) is TrafficMirrorAction:
            mirrors += action.group_ids
    if header_actions:
        ex.headers = act.apply_header_actions(
            header_actions,
            ex.headers,
            ex.client.client_ip,
            client_port=ex.client.client_port,
            lb_port=ex.client.listener_port,
            protocol=ex.client.scheme,
        )
    if rewritten:
        new_host = host.encode("latin-1")
        if new_host != ex.host:
            ex.headers = [h for h in ex.headers if h[0].lower() != b"host"]
            ex.headers.append((b"Host", new_host))
        target = path + ("?" + query if query else "")
        ex.target = target.encode("latin-1")
        ex.path, ex.query = path, query
    if mirrors:
        mirror(ex, tuple(mirrors))
    return True
