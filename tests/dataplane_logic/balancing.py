"""Shared helpers for the balancer tests: a fake clock, a seed-like setup, pick loops."""

from __future__ import annotations

from collections import Counter

from albingress.dataplane.balancer import STICKY_COOKIE, Balancer, Pick, PickContext
from albingress.ir import ForwardAction, ServerGroup, server_key

from .irbuild import forward, group, ir_of, rule, servers


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(groups: list[ServerGroup], action: ForwardAction) -> tuple[Balancer, FakeClock]:
    clock = FakeClock()
    bal = Balancer(clock=clock, wall_clock=clock)
    bal.update(ir_of([rule("r", actions=(action,))], groups))
    return bal, clock


CTX = PickContext(client_ip="127.0.0.1", path="/", query="", sticky_cookie=None)


def picks(bal: Balancer, action: ForwardAction, n: int, rule_name: str = "r") -> list[Pick]:
    out = []
    for _ in range(n):
        p = bal.pick(rule_name, action, CTX)
        assert p is not None
        out.append(p)
    return out


def group_counts(ps: list[Pick]) -> dict[str, int]:
    return dict(Counter(p.group.id for p in ps))


SEED_GROUPS = [
    group("svc-tea", servers(3, net=1)),
    group("svc-coffee", servers(2, net=2)),
    group("sgp-vm", servers(1, net=3)),
    group("sgp-idc", servers(10, net=4)),
]
SEED_ACTION = forward(("svc-tea", 30), ("svc-coffee", 20), ("sgp-vm", 30), ("sgp-idc", 20))


def keys_of(g: ServerGroup) -> frozenset[str]:
    return frozenset(server_key(g.id, s.address, s.port) for s in g.servers)


def picks_ctx(bal: Balancer, action: ForwardAction, ctx: PickContext, n: int) -> list[Pick]:
    out = []
    for _ in range(n):
        p = bal.pick("r", action, ctx)
        assert p is not None
        out.append(p)
    return out


def cookie_value(set_cookie: str | None) -> str:
    assert set_cookie is not None
    name, _, rest = set_cookie.partition("=")
    assert name == STICKY_COOKIE
    return rest.split(";")[0]
