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
    strip_marks,
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
        # a server's own value that looks like a mark is marked too: servers never see marks
        (b"SESSION=alb.backend1.tok", b"SESSION=" + MARK + b"alb.backend1.tok"),
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
        (b"XSESSION=" + MARK + b"abc", None, b"XSESSION=abc"),  # any mark goes, one pins
        (b"SESSION=abc", None, b"SESSION=abc"),  # set before the mark existed: not pinned
        (b"SESSION=alb.backend1.abc", None, b"SESSION=alb.backend1.abc"),  # not a tag
        (b"theme=dark SESSION=" + MARK + b"v", None, b"theme=dark SESSION=" + MARK + b"v"),
        (b"x=" + b"SESSION=" + MARK + b"v", None, b"x=SESSION=" + MARK + b"v"),  # a value
    ],
)
def test_the_mark_is_read_and_taken_out_by_one_pattern(
    cookie: bytes, tag: str | None, stripped: bytes
) -> None:
    assert server_cookie_pin(cookie, NAME) == tag
    assert strip_marks(cookie) == stripped
    assert (server_cookie_pin(stripped, NAME) is None) or stripped == cookie  # nothing left


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


@aio
async def test_a_request_without_the_cookie_is_not_pinned_by_the_last_one():
    h = Harness(_server_sticky_ir())  # type: ignore[arg-type]
    client, ct = h.client()
    ctx = PickContext("127.0.0.9", "/", "", None)
    picks = [h.ctx.balancer.pick_in_group("sgp-0", ctx) for _ in range(3)]
    tag_of_2 = next(p.cookie_mark for p in picks if p and p.server.address == "127.0.1.2")
    seen = []
    for n in range(7):
        cookie = b"Cookie: SESSION=" + tag_of_2 + b"v\r\n" if n == 0 else b""
        feed(client, b"GET /y HTTP/1.1\r\nHost: shop.example\r\n" + cookie + b"\r\n")
        await h.settle()
        up, ut = h.upstream()
        seen.append(ut.peer[0])
        ut.take()
        feed(up, response(b"ok"))
        ct.take()
    assert seen[0] == "127.0.1.2" and len(set(seen[1:])) == 3  # then round robin again


@aio
async def test_no_server_sees_a_mark_not_the_other_groups_nor_the_mirrors():
    from albingress.ir import ForwardAction, TrafficMirrorAction, WeightedGroup

    ir = make_ir(
        [("127.0.1.1", 8000), ("127.0.1.2", 8000), ("127.0.1.9", 8000)],
        groups=3,
        pre=(TrafficMirrorAction(("sgp-2",)),),
    )
    sticky = StickySession(enabled=True, type="Server", cookie="SESSION")
    groups = (dataclasses.replace(ir.server_groups[0], sticky=sticky), *ir.server_groups[1:])
    rule = ir.listeners[0].rules[0]
    only_plain = ForwardAction((WeightedGroup("sgp-0", 0), WeightedGroup("sgp-1", 100)))
    rule = dataclasses.replace(rule, actions=(*rule.actions[:-1], only_plain))
    listener = dataclasses.replace(ir.listeners[0], rules=(rule,))
    h = Harness(dataclasses.replace(ir, listeners=(listener,), server_groups=groups))
    client, _ = h.client()
    marked = b"SESSION=" + COOKIE_MARK + b"0a1b2c3d.s3cr3t; a=1"
    feed(client, b"GET /m HTTP/1.1\r\nHost: a\r\nCookie: " + marked + b"\r\n\r\n")
    await h.settle()
    sent = {key: t.take() for key, _, t in h.upstreams}
    assert set(sent) == {"sgp-1|127.0.1.2:8000", "sgp-2|127.0.1.9:8000"}  # the plain group, mirror
    for data in sent.values():
        assert b"Cookie: SESSION=s3cr3t; a=1\r\n" in data and COOKIE_MARK not in data, data
