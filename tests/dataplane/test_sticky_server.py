"""StickySession type Server: the server's own cookie, marked on its way to the client, pins the
client's next requests to that server; the server always sees the value it set."""

from __future__ import annotations

import dataclasses

import pytest

from albingress.dataplane.balancer import Balancer, Pick, PickContext
from albingress.dataplane.servercookie import (
    COOKIE_MARK,
    mark_set_cookie,
    server_cookie_pin,
    strip_cookie_mark,
)
from albingress.ir import StickySession

from .harness import Harness, aio, feed, make_ir, response

NAME = b"SESSION="
MARK = COOKIE_MARK + b"0a1b2c3d."


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"SESSION=abc; Path=/; HttpOnly", b"SESSION=" + MARK + b"abc; Path=/; HttpOnly"),
        (b'SESSION="abc"; Max-Age=60', b'SESSION="' + MARK + b'abc"; Max-Age=60'),
        (b"OTHER=abc", b"OTHER=abc"),
        (b"XSESSION=abc", b"XSESSION=abc"),
        (b"SESSION=" + MARK + b"abc", b"SESSION=" + MARK + b"abc"),  # echoed back: once
    ],
)
def test_set_cookie_is_marked_for_its_cookie_only(value: bytes, expected: bytes) -> None:
    assert mark_set_cookie(value, NAME, MARK) == expected


@pytest.mark.parametrize(
    ("cookie", "tag", "stripped"),
    [
        (b"SESSION=" + MARK + b"abc", "0a1b2c3d", b"SESSION=abc"),
        (b"a=1; SESSION=" + MARK + b"abc; b=2", "0a1b2c3d", b"a=1; SESSION=abc; b=2"),
        (b'SESSION="' + MARK + b'abc"', "0a1b2c3d", b'SESSION="abc"'),
        (b"XSESSION=" + MARK + b"abc", None, b"XSESSION=" + MARK + b"abc"),
        (b"SESSION=abc", None, b"SESSION=abc"),  # set before the mark existed: not pinned
        (b"SESSION=alb.short.abc", None, b"SESSION=alb.short.abc"),
    ],
)
def test_the_mark_is_read_and_taken_out_of_the_cookie(
    cookie: bytes, tag: str | None, stripped: bytes
) -> None:
    assert server_cookie_pin(cookie, NAME) == tag
    assert strip_cookie_mark(cookie, NAME) == stripped


def _server_sticky_ir() -> object:
    ir = make_ir([("127.0.1.1", 8000), ("127.0.1.2", 8000), ("127.0.1.3", 8000)])
    sticky = StickySession(enabled=True, type="Server", cookie="SESSION")
    group = dataclasses.replace(ir.server_groups[0], sticky=sticky)
    return dataclasses.replace(ir, server_groups=(group,))


def test_the_balancer_follows_the_mark_and_round_robins_without_it() -> None:
    ir = _server_sticky_ir()
    bal = Balancer()
    bal.update(ir)  # type: ignore[arg-type]
    action = ir.listeners[0].rules[0].actions[-1]  # type: ignore[attr-defined]
    plain = PickContext("127.0.0.9", "/", "", None)
    first = [bal.pick("r", action, plain) for _ in range(3)]
    assert len({p.key for p in first if p is not None}) == 3  # not pinned: round robin
    target = first[1]
    assert isinstance(target, Pick) and target.cookie_name == NAME
    cookie = b"SESSION=" + target.cookie_mark + b"v1"
    pinned = PickContext("127.0.0.9", "/", "", None, cookie=cookie)
    assert {bal.pick("r", action, pinned).key for _ in range(6)} == {target.key}  # type: ignore[union-attr]
    bal.report_failure(target.key)  # its server gone: another one, no error
    moved = bal.pick("r", action, pinned)
    assert moved is not None and moved.key != target.key


@aio
async def test_the_cookie_round_trip_through_the_proxy():
    h = Harness(_server_sticky_ir())  # type: ignore[arg-type]
    client, ct = h.client()
    feed(client, b"GET /login HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    await h.settle()
    up, ut = h.upstream()
    key = h.upstreams[-1][0]
    assert b"SESSION" not in ut.take()
    feed(up, response(b"hi", headers="Set-Cookie: SESSION=s3cr3t; Path=/; HttpOnly\r\n"))
    answer = ct.take()
    line = next(x for x in answer.split(b"\r\n") if x.startswith(b"Set-Cookie: SESSION="))
    value = line[len(b"Set-Cookie: SESSION=") :].split(b";")[0]
    assert value.startswith(COOKIE_MARK) and value.endswith(b".s3cr3t")
    for n in range(4):  # every later request with the cookie: the same server, its own value
        feed(client, b"GET /cart HTTP/1.1\r\nHost: shop.example\r\nCookie: a=1; SESSION=%s\r\n\r\n"
             % value)  # fmt: skip
        await h.settle()
        up, ut = h.upstream()
        assert h.upstreams[[c for _, c, _ in h.upstreams].index(up)][0] == key
        sent = ut.take()
        assert b"Cookie: a=1; SESSION=s3cr3t\r\n" in sent, sent
        feed(up, response(b"cart %d" % n))
        assert ct.take().endswith(b"cart %d" % n)
