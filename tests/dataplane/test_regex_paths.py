"""use-regex paths: matched from the start of the request's path, after Exact and Prefix rules;
a rewrite's ${1}.. are the path's capture groups."""

from __future__ import annotations

import dataclasses

import pytest

from albingress.dataplane import actions as act
from albingress.dataplane.routing import RoutingTable
from albingress.ir import IR, PathMatch, PathType, RewriteAction, Rule

from .harness import Harness, aio, feed, make_ir, response

REGEX = PathMatch(PathType.REGEX, "/v(1|2)/(.*)")


def _ir(rewrite: str = "/api/${2}") -> IR:
    base = make_ir([("127.0.1.1", 8000)], pre=(RewriteAction(path=rewrite),))
    rule = dataclasses.replace(base.listeners[0].rules[0], path=REGEX)
    prefix = dataclasses.replace(
        base.listeners[0].rules[0],
        name="default/plain/rules/0/paths/0",
        path=PathMatch(PathType.PREFIX, "/v1/static"),
        actions=base.listeners[0].rules[0].actions[-1:],
    )
    listener = dataclasses.replace(base.listeners[0], rules=(prefix, rule))
    return dataclasses.replace(base, listeners=(listener,))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/items", "default/web/rules/0/paths/0"),
        ("/v2/", "default/web/rules/0/paths/0"),
        ("/v1/static/logo.png", "default/plain/rules/0/paths/0"),  # Prefix first
        ("/v3/items", None),
        ("/x/v1/items", None),  # matched from the start
    ],
)
def test_regex_rules_route_from_the_start_of_the_path(path: str, expected: str | None) -> None:
    table = RoutingTable.build(_ir())
    rule = table.route(80, "any.example", path, "GET", "", [], "127.0.0.9")
    assert (rule.name if isinstance(rule, Rule) else None) == expected


def test_rewrite_fills_captures_and_leaves_unknown_variables() -> None:
    action = RewriteAction(path="/api/${2}/${1}", query="from=${1}&${query}")
    assert act.rewrite(action, "h", "/v2/x/y", "q=1", ("2", "x/y")) == (
        "h",
        "/api/x/y/2",
        "from=2&q=1",
    )
    assert act.rewrite(RewriteAction(path="/${1}"), "h", "/p", "", (None,))[1] == "/"


@aio
async def test_the_server_gets_the_rewritten_path():
    h = Harness(_ir())
    client, ct = h.client()
    feed(client, b"GET /v2/items/7?color=red HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    await h.settle()
    up, ut = h.upstream()
    assert ut.take().startswith(b"GET /api/items/7?color=red HTTP/1.1\r\n")
    feed(up, response(b"seven"))
    assert ct.take().endswith(b"seven")
