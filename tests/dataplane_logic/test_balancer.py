"""Balancer: ALB weighted forwarding over server groups, health, retries, updates."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from itertools import groupby

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from albingress.dataplane.balancer import PickContext
from albingress.ir import ForwardAction, server_key

from .balancing import (
    CTX,
    SEED_ACTION,
    SEED_GROUPS,
    group_counts,
    keys_of,
    make,
    picks,
    picks_ctx,
)
from .irbuild import forward, group, ir_of, rule, servers

# --------------------------------------------------------------------------- shares


def test_seed_weights_give_exact_shares() -> None:
    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    counts = group_counts(picks(bal, SEED_ACTION, 1000))
    assert counts == {"svc-tea": 300, "svc-coffee": 200, "sgp-vm": 300, "sgp-idc": 200}


def test_shares_are_smooth() -> None:
    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    seq = [p.group.id for p in picks(bal, SEED_ACTION, 200)]
    longest = max(len(list(run)) for _, run in groupby(seq))
    assert longest <= 2
    # Every window of 10 picks (a tenth of the cycle) holds each group at least once.
    for i in range(0, 200, 10):
        assert len(set(seq[i : i + 10])) == 4


def test_weight_zero_group_gets_nothing() -> None:
    action = forward(("svc-tea", 50), ("svc-coffee", 0), ("sgp-vm", 50))
    bal, _ = make(SEED_GROUPS, action)
    assert group_counts(picks(bal, action, 100)) == {"svc-tea": 50, "sgp-vm": 50}


def test_group_weight_does_not_depend_on_its_server_count() -> None:
    groups = [group("one", servers(1, net=1)), group("ten", servers(10, net=2))]
    action = forward(("one", 50), ("ten", 50))
    bal, _ = make(groups, action)
    ps = picks(bal, action, 1000)
    assert group_counts(ps) == {"one": 500, "ten": 500}
    per_server = Counter(p.server.address for p in ps if p.group.id == "ten")
    assert sorted(per_server.values()) == [50] * 10


def test_server_weights_inside_a_group() -> None:
    members = servers(3)
    members = (members[0], *(replace(s, weight=50) for s in members[1:]))
    action = forward(("g", 100))
    bal, _ = make([group("g", members)], action)
    counts = Counter(p.server.address for p in picks(bal, action, 400))
    assert counts == {"127.0.1.1": 200, "127.0.1.2": 100, "127.0.1.3": 100}


def test_weight_zero_server_gets_nothing() -> None:
    members = servers(2)
    zero = replace(members[1], weight=0)
    action = forward(("g", 100))
    bal, _ = make([group("g", (members[0], zero))], action)
    assert {p.server.address for p in picks(bal, action, 20)} == {"127.0.1.1"}


def test_two_rules_have_their_own_rotation() -> None:
    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    first_a = [p.group.id for p in picks(bal, SEED_ACTION, 5, "a")]
    first_b = [p.group.id for p in picks(bal, SEED_ACTION, 5, "b")]
    assert first_a == first_b


# --------------------------------------------------------------------------- health


def test_unhealthy_group_share_goes_to_the_others_by_weight() -> None:
    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    bal.set_unhealthy(keys_of(SEED_GROUPS[2]))  # sgp-vm, weight 30
    counts = group_counts(picks(bal, SEED_ACTION, 700))
    assert counts == {"svc-tea": 300, "svc-coffee": 200, "sgp-idc": 200}
    bal.set_unhealthy(frozenset())
    assert "sgp-vm" in group_counts(picks(bal, SEED_ACTION, 10))


def test_partly_unhealthy_group_keeps_its_full_share() -> None:
    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    idc = SEED_GROUPS[3]
    bal.set_unhealthy(frozenset(sorted(keys_of(idc))[:9]))
    ps = picks(bal, SEED_ACTION, 1000)
    assert group_counts(ps)["sgp-idc"] == 200
    assert {p.server.address for p in ps if p.group.id == "sgp-idc"} == {"127.0.4.9"}


def test_nothing_usable_gives_none() -> None:
    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    bal.set_unhealthy(frozenset().union(*(keys_of(g) for g in SEED_GROUPS)))
    assert bal.pick("r", SEED_ACTION, CTX) is None


@pytest.mark.parametrize(
    "action",
    [forward(("svc-tea", 0), ("svc-coffee", 0)), forward(("missing", 100))],
    ids=["all weights zero", "unknown group"],
)
def test_no_traffic_actions(action: ForwardAction) -> None:
    bal, _ = make(SEED_GROUPS, action)
    assert bal.pick("r", action, CTX) is None


def test_empty_group_gives_its_share_away() -> None:
    groups = [group("empty", ()), group("full", servers(1))]
    action = forward(("empty", 90), ("full", 10))
    bal, _ = make(groups, action)
    assert group_counts(picks(bal, action, 10)) == {"full": 10}


def test_passive_ejection_and_return() -> None:
    groups = [group("g", servers(2))]
    action = forward(("g", 100))
    bal, clock = make(groups, action)
    bad = server_key("g", "127.0.1.1", 8080)
    bal.report_failure(bad)
    assert bal.is_ejected(bad)
    assert {p.key for p in picks(bal, action, 6)} == {server_key("g", "127.0.1.2", 8080)}
    clock.now += 5.0
    assert bad in {p.key for p in picks(bal, action, 4)}
    # A second failure in a row: out for 10 s; a failure while out does not extend it.
    bal.report_failure(bad)
    bal.report_failure(bad)
    clock.now += 9.9
    assert bal.is_ejected(bad)
    clock.now += 0.1
    assert not bal.is_ejected(bad)
    # A success resets the ladder: the next failure is 5 s again.
    bal.report_success(bad)
    bal.report_failure(bad)
    clock.now += 5.0
    assert not bal.is_ejected(bad)


def test_ejection_is_capped() -> None:
    bal, clock = make([group("g", servers(1))], forward(("g", 100)))
    key = server_key("g", "127.0.1.1", 8080)
    for _ in range(10):
        bal.report_failure(key)
        clock.now += 60.0
        assert not bal.is_ejected(key)


def test_all_ejected_gives_none() -> None:
    action = forward(("g", 100))
    bal, clock = make([group("g", servers(1))], action)
    bal.report_failure(server_key("g", "127.0.1.1", 8080))
    assert bal.pick("r", action, CTX) is None
    clock.now += 5.0
    assert bal.pick("r", action, CTX) is not None


# --------------------------------------------------------------------------- updates


def test_state_survives_an_unrelated_update() -> None:
    other = group("sgp-other", servers(2, net=9))
    reference, _ = make(SEED_GROUPS, SEED_ACTION)
    expected = [p.key for p in picks(reference, SEED_ACTION, 37)]

    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    got = [p.key for p in picks(bal, SEED_ACTION, 13)]
    new_rules = [
        rule("r", actions=(SEED_ACTION,)),
        rule("r2", actions=(forward(("sgp-other", 1)),)),
    ]
    bal.update(ir_of(new_rules, [*SEED_GROUPS, other]))
    got += [p.key for p in picks(bal, SEED_ACTION, 24)]
    assert got == expected


def test_counters_and_ejections_survive_update() -> None:
    action = forward(("g", 100))
    bal, _ = make([group("g", servers(2))], action)
    k1, k2 = (server_key("g", f"127.0.1.{i}", 8080) for i in (1, 2))
    bal.acquire(k1)
    bal.report_failure(k2)
    bal.update(ir_of([rule("r", actions=(action,))], [group("g", servers(3))]))
    assert bal.active(k1) == 1
    assert bal.is_ejected(k2)
    bal.release(k1)
    bal.release(k1)  # never below zero
    assert bal.active(k1) == 0


def test_changed_weights_take_effect() -> None:
    action = forward(("svc-tea", 50), ("svc-coffee", 50))
    bal, _ = make(SEED_GROUPS, action)
    picks(bal, action, 3)
    changed = forward(("svc-tea", 75), ("svc-coffee", 25))
    bal.update(ir_of([rule("r", actions=(changed,))], SEED_GROUPS))
    counts = group_counts(picks(bal, changed, 400))
    assert abs(counts["svc-tea"] - 300) <= 1


# --------------------------------------------------------------------------- retries


def test_retry_prefers_another_server_of_the_same_group() -> None:
    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    first = bal.pick("r", SEED_ACTION, CTX)
    assert first is not None and first.group.id == "svc-tea"
    retry_ctx = PickContext("127.0.0.1", "/", "", None, exclude=frozenset({first.key}))
    retry = bal.pick("r", SEED_ACTION, retry_ctx)
    assert retry is not None
    assert retry.group.id == "svc-tea" and retry.key != first.key


def test_retry_moves_to_another_group_when_its_own_is_exhausted() -> None:
    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    vm = SEED_GROUPS[2]
    retry_ctx = PickContext("127.0.0.1", "/", "", None, exclude=keys_of(vm))
    got = group_counts(picks_ctx(bal, SEED_ACTION, retry_ctx, 70))
    assert "sgp-vm" not in got and sum(got.values()) == 70


# --------------------------------------------------------------------------- property


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=5).filter(
        lambda w: sum(w) > 0
    ),
    k=st.integers(min_value=1, max_value=3),
    sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=5, max_size=5),
)
def test_counts_are_exact_over_whole_cycles(weights: list[int], k: int, sizes: list[int]) -> None:
    groups = [group(f"g{i}", servers(sizes[i], net=i + 1)) for i in range(len(weights))]
    action = forward(*((f"g{i}", w) for i, w in enumerate(weights)))
    bal, _ = make(groups, action)
    counts = group_counts(picks(bal, action, sum(weights) * k))
    assert counts == {f"g{i}": w * k for i, w in enumerate(weights) if w > 0}


# --------------------------------------------------------------------------- more


def test_big_equal_weight_group_is_round_robin_over_usable_servers() -> None:
    big = group("big", servers(200))
    action = forward(("big", 100))
    bal, _ = make([big], action)
    down = frozenset(sorted(keys_of(big))[:50])
    bal.set_unhealthy(down)
    counts = Counter(p.key for p in picks(bal, action, 1500))
    assert set(counts) == keys_of(big) - down
    assert set(counts.values()) == {10}


def test_pick_in_group_for_mirroring() -> None:
    bal, _ = make(SEED_GROUPS, SEED_ACTION)
    got = {bal.pick_in_group("svc-coffee", CTX).key for _ in range(4)}  # type: ignore[union-attr]
    assert got == keys_of(SEED_GROUPS[1])
    assert bal.pick_in_group("nope", CTX) is None
    bal.set_unhealthy(keys_of(SEED_GROUPS[1]))
    assert bal.pick_in_group("svc-coffee", CTX) is None


def test_pick_without_cookie_reuses_one_pick_object() -> None:
    action = forward(("g", 100))
    bal, _ = make([group("g", servers(1))], action)
    first, second = bal.pick("r", action, CTX), bal.pick("r", action, CTX)
    assert first is second and first is not None and first.set_cookie is None


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=60), min_size=2, max_size=5),
    down=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_shares_of_down_groups_go_to_the_others_exactly(
    weights: list[int], down: list[bool]
) -> None:
    groups = [group(f"g{i}", servers(2, net=i + 1)) for i in range(len(weights))]
    action = forward(*((f"g{i}", w) for i, w in enumerate(weights)))
    bal, _ = make(groups, action)
    picks(bal, action, 7)  # any rotation state to start from
    is_down = down[: len(weights)]
    bal.set_unhealthy(frozenset().union(*(keys_of(groups[i]) for i, d in enumerate(is_down) if d)))
    live = {f"g{i}": w for i, w in enumerate(weights) if not is_down[i]}
    if not live:
        assert bal.pick("r", action, CTX) is None
        return
    # A new set of live groups starts a fresh rotation: every whole cycle is exact at once.
    assert group_counts(picks(bal, action, 2 * sum(live.values()))) == {
        g: 2 * w for g, w in live.items()
    }


def test_server_shares_exact_again_after_a_server_returns() -> None:
    members = servers(3)
    members = (members[0], replace(members[1], weight=50), replace(members[2], weight=30))
    action = forward(("g", 100))
    bal, clock = make([group("g", members)], action)
    picks(bal, action, 7)
    bad = server_key("g", "127.0.1.1", 8080)
    bal.report_failure(bad)
    assert Counter(p.server.address for p in picks(bal, action, 80)) == {
        "127.0.1.2": 50,
        "127.0.1.3": 30,
    }
    clock.now += 5
    assert Counter(p.server.address for p in picks(bal, action, 180)) == {
        "127.0.1.1": 100,
        "127.0.1.2": 50,
        "127.0.1.3": 30,
    }


@pytest.mark.parametrize("n", [2, 3, 50], ids=["2 servers", "3 servers", "50 servers"])
def test_equal_weights_rotate_in_server_order_from_the_first(n: int) -> None:
    members = servers(n)
    action = forward(("g", 100))
    bal, _ = make([group("g", members)], action)
    got = [p.server.address for p in picks(bal, action, 2 * n)]
    assert got == [s.address for s in members] * 2
