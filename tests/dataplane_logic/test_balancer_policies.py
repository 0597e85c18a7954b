"""Balancer policies: sticky sessions (group and server) and the SCH, UCH, WLC schedulers."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from albingress.dataplane.balancer import Balancer, PickContext
from albingress.ir import ForwardAction, Scheduler, StickySession, server_key

from .balancing import CTX, SEED_GROUPS, cookie_value, keys_of, make, picks, picks_ctx
from .irbuild import forward, group, ir_of, rule, servers

# --------------------------------------------------------------------------- stickiness


def test_group_sticky_cookie_round_trip_and_expiry() -> None:
    action = forward(("svc-tea", 50), ("sgp-vm", 50), sticky=True, timeout=100)
    bal, clock = make(SEED_GROUPS, action)
    first = bal.pick("r", action, CTX)
    assert first is not None
    assert first.set_cookie is not None and "Max-Age=100" in first.set_cookie
    value = cookie_value(first.set_cookie)
    ctx = PickContext("127.0.0.1", "/", "", value)
    again = picks_ctx(bal, action, ctx, 20)
    assert {p.group.id for p in again} == {first.group.id}
    assert all(p.set_cookie is None for p in again)
    clock.now += 101
    fresh = [bal.pick("r", action, ctx) for _ in range(4)]
    assert all(p is not None and p.set_cookie is not None for p in fresh)
    assert len({p.group.id for p in fresh if p is not None}) == 2


def test_group_sticky_moves_when_its_group_is_down() -> None:
    action = forward(("svc-tea", 50), ("sgp-vm", 50), sticky=True)
    bal, _ = make(SEED_GROUPS, action)
    first = bal.pick("r", action, CTX)
    assert first is not None
    bal.set_unhealthy(keys_of(next(g for g in SEED_GROUPS if g.id == first.group.id)))
    moved = bal.pick("r", action, PickContext("127.0.0.1", "/", "", cookie_value(first.set_cookie)))
    assert moved is not None and moved.group.id != first.group.id
    assert moved.set_cookie is not None


@pytest.mark.parametrize(
    "cookie",
    ["garbage", "a.b.c.d", "", "deadbeef.1.."],
    ids=["word", "letters", "empty", "expired"],
)
def test_bad_sticky_cookie_is_ignored(cookie: str) -> None:
    action = forward(("svc-tea", 50), ("sgp-vm", 50), sticky=True)
    bal, _ = make(SEED_GROUPS, action)
    p = bal.pick("r", action, PickContext("127.0.0.1", "/", "", cookie))
    assert p is not None and p.set_cookie is not None


def test_server_sticky_session_inside_a_group() -> None:
    g = group("g", servers(4), sticky=StickySession(enabled=True, cookie_timeout=50))
    action = forward(("g", 100))
    bal, clock = make([g], action)
    first = bal.pick("r", action, CTX)
    assert first is not None
    ctx = PickContext("127.0.0.9", "/", "", cookie_value(first.set_cookie))
    assert {p.key for p in picks_ctx(bal, action, ctx, 10)} == {first.key}
    bal.report_failure(first.key)
    moved = bal.pick("r", action, ctx)
    assert moved is not None and moved.key != first.key and moved.set_cookie is not None
    clock.now += 5  # back in, but the new cookie pins the new server
    ctx2 = PickContext("127.0.0.9", "/", "", cookie_value(moved.set_cookie))
    assert {p.key for p in picks_ctx(bal, action, ctx2, 5)} == {moved.key}


# --------------------------------------------------------------------------- schedulers


def hashed(bal: Balancer, action: ForwardAction, ips: list[str]) -> dict[str, str]:
    out = {}
    for ip in ips:
        p = bal.pick("r", action, PickContext(ip, "/", "", None))
        assert p is not None
        out[ip] = p.server.address
    return out


CLIENTS = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(1000)]


def test_sch_is_stable_and_consistent() -> None:
    action = forward(("g", 100))
    members = servers(5)
    bal, _ = make([group("g", members, scheduler=Scheduler.SCH)], action)
    before = hashed(bal, action, CLIENTS)
    assert hashed(bal, action, CLIENTS) == before  # same client, same server
    assert min(Counter(before.values()).values()) > 100  # spread over all five
    # Remove one server: only its clients move.
    bal.update(
        ir_of([rule("r", actions=(action,))], [group("g", members[:4], scheduler=Scheduler.SCH)])
    )
    after = hashed(bal, action, CLIENTS)
    moved = {ip for ip in CLIENTS if after[ip] != before[ip]}
    assert moved == {ip for ip in CLIENTS if before[ip] == "127.0.1.5"}
    # Eject one: only its clients move, and they come back afterwards.
    bal.set_unhealthy(frozenset({server_key("g", "127.0.1.1", 8080)}))
    ejected = hashed(bal, action, CLIENTS)
    assert {ip for ip in CLIENTS if ejected[ip] != after[ip]} == {
        ip for ip in CLIENTS if after[ip] == "127.0.1.1"
    }
    bal.set_unhealthy(frozenset())
    assert hashed(bal, action, CLIENTS) == after


@pytest.mark.parametrize(
    ("key", "query_a", "query_b", "same"),
    [
        ("uid", "uid=7&x=1", "x=2&uid=7", True),
        ("uid", "uid=7", "uid=8", None),
        ("", "a=1", "a=1", True),
    ],
    ids=["same key value", "different values spread", "no key hashes the url"],
)
def test_uch(key: str, query_a: str, query_b: str, same: bool | None) -> None:
    action = forward(("g", 100))
    bal, _ = make([group("g", servers(8), scheduler=Scheduler.UCH, uch_key=key)], action)

    def server(q: str, ip: str) -> str:
        p = bal.pick("r", action, PickContext(ip, "/p", q, None))
        assert p is not None
        return p.key

    if same:
        assert server(query_a, "127.0.0.1") == server(query_b, "127.0.0.2")
    else:
        spread = {server(f"uid={i}", "127.0.0.1") for i in range(200)}
        assert len(spread) == 8


def test_wlc_prefers_the_least_loaded_relative_to_weight() -> None:
    members = servers(2)
    heavy = members[0]
    light = replace(members[1], weight=50)
    action = forward(("g", 100))
    bal, _ = make([group("g", (heavy, light), scheduler=Scheduler.WLC)], action)
    k_heavy, k_light = (server_key("g", s.address, 8080) for s in (heavy, light))
    # Idle: ties share by weight, 2:1.
    idle = Counter(p.key for p in picks(bal, action, 30))
    assert idle == {k_heavy: 20, k_light: 10}
    # Keep every picked request in flight: load follows weight.
    for _ in range(30):
        p = bal.pick("r", action, CTX)
        assert p is not None
        bal.acquire(p.key)
    assert (bal.active(k_heavy), bal.active(k_light)) == (20, 10)
    # Finish the heavy server's requests: new ones go there until it catches up.
    for _ in range(20):
        bal.release(k_heavy)
    nxt = [p.key for p in picks(bal, action, 5)]
    assert nxt == [k_heavy] * 5
