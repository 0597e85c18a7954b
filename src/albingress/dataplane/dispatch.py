"""Routing a request and carrying out its rule's actions, in ALB's order.

Pre-actions first: TrafficLimit (503 when over), InsertHeader / RemoveHeader (the upstream
request's headers), Rewrite (its host, path and query), TrafficMirror (a copy to each mirror
group, see :mod:`.mirror`; sent after the other pre-actions, so it sees the rewritten request).
Then the final action: ForwardGroup hands the request to the balancer (:func:`forward`: a
server is picked and the request sent to it over a pooled or a new connection; a refused
connect is retried on another server), Redirect and FixedResponse are answered here. What each
action computes lives in :mod:`.actions`; this module only applies it to an exchange.
:func:`forward_again` is ``forward`` for a fast-lane request (bodyless, nothing to rewrite, no
cookie), first seen or remembered by its client connection (see ``request.RequestMemo``): the
hot path.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from albingress.dataplane import actions as act
from albingress.dataplane.balancer import STICKY_COOKIE, Pick, PickContext
from albingress.dataplane.mirror import mirror
from albingress.dataplane.routing import path_regex
from albingress.ir import (
    FixedResponseAction,
    ForwardAction,
    InsertHeaderAction,
    PathType,
    RedirectAction,
    RemoveHeaderAction,
    RewriteAction,
    Rule,
    TrafficLimitAction,
    TrafficMirrorAction,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

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
    if rule is None or len(rule.actions) != 1:
        return False
    action = rule.actions[0]
    if type(action) is not ForwardAction:
        return False
    ex.rule = rule
    # forward(), for a request without cookie and not retried: the pick context of this
    # connection's last request serves again when the path and query are the same
    pctx = client.last_pick_context
    if pctx is None or not pctx.serves_again(ex.path, ex.query):
        pctx = client.last_pick_context = PickContext(client.client_ip, ex.path, ex.query, None)
    forward_again(ex, action, pctx)
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
            groups: Sequence[str | None] = ()
            if rule.path is not None and rule.path.type is PathType.REGEX:
                found = path_regex(rule.path.value).match(ex.path)
                groups = found.groups() if found is not None else ()
            host, path, query = act.rewrite(action, host, path, query, groups)
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
        access_log = ctx.access_log
        if access_log is not None and not ex.request_id and not ex.rid_line:
            ex.rid_line = access_log.request_id(ex)  # the copies carry the request's id too
        mirror(ex, tuple(mirrors))
    return True


# --------------------------------------------------------------------------- forwarding

_STICKY_PREFIX = STICKY_COOKIE.encode() + b"="


def _sticky_value(cookie: bytes) -> str | None:
    for part in cookie.split(b";"):
        part = part.strip()
        if part.startswith(_STICKY_PREFIX):
            return part[len(_STICKY_PREFIX) :].decode("latin-1")
    return None


def forward(ex: Exchange) -> None:
    """Pick a server by the rule's ForwardGroup and send the request there: over a pooled
    connection now, or over a new one once it is open (a refused connect is retried on another
    server, up to ``settings.max_retries`` more times)."""
    ctx = ex.client.ctx
    rule = ex.rule
    assert rule is not None
    action = rule.actions[-1]
    assert isinstance(action, ForwardAction)
    client = ex.client
    cookie = ex.cookie
    pctx = client.last_pick_context
    if (
        ex.tried
        or pctx is None
        or pctx.path != ex.path
        or pctx.query != ex.query
        or pctx.cookie != cookie
    ):  # a PickContext is costly to build: a keep-alive client reuses its last one
        sticky = _sticky_value(cookie) if cookie else None
        pctx = PickContext(client.client_ip, ex.path, ex.query, sticky, ex.tried, cookie)
        if not ex.tried:
            client.last_pick_context = pctx
    pick = ctx.balancer.pick(rule.name, action, pctx)
    if pick is None:
        if ex.tried:
            last = f" (the last: {ex.connect_error})" if ex.connect_error else ""
            ex.fail(502, f"no server of rule {rule.name} accepted the connection{last}")
        else:
            ex.fail(503, f"no healthy server in the server groups of rule {rule.name}")
        return
    ex.pick = pick
    ex.attempts += 1
    ctx.balancer.acquire(pick.key)
    conn = ctx.pool.take(pick.key, pick.tls) if not ex.fresh else None
    if conn is not None:
        ex.attach(conn, reused=True)
    else:
        ex.connect_task = asyncio.get_running_loop().create_task(_connect(ex, pick))


def forward_again(ex: Exchange, action: ForwardAction, pctx: PickContext) -> None:
    """``forward`` for a fast-lane request (see ``start_simple``; again for one remembered by
    its client connection, ``request.RequestMemo``): the rule's action and the pick context are
    known, and the head for the server is ready; the usual case, a pooled connection, is
    written here, any other goes through ``Exchange.attach``."""
    client = ex.client
    ctx = client.ctx
    rule = ex.rule
    assert rule is not None
    balancer = ctx.balancer
    pick = balancer.pick(rule.name, action, pctx)
    if pick is None:
        ex.fail(503, f"no healthy server in the server groups of rule {rule.name}")
        return
    ex.pick = pick
    ex.attempts = 1
    key = pick.key
    balancer.acquire(key)
    conn = ctx.pool.take(key, pick.tls)
    if conn is None:
        ex.connect_task = asyncio.get_running_loop().create_task(_connect(ex, pick))
        return
    transport = conn.transport
    wire, raw = ex.wire_head, ex.raw_head
    if (
        transport is None
        or wire is None
        or raw is None
        or pick.set_cookie is not None
        or pick.cookie_name
        or ctx.draining
        or client.flow.write_paused
    ):
        ex.attach(conn, reused=True)
        return
    # attach(), for a request that is bodyless, HTTP/1.1, keep-alive, without upgrade
    ex.upstream = conn
    ex.reused = True
    ex.sent_at = now = ex.started  # received and sent in the same callback
    conn.begin(ex, ex.head_only, now)
    access_log = ctx.access_log
    if access_log is not None and not ex.request_id:
        wire = access_log.forward_head(ex, wire)  # with a new X-Request-Id
    ex.plain = not ex.head_only
    transport.write(wire)


async def _connect(ex: Exchange, pick: Pick) -> None:
    server = pick.server
    try:
        conn = await ex.client.ctx.pool.connect(pick.key, server.address, server.port, pick.tls)
    except TimeoutError:
        ex.connect_task = None  # before a retry starts the next one
        _connect_failed(ex, pick, 504, f"timed out connecting to {pick.key}")
        return
    except OSError as exc:
        ex.connect_task = None
        reason = exc.strerror or type(exc).__name__
        _connect_failed(ex, pick, 502, f"cannot connect to {pick.key}: {reason}")
        return
    ex.connect_task = None
    if ex.finished:
        conn.close()
        return
    ex.attach(conn, reused=False)


def _connect_failed(ex: Exchange, pick: Pick, code: int, reason: str) -> None:
    if ex.finished:
        return
    balancer = ex.client.ctx.balancer
    balancer.release(pick.key)
    balancer.report_failure(pick.key)
    ex.pick = None
    ex.tried = ex.tried | {pick.key}
    ex.connect_error = reason
    if ex.attempts <= ex.client.ctx.settings.max_retries:
        forward(ex)
    else:
        ex.fail(code, reason)
