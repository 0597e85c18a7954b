"""The balancer's reuse of its last candidates: exactly the picks of a fresh computation."""

from __future__ import annotations

from collections import Counter

from albingress.dataplane.balancer import PickContext
from albingress.ir import server_key

from .balancing import CTX, make, picks
from .irbuild import forward, group, servers


def test_a_retry_between_plain_picks_leaves_the_rotation_whole() -> None:
    groups = [group("g", servers(2)), group("h", servers(1, net=5))]
    action = forward(("g", 50), ("h", 50))
    bal, _ = make(groups, action)
    first = picks(bal, action, 4)
    a = server_key("g", "127.0.1.1", 8080)
    retry = bal.pick("r", action, PickContext("127.0.0.1", "/", "", None, frozenset({a})))
    assert retry is not None and retry.key != a
    after = Counter(p.key for p in picks(bal, action, 40))
    assert after[a] == 10 and after[server_key("g", "127.0.1.2", 8080)] == 10
    assert len(first) == 4


def test_an_ejection_and_its_end_are_seen_by_the_next_pick() -> None:
    groups = [group("g", servers(2))]
    action = forward(("g", 100))
    bal, clock = make(groups, action)
    picks(bal, action, 3)  # the candidates are remembered
    bad = server_key("g", "127.0.1.1", 8080)
    bal.report_failure(bad)
    assert bad not in {p.key for p in picks(bal, action, 4)}
    clock.now += 4.9
    assert bad not in {p.key for p in picks(bal, action, 4)}
    clock.now += 0.1  # the ejection ends: no event, only the clock
    assert bad in {p.key for p in picks(bal, action, 2)}


def test_health_changes_are_seen_by_the_next_pick() -> None:
    groups = [group("g", servers(1)), group("h", servers(1, net=5))]
    action = forward(("g", 50), ("h", 50))
    bal, _ = make(groups, action)
    picks(bal, action, 2)
    g_key = server_key("g", "127.0.1.1", 8080)
    bal.set_unhealthy(frozenset({g_key}))
    assert g_key not in {p.key for p in picks(bal, action, 6)}
    bal.set_unhealthy(frozenset())
    assert Counter(p.group.id for p in picks(bal, action, 6)) == {"g": 3, "h": 3}
    assert bal.pick("r", action, CTX) is not None


def test_answered_releases_and_resets_the_failure_ladder() -> None:
    groups = [group("g", servers(2))]
    action = forward(("g", 100))
    bal, clock = make(groups, action)
    key = server_key("g", "127.0.1.1", 8080)
    bal.acquire(key)
    bal.acquire(key)
    bal.report_failure(key)
    clock.now += 5.0
    bal.report_failure(key)  # a second failure in a row: out for 10 s
    clock.now += 10.0
    bal.answered(key)
    assert bal.active(key) == 1
    bal.answered(key)
    bal.answered(key)
    assert bal.active(key) == 0  # never below zero
    bal.report_failure(key)  # the ladder starts again: 5 s
    clock.now += 5.0
    assert not bal.is_ejected(key)
    bal.answered("no|such:1")  # an unknown key is ignored
