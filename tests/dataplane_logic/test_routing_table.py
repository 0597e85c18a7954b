"""RoutingTable: hosts, path types, conditions and precedence (alb-semantics sections 3-4)."""

from __future__ import annotations

import re
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from albingress.dataplane import routing
from albingress.dataplane.routing import RoutingTable, compile_pattern, normalize_host
from albingress.ir import Condition, PathType, Rule

from .irbuild import ir_of, rule

EXACT, PREFIX, IMPL = PathType.EXACT, PathType.PREFIX, PathType.IMPLEMENTATION_SPECIFIC


def route(
    rules: list[Rule],
    host: str = "example.com",
    path: str = "/",
    *,
    method: str = "GET",
    query: str = "",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    client_ip: str = "127.0.0.1",
    port: int = 80,
) -> str | None:
    table = RoutingTable.build(ir_of(rules))
    found = table.route(port, host, path, method, query, headers, client_ip)
    return None if found is None else found.name


# --------------------------------------------------------------------------- paths

PATH_CASES = [
    # (id, path type, rule value, request path, matches)
    ("exact matches itself", EXACT, "/foo", "/foo", True),
    ("exact is not a prefix", EXACT, "/foo", "/foo/", False),
    ("exact is case-sensitive", EXACT, "/foo", "/FOO", False),
    ("prefix matches itself", PREFIX, "/foo", "/foo", True),
    ("prefix matches trailing slash", PREFIX, "/foo", "/foo/", True),
    ("prefix matches below", PREFIX, "/foo", "/foo/bar", True),
    ("prefix is element-wise", PREFIX, "/foo", "/foobar", False),
    ("prefix with trailing slash in rule", PREFIX, "/aaa/bbb/", "/aaa/bbb", True),
    ("prefix root matches all", PREFIX, "/", "/anything/at/all", True),
    ("prefix is case-sensitive", PREFIX, "/foo", "/Foo/bar", False),
    ("prefix with double slash below", PREFIX, "/foo", "/foo//bar", True),
    ("pattern star", IMPL, "/api/*/items", "/api/v1/items", True),
    ("pattern star spans slashes", IMPL, "/api/*", "/api/v1/x/y", True),
    ("pattern question mark is one char", IMPL, "/v?/x", "/v1/x", True),
    ("pattern question mark not two", IMPL, "/v?/x", "/v12/x", False),
    ("pattern without wildcard is exact", IMPL, "/static", "/static/x", False),
    ("pattern dots are literal", IMPL, "/a.b", "/axb", False),
    ("pattern leading star", IMPL, "*.png", "/img/a.png", True),
]


@pytest.mark.parametrize(
    ("ptype", "value", "path", "matches"),
    [c[1:] for c in PATH_CASES],
    ids=[c[0] for c in PATH_CASES],
)
def test_path_types(ptype: PathType, value: str, path: str, matches: bool) -> None:
    rules = [rule("r", path=value, path_type=ptype)]
    assert (route(rules, path=path) == "r") is matches


# --------------------------------------------------------------------------- hosts

HOST_CASES = [
    # (id, rule host, request Host header, matches)
    ("exact host", "foo.com", "foo.com", True),
    ("host is case-insensitive", "foo.com", "FOO.Com", True),
    ("port is ignored", "foo.com", "foo.com:8080", True),
    ("trailing dot is ignored", "foo.com", "foo.com.", True),
    ("other host", "foo.com", "bar.com", False),
    ("wildcard one label", "*.foo.com", "bar.foo.com", True),
    ("wildcard with port", "*.foo.com", "Bar.Foo.com:80", True),
    ("wildcard not two labels", "*.foo.com", "baz.bar.foo.com", False),
    ("wildcard not the apex", "*.foo.com", "foo.com", False),
    ("wildcard not an empty label", "*.foo.com", ".foo.com", False),
    ("no host matches any", "", "whatever.example", True),
    ("no host matches empty Host", "", "", True),
    ("exact host needs a Host", "foo.com", "", False),
    ("ipv6 literal with port", "[::1]", "[::1]:8080", True),
]


@pytest.mark.parametrize(
    ("rule_host", "host", "matches"),
    [c[1:] for c in HOST_CASES],
    ids=[c[0] for c in HOST_CASES],
)
def test_hosts(rule_host: str, host: str, matches: bool) -> None:
    assert (route([rule("r", host=rule_host)], host=host) == "r") is matches


def test_normalize_host() -> None:
    assert normalize_host("Example.COM:443") == "example.com"
    assert normalize_host("[::1]:80") == "[::1]"
    assert normalize_host("") == ""


# --------------------------------------------------------------------------- precedence


def test_first_rule_in_ir_order_wins_across_host_kinds() -> None:
    rules = [
        rule("hostless-exact", path="/x", path_type=EXACT),
        rule("wildcard", host="*.foo.com", path="/"),
        rule("exact-host", host="a.foo.com", path="/"),
        rule("hostless", path="/"),
    ]
    assert route(rules, host="a.foo.com", path="/x") == "hostless-exact"
    assert route(rules, host="a.foo.com", path="/y") == "wildcard"
    assert route(rules, host="b.foo.com", path="/y") == "wildcard"
    assert route(rules, host="other.com", path="/y") == "hostless"


def test_exact_host_rule_before_wildcard_when_earlier() -> None:
    rules = [rule("exact-host", host="a.foo.com"), rule("wildcard", host="*.foo.com")]
    assert route(rules, host="a.foo.com") == "exact-host"
    assert route(rules, host="b.foo.com") == "wildcard"


def test_unknown_listener_and_no_match() -> None:
    rules = [rule("r", host="foo.com", path="/a")]
    assert route(rules, host="foo.com", path="/a", port=443) is None
    assert route(rules, host="foo.com", path="/b") is None


def test_rule_without_path_matches_every_path() -> None:
    assert route([rule("default", path=None)], path="/any/thing") == "default"


# --------------------------------------------------------------------------- conditions


def cond(kind: str, *values: str, key: str = "") -> Condition:
    return Condition(kind, values, key)


COND_CASES = [
    # (id, conditions, request overrides, matches)
    ("method matches", (cond("Method", "GET", "POST"),), {"method": "POST"}, True),
    ("method differs", (cond("Method", "POST"),), {"method": "GET"}, False),
    ("header value", (cond("Header", "v1", "v2", key="x-env"),), {"h": [(b"X-Env", b"v2")]}, True),
    (
        "header value pattern",
        (cond("Header", "gr?y*", key="x-env"),),
        {"h": [(b"x-env", b"grey-1")]},
        True,
    ),
    ("header absent", (cond("Header", "v1", key="x-env"),), {"h": [(b"x-other", b"v1")]}, False),
    (
        "header second copy",
        (cond("Header", "b", key="x-a"),),
        {"h": [(b"x-a", b"a"), (b"x-a", b"b")]},
        True,
    ),
    ("cookie", (cond("Cookie", "user=alice"),), {"h": [(b"cookie", b"a=1; user=alice")]}, True),
    (
        "cookie other value",
        (cond("Cookie", "user=alice"),),
        {"h": [(b"Cookie", b"user=bob")]},
        False,
    ),
    ("cookie wildcard", (cond("Cookie", "user=*"),), {"h": [(b"Cookie", b"user=bob")]}, True),
    ("query", (cond("QueryString", "v=2"),), {"query": "a=1&v=2"}, True),
    ("query any value", (cond("QueryString", "v=*"),), {"query": "v=9"}, True),
    ("query missing", (cond("QueryString", "v=2"),), {"query": "w=2"}, False),
    ("query decoded", (cond("QueryString", "name=a b"),), {"query": "name=a%20b"}, True),
    ("query without key", (cond("QueryString", "=beta"),), {"query": "x=1&ch=beta"}, True),
    ("query key pattern", (cond("QueryString", "v*=2"),), {"query": "ver=2"}, True),
    ("query key is not a prefix", (cond("QueryString", "v=2"),), {"query": "ver=2"}, False),
    ("source ip in cidr", (cond("SourceIp", "127.0.1.0/24"),), {"ip": "127.0.1.7"}, True),
    ("source ip outside", (cond("SourceIp", "127.0.1.0/24"),), {"ip": "127.0.2.7"}, False),
    ("source ip garbage", (cond("SourceIp", "127.0.1.0/24"),), {"ip": "nonsense"}, False),
    ("source ip v4-mapped", (cond("SourceIp", "127.0.0.0/8"),), {"ip": "::ffff:127.0.0.5"}, True),
    ("host condition", (cond("Host", "*.example.com"),), {"host": "A.example.com:80"}, True),
    ("path condition", (cond("Path", "/a/*"),), {"path": "/a/b"}, True),
    ("path condition miss", (cond("Path", "/a/*"),), {"path": "/b"}, False),
    (
        "blocks are ANDed",
        (cond("Method", "GET"), cond("QueryString", "x=1")),
        {"query": "x=2"},
        False,
    ),
    ("response conditions ignored", (cond("ResponseStatusCode", "500"),), {}, True),
    ("unknown type never matches", (cond("Weather", "sunny"),), {}, False),
]


@pytest.mark.parametrize(
    ("conditions", "req", "matches"),
    [c[1:] for c in COND_CASES],
    ids=[c[0] for c in COND_CASES],
)
def test_conditions(
    conditions: tuple[Condition, ...], req: dict[str, object], matches: bool
) -> None:
    rules = [rule("r", conditions=conditions), rule("fallback")]
    got = route(
        rules,
        host=str(req.get("host", "example.com")),
        path=str(req.get("path", "/")),
        method=str(req.get("method", "GET")),
        query=str(req.get("query", "")),
        headers=tuple(req.get("h", ())),  # type: ignore[call-overload]
        client_ip=str(req.get("ip", "127.0.0.1")),
    )
    assert got == ("r" if matches else "fallback")


def test_compile_pattern_escapes_regex_syntax() -> None:
    assert compile_pattern("/a+(b)").fullmatch("/a+(b)")
    assert not compile_pattern("/a+(b)").fullmatch("/aa(b)")
    assert compile_pattern("X*", ignore_case=True).fullmatch("xyz")


# --------------------------------------------------------------------------- big tables


def test_many_prefix_rules_on_one_host_keep_ir_order() -> None:
    # Longest first, as the compiler sorts them; plus a catch-all pattern in the middle.
    rules = [rule(f"p{i}", host="big.com", path=f"/svc{i}/v1") for i in range(500)]
    rules += [rule(f"s{i}", host="big.com", path=f"/svc{i}") for i in range(500)]
    rules.insert(700, rule("img", host="big.com", path="*.png", path_type=IMPL))
    rules.append(rule("root", host="big.com"))
    assert route(rules, host="big.com", path="/svc42/v1/x") == "p42"
    assert route(rules, host="big.com", path="/svc42/v2") == "s42"
    assert route(rules, host="big.com", path="/svc420/v1/a.png") == "p420"
    # s150 sits at index 650, before the pattern (700); s499 comes after it.
    assert route(rules, host="big.com", path="/svc150/a.png") == "s150"
    assert route(rules, host="big.com", path="/svc499/a.png") == "img"
    assert route(rules, host="big.com", path="/svc4200") == "root"
    assert route(rules, host="big.com", path="/svc7") == "s7"
    assert route(rules, host="big.com", path="/svc7/") == "s7"
    assert route(rules, host="big.com", path="/svc7/v1") == "p7"


def test_many_rules_under_one_first_segment() -> None:
    rules = [rule(f"v{i}", host="api.com", path=f"/api/v{i}/items") for i in range(40)]
    rules += [rule(f"e{i}", host="api.com", path=f"/api/v{i}", path_type=EXACT) for i in range(40)]
    rules += [rule("api", host="api.com", path="/api"), rule("root", host="api.com")]
    assert route(rules, host="api.com", path="/api/v3/items/") == "v3"
    assert route(rules, host="api.com", path="/api/v3/items/9") == "v3"
    assert route(rules, host="api.com", path="/api/v3") == "e3"
    assert route(rules, host="api.com", path="/api/v3/") == "api"
    assert route(rules, host="api.com", path="/api/") == "api"
    assert route(rules, host="api.com", path="/apis") == "root"


def test_many_hosts() -> None:
    rules = [rule(f"h{i}", host=f"h{i}.example.com", path="/") for i in range(3000)]
    rules.append(rule("wild", host="*.example.com"))
    assert route(rules, host="h2999.example.com") == "h2999"
    assert route(rules, host="zzz.example.com") == "wild"
    assert route(rules, host="example.com") is None


def test_many_hostless_and_wildcard_rules_are_searched_beside_a_host() -> None:
    # More shared rules than get copied into each host: they are indexed once, searched beside.
    rules = [rule(f"any{i}", path=f"/any{i}") for i in range(100)]
    rules.insert(50, rule("a-50", host="a.x.com", path="/any70"))
    rules += [rule(f"w{i}", host="*.x.com", path=f"/w{i}") for i in range(100)]
    rules += [rule("a-root", host="a.x.com"), rule("w-root", host="*.x.com")]
    assert route(rules, host="a.x.com", path="/any7") == "any7"  # hostless, earlier than a-root
    assert route(rules, host="a.x.com", path="/any70") == "a-50"  # host rule at index 50
    assert route(rules, host="a.x.com", path="/w99") == "w99"  # wildcard rule before a-root
    assert route(rules, host="a.x.com", path="/zzz") == "a-root"
    assert route(rules, host="b.x.com", path="/any99") == "any99"
    assert route(rules, host="b.x.com", path="/zzz") == "w-root"
    assert route(rules, host="c.org", path="/zzz") is None


def test_rules_after_a_catch_all_never_answer() -> None:
    rules = [
        rule("post-root", conditions=(cond("Method", "POST"),)),
        rule("root"),
        rule("later", path="/later"),
    ]
    assert route(rules, path="/later", method="POST") == "post-root"
    assert route(rules, path="/later") == "root"


# --------------------------------------------------------------------------- property: index = scan


def _reference(rules: list[Rule], host: str, path: str, method: str) -> str | None:
    """A deliberately naive reading of section 4: scan every rule in order."""
    h = host.lower().split(":")[0]
    for r in rules:
        if r.host.startswith("*."):
            head, _, parent = h.partition(".")
            if not head or parent != r.host[2:]:
                continue
        elif r.host and r.host != h:
            continue
        assert r.path is not None
        v = r.path.value
        if r.path.type is EXACT:
            ok = path == v
        elif r.path.type is PREFIX:
            parts = [p for p in v.split("/") if p]
            ok = [p for p in path.split("/") if p][: len(parts)] == parts  # element-wise
        else:
            ok = (
                re.fullmatch(v.replace(".", r"\.").replace("*", ".*").replace("?", "."), path)
                is not None
            )
        if ok and all(method in c.values for c in r.conditions):  # only Method conditions here
            return r.name
    return None


segments = st.sampled_from(["a", "b", "ab"])
paths = st.lists(segments, min_size=0, max_size=3).map(lambda p: "/" + "/".join(p))
rule_specs = st.tuples(
    st.sampled_from(["", "y.x.com", "y.x.com", "*.x.com"]),
    st.sampled_from([EXACT, PREFIX, IMPL]),
    paths,
    st.booleans(),  # ImplementationSpecific: append "/*"
    st.sampled_from([False, False, True]),  # a Method: POST condition
)


@pytest.mark.parametrize(
    ("linear_max", "merge_max"),
    [(8, 64), (0, 0), (2, 3)],
    ids=["default thresholds", "index everything, merge nothing", "small thresholds"],
)
@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(rule_specs, min_size=1, max_size=40),
    host=st.sampled_from(["x.com", "y.x.com", "z.x.com", "Y.X.com:81", "other.org"]),
    path=st.tuples(paths, st.booleans()).map(lambda t: t[0] + ("/" if t[1] else "")),
    method=st.sampled_from(["GET", "POST"]),
)
def test_table_agrees_with_a_linear_scan(
    linear_max: int,
    merge_max: int,
    specs: list[tuple[str, PathType, str, bool, bool]],
    host: str,
    path: str,
    method: str,
) -> None:
    rules = []
    for i, (rhost, ptype, value, star, post_only) in enumerate(specs):
        if ptype is IMPL and star:
            value = value.rstrip("/") + "/*"
        conditions = (cond("Method", "POST"),) if post_only else ()
        rules.append(rule(f"r{i}", host=rhost, path=value, path_type=ptype, conditions=conditions))
    # The thresholds only choose between equivalent structures: the answer must not change.
    with (
        patch.object(routing, "_LINEAR_MAX", linear_max),
        patch.object(routing, "_MERGE_MAX", merge_max),
    ):
        got = route(rules, host=host, path=path, method=method)
        assert got == _reference(rules, host, path, method)
