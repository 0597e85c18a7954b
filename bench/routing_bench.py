"""Micro-benchmark of RoutingTable.route: does lookup cost stay flat from 10 to 10,000 rules?

Not a test. Run ``uv run python bench/routing_bench.py [--seconds S]``. It builds two tables:

- 10 rules: two hosts with a few paths each, a wildcard host, two hostless rules;
- 10,000 rules: 1,700 hosts with 5 paths each, one host with 1,000 Prefix rules (``/svcN`` and
  ``/svcN/v1``), 459 wildcard hosts, 40 hostless ImplementationSpecific patterns and a hostless
  Prefix rule,

then routes the same mix of requests (hits on exact hosts, wildcard hosts, the big host, and
hostless rules) through each, and prints lookups per second for both and their ratio. The requirement is
a ratio of at least 0.9 (throughput may fall no more than 10%).
"""

from __future__ import annotations

import argparse
import time

from albingress.dataplane.routing import RoutingTable
from albingress.ir import (
    IR,
    FixedResponseAction,
    Listener,
    PathMatch,
    PathType,
    Rule,
)

Request = tuple[int, str, str, str, str, tuple[tuple[bytes, bytes], ...], str]
HEADERS = ((b"user-agent", b"bench"), (b"accept", b"*/*"))


def _rule(name: str, host: str, ptype: PathType, value: str) -> Rule:
    return Rule(
        name=name,
        ingress="bench/ing",
        order=10,
        host=host,
        path=PathMatch(ptype, value),
        conditions=(),
        actions=(FixedResponseAction(content=name),),
    )


def _sort(rules: list[Rule]) -> tuple[Rule, ...]:
    """The compiler's precedence: Exact, then Prefix by length, then patterns."""
    kind = {PathType.EXACT: 0, PathType.PREFIX: 1, PathType.IMPLEMENTATION_SPECIFIC: 2}

    def key(r: Rule) -> tuple[int, int, str]:
        assert r.path is not None
        return (kind[r.path.type], -len(r.path.value), r.name)

    return tuple(sorted(rules, key=key))


def small_table() -> tuple[IR, list[Request]]:
    rules = [
        _rule("a-api", "a.example.com", PathType.PREFIX, "/api"),
        _rule("a-login", "a.example.com", PathType.EXACT, "/login"),
        _rule("a-root", "a.example.com", PathType.PREFIX, "/"),
        _rule("b-api", "b.example.com", PathType.PREFIX, "/api/v1"),
        _rule("b-img", "b.example.com", PathType.IMPLEMENTATION_SPECIFIC, "/img/*.png"),
        _rule("b-root", "b.example.com", PathType.PREFIX, "/"),
        _rule("w-api", "*.wild.example.com", PathType.PREFIX, "/api"),
        _rule("w-root", "*.wild.example.com", PathType.PREFIX, "/"),
        _rule("any", "", PathType.PREFIX, "/health"),
        _rule("img", "", PathType.IMPLEMENTATION_SPECIFIC, "/files/*/*.png"),
    ]
    requests = [
        "a.example.com|/api/users/42",
        "a.example.com|/login",
        "b.example.com:80|/api/v1/items",
        "B.Example.com|/img/logo.png",
        "x.wild.example.com|/api/x",
        "y.wild.example.com|/index.html",
        "other.org|/health",
        "other.org|/files/7/a.png",
    ]
    return _ir(rules), _requests(requests)


def large_table() -> tuple[IR, list[Request]]:
    rules: list[Rule] = []
    for h in range(1700):
        host = f"h{h}.example.com"
        rules.append(_rule(f"h{h}-login", host, PathType.EXACT, "/login"))
        rules.append(_rule(f"h{h}-api", host, PathType.PREFIX, "/api"))
        rules.append(_rule(f"h{h}-apiv2", host, PathType.PREFIX, "/api/v2"))
        rules.append(_rule(f"h{h}-static", host, PathType.PREFIX, "/static"))
        rules.append(_rule(f"h{h}-root", host, PathType.PREFIX, "/"))
    for s in range(500):
        rules.append(_rule(f"big-svc{s}", "big.example.com", PathType.PREFIX, f"/svc{s}"))
        rules.append(_rule(f"big-svc{s}-v1", "big.example.com", PathType.PREFIX, f"/svc{s}/v1"))
    for w in range(459):
        rules.append(_rule(f"w{w}", f"*.w{w}.example.com", PathType.PREFIX, "/"))
    for p in range(40):
        pattern = f"/files/{p}/*.png"
        rules.append(_rule(f"img{p}", "", PathType.IMPLEMENTATION_SPECIFIC, pattern))
    rules.append(_rule("any", "", PathType.PREFIX, "/health"))
    assert len(rules) == 10_000
    requests = [
        "h17.example.com|/api/users/42",
        "h1234.example.com|/login",
        "H999.example.com:80|/api/v2/items",
        "big.example.com|/svc321/v1/orders",
        "big.example.com|/svc7/other",
        "x.w42.example.com|/index.html",
        "other.org|/health",
        "other.org|/files/7/a.png",
    ]
    return _ir(rules), _requests(requests)


def _ir(rules: list[Rule]) -> IR:
    return IR(listeners=(Listener(80, "HTTP", _sort(rules)),), server_groups=())


def _requests(specs: list[str]) -> list[Request]:
    out: list[Request] = []
    for spec in specs:
        host, path = spec.split("|")
        out.append((80, host, path, "GET", "a=1", HEADERS, "127.0.0.1"))
    return out


def lookups_per_second(table: RoutingTable, requests: list[Request], seconds: float) -> float:
    """Lookups per second over one run of about ``seconds``."""
    route = table.route
    batch = requests * 200
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for req in batch:
            route(*req)
        done += len(batch)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="total measuring time")
    parser.add_argument("--rounds", type=int, default=20, help="alternating runs per table")
    args = parser.parse_args()
    tables = {}
    for name, (ir, requests) in (("10", small_table()), ("10000", large_table())):
        start = time.perf_counter()
        table = RoutingTable.build(ir)
        built = time.perf_counter() - start
        assert all(table.route(*req) is not None for req in requests)
        tables[name] = (table, requests, built)
    # Short runs taken in turn, best of each: background load hits both tables alike.
    best = dict.fromkeys(tables, 0.0)
    slice_s = args.seconds / (2 * args.rounds)
    for _ in range(args.rounds):
        for name, (table, requests, _built) in tables.items():
            best[name] = max(best[name], lookups_per_second(table, requests, slice_s))
    for name, (_table, _requests, built) in tables.items():
        print(f"{name:>6} rules: build {built * 1000:7.1f} ms, {best[name]:12,.0f} lookups/s")
    ratio = best["10000"] / best["10"]
    print(f" ratio 10000/10: {ratio:.3f} (requirement >= 0.90)")


if __name__ == "__main__":
    main()
