"""The routing table: which rule of a listener answers a request.

Built once from an IR (pure: no I/O, no clock) and then only read, so a worker swaps whole tables
atomically. Semantics are those of ``reference/alb-semantics.md`` sections 3 and 4:

- the answer is the first rule, in IR order (``Listener.rules`` is sorted by precedence), whose
  host, path and conditions all match;
- hosts match case-insensitively without the port; ``*.foo.com`` matches exactly one more label;
- Exact paths compare whole and case-sensitively; Prefix paths compare element-wise on ``/``;
  ImplementationSpecific paths are ALB patterns with ``*`` and ``?``;
- condition blocks are ANDed, the values inside one block ORed.

How a lookup stays cheap whatever the number of rules::

    listener port ──dict──> _Listener
      host (lowercase, no port) ──dict──> exact host ──┐
      parent domain (one label off) ──dict──> wildcard ├─> 1-3 _PathIndex, searched in turn
      (always) ───────────────────────────> hostless ──┘   with "best IR index so far" as bound

A :class:`_PathIndex` with few rules is a plain list scanned in order. A big one keys its rules
by the exact path (Exact rules) or by the longest element prefix every matching path must have
(Prefix rules, and patterns by their literal head); a lookup then reads the buckets of the path
itself and of each of its element prefixes (``/a/b/c`` -> ``/a/b/c``, ``/a/b``, ``/a``, ``/``),
so its cost follows the depth of the path, not the number of rules.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

from albingress.ir import IR, Condition, PathMatch, PathType, Rule

__all__ = ["RoutingTable", "compile_pattern", "normalize_host"]

# A _PathIndex with at most this many entries is scanned linearly: cheaper than the dict gets.
_LINEAR_MAX = 8

_NO_INDEX = 1 << 62


def compile_pattern(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """An ALB wildcard pattern (``*`` any run, ``?`` one character) as a whole-string regex."""
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def normalize_host(host: str) -> str:
    """A Host header value as rules compare it: lowercase, no port, no trailing dot."""
    if not host:
        return ""
    h = host.strip().lower()
    if h.startswith("["):  # IPv6 literal, maybe with a port
        end = h.find("]")
        return h[: end + 1] if end > 0 else h
    colon = h.rfind(":")
    if colon >= 0:
        h = h[:colon]
    if h.endswith("."):
        h = h[:-1]
    return h


# --------------------------------------------------------------------------- a request's view


class _Request:
    """What conditions look at; cookies, query and client address are parsed on first use."""

    __slots__ = (
        "_cookies",
        "_ip",
        "_query",
        "client_ip",
        "headers",
        "host",
        "method",
        "path",
        "query",
    )

    def __init__(
        self,
        host: str,
        path: str,
        method: str,
        query: str,
        headers: Sequence[tuple[bytes, bytes]],
        client_ip: str,
    ) -> None:
        self.host = host
        self.path = path
        self.method = method
        self.query = query
        self.headers = headers
        self.client_ip = client_ip
        self._cookies: list[tuple[str, str]] | None = None
        self._query: list[tuple[str, str]] | None = None
        self._ip: ipaddress.IPv4Address | ipaddress.IPv6Address | bool | None = False

    def header_values(self, name: bytes) -> list[str]:
        return [v.decode("latin-1").strip() for k, v in self.headers if k.lower() == name]

    def cookies(self) -> list[tuple[str, str]]:
        if self._cookies is None:
            pairs: list[tuple[str, str]] = []
            for value in self.header_values(b"cookie"):
                for item in value.split(";"):
                    name, eq, val = item.strip().partition("=")
                    if eq:
                        pairs.append((name.strip(), val.strip().strip('"')))
            self._cookies = pairs
        return self._cookies

    def query_pairs(self) -> list[tuple[str, str]]:
        if self._query is None:
            pairs: list[tuple[str, str]] = []
            for item in self.query.split("&"):
                if item:
                    name, _, val = item.partition("=")
                    pairs.append((unquote_plus(name), unquote_plus(val)))
            self._query = pairs
        return self._query

    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if self._ip is False:
            try:
                addr = ipaddress.ip_address(self.client_ip.strip("[]"))
            except ValueError:
                addr = None
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            self._ip = addr
        ip = self._ip
        return None if isinstance(ip, bool) else ip


_Check = Callable[[_Request], bool]


# --------------------------------------------------------------------------- compiling rules


def _path_check(path: PathMatch | None) -> Callable[[str], bool]:
    if path is None:
        return lambda _p: True
    value = path.value
    if path.type is PathType.EXACT:
        return lambda p: p == value
    if path.type is PathType.PREFIX:
        base = value.rstrip("/")
        if not base:
            return lambda _p: True
        with_slash = base + "/"
        return lambda p: p == base or p.startswith(with_slash)
    regex = compile_pattern(value)
    return lambda p: regex.fullmatch(p) is not None


def _bucket_key(path: PathMatch | None) -> tuple[str, str]:
    """Where a rule goes in a big _PathIndex: ("exact", path) or ("prefix", element prefix).

    The element prefix is one that every path this rule matches must have (``/`` for any).
    """
    if path is None:
        return ("prefix", "/")
    if path.type is PathType.EXACT:
        return ("exact", path.value)
    if path.type is PathType.PREFIX:
        return ("prefix", path.value.rstrip("/") or "/")
    head = re.split(r"[*?]", path.value, maxsplit=1)[0]
    if head == path.value:  # no wildcard at all: an exact path
        return ("exact", head)
    cut = head.rfind("/")
    return ("prefix", head[:cut] if cut > 0 else "/")


def _any_pattern(values: Iterable[str], ignore_case: bool) -> Callable[[str], bool]:
    regexes = [compile_pattern(v, ignore_case=ignore_case) for v in values]
    return lambda s: any(r.fullmatch(s) is not None for r in regexes)


def _pairs_check(values: Iterable[str]) -> Callable[[list[tuple[str, str]]], bool]:
    """``key=value`` alternatives; a value ``*`` (or any pattern) matches by wildcard."""
    wanted = []
    for v in values:
        key, _, val = v.partition("=")
        wanted.append((key, compile_pattern(val)))

    def check(pairs: list[tuple[str, str]]) -> bool:
        return any(
            k == key and regex.fullmatch(v) is not None for k, v in pairs for key, regex in wanted
        )

    return check


def _compile_condition(cond: Condition) -> _Check | None:
    """The predicate of one condition block, or None when it never restricts routing."""
    kind = cond.type.lower()
    if kind == "host":
        host_ok = _any_pattern(cond.values, ignore_case=True)
        return lambda r: host_ok(r.host)
    if kind == "path":
        path_ok = _any_pattern(cond.values, ignore_case=False)
        return lambda r: path_ok(r.path)
    if kind == "header":
        name = cond.key.lower().encode("latin-1")
        value_ok = _any_pattern(cond.values, ignore_case=True)
        return lambda r: any(value_ok(v) for v in r.header_values(name))
    if kind == "cookie":
        cookie_ok = _pairs_check(cond.values)
        return lambda r: cookie_ok(r.cookies())
    if kind == "querystring":
        query_ok = _pairs_check(cond.values)
        return lambda r: query_ok(r.query_pairs())
    if kind == "method":
        methods = frozenset(v.upper() for v in cond.values)
        return lambda r: r.method.upper() in methods
    if kind == "sourceip":
        nets = [ipaddress.ip_network(v.strip(), strict=False) for v in cond.values]

        def source_ok(r: _Request) -> bool:
            ip = r.ip()
            return ip is not None and any(ip in net for net in nets)

        return source_ok
    if kind in ("responseheader", "responsestatuscode"):
        return None  # response-direction conditions do not choose a rule
    return lambda _r: False  # an unknown condition type: the rule cannot be proven to match


@dataclass(frozen=True, slots=True)
class _Entry:
    """One rule, compiled."""

    index: int  # the rule's position in Listener.rules: lower wins
    rule: Rule
    path_ok: Callable[[str], bool]
    checks: tuple[_Check, ...]  # every one must hold; empty = no conditions


def _compile_rule(index: int, rule: Rule) -> _Entry:
    checks: list[_Check] = []
    for cond in rule.conditions:
        try:
            check = _compile_condition(cond)
        except (ValueError, re.error):
            check = lambda _r: False  # noqa: E731 -- a broken condition never matches
        if check is not None:
            checks.append(check)
    return _Entry(index, rule, _path_check(rule.path), tuple(checks))


# --------------------------------------------------------------------------- path indexes


def _element_prefixes(path: str) -> list[str]:
    """``/a/b/c`` -> ``[/a/b/c, /a/b, /a, /]``: the keys a Prefix rule for this path can have."""
    keys = []
    if path != "/" and not path.endswith("/"):
        keys.append(path)
    i = path.rfind("/")
    while i > 0:
        keys.append(path[:i])
        i = path.rfind("/", 0, i)
    keys.append("/")
    return keys


@dataclass(frozen=True, slots=True)
class _PathIndex:
    """The rules that can answer one host, in IR order, indexed by path when there are many."""

    entries: tuple[_Entry, ...]  # IR order
    exact: dict[str, tuple[_Entry, ...]] | None  # None = scan ``entries`` linearly
    prefix: dict[str, tuple[_Entry, ...]] | None

    @classmethod
    def of(cls, entries: Iterable[_Entry]) -> _PathIndex:
        ordered = tuple(sorted(entries, key=lambda e: e.index))
        if len(ordered) <= _LINEAR_MAX:
            return cls(ordered, None, None)
        exact: dict[str, list[_Entry]] = {}
        prefix: dict[str, list[_Entry]] = {}
        for e in ordered:
            kind, key = _bucket_key(e.rule.path)
            (exact if kind == "exact" else prefix).setdefault(key, []).append(e)
        return cls(
            ordered,
            {k: tuple(v) for k, v in exact.items()},
            {k: tuple(v) for k, v in prefix.items()},
        )

    def find(self, path: str, req: _Request, bound: int) -> _Entry | None:
        """The first entry (lowest index below ``bound``) whose path and conditions match."""
        exact, prefix = self.exact, self.prefix
        if exact is None or prefix is None:
            for e in self.entries:
                if e.index >= bound:
                    return None
                if e.path_ok(path) and all(c(req) for c in e.checks):
                    return e
            return None
        best: _Entry | None = None
        buckets = [exact.get(path)]
        buckets.extend(prefix.get(k) for k in _element_prefixes(path))
        for bucket in buckets:
            if bucket is None:
                continue
            for e in bucket:
                if e.index >= bound:
                    break
                if e.path_ok(path) and all(c(req) for c in e.checks):
                    best, bound = e, e.index
                    break
        return best


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class _Listener:
    exact: dict[str, tuple[_PathIndex, ...]]  # host -> indexes to search (own, wildcard, any)
    wildcard: dict[str, tuple[_PathIndex, ...]]  # parent domain of "*.parent" -> indexes
    default: tuple[_PathIndex, ...]  # hostless rules only; may be empty

    def route(self, host: str, path: str, req: _Request) -> Rule | None:
        indexes = self.exact.get(host)
        if indexes is None:
            dot = host.find(".")
            if dot > 0:
                indexes = self.wildcard.get(host[dot + 1 :])
            if indexes is None:
                indexes = self.default
        best: _Entry | None = None
        bound = _NO_INDEX
        for index in indexes:
            found = index.find(path, req, bound)
            if found is not None:
                best, bound = found, found.index
        return None if best is None else best.rule


def _merge(*groups: Sequence[_Entry]) -> tuple[_PathIndex, ...]:
    """Indexes for one host: pre-merged into one when small, else one per non-empty group."""
    non_empty = [g for g in groups if g]
    if sum(len(g) for g in non_empty) <= _LINEAR_MAX or len(non_empty) <= 1:
        merged = [e for g in non_empty for e in g]
        return (_PathIndex.of(merged),) if merged else ()
    return tuple(_PathIndex.of(g) for g in non_empty)


def _build_listener(rules: Sequence[Rule]) -> _Listener:
    exact: dict[str, list[_Entry]] = {}
    wild: dict[str, list[_Entry]] = {}
    hostless: list[_Entry] = []
    for i, rule in enumerate(rules):
        entry = _compile_rule(i, rule)
        host = rule.host.lower().rstrip(".")
        if not host:
            hostless.append(entry)
        elif host.startswith("*."):
            wild.setdefault(host[2:], []).append(entry)
        else:
            exact.setdefault(host, []).append(entry)
    exact_tables = {}
    for host, entries in exact.items():
        dot = host.find(".")
        parent = host[dot + 1 :] if dot > 0 else None
        wild_entries = wild.get(parent, []) if parent is not None else []
        exact_tables[host] = _merge(entries, wild_entries, hostless)
    wild_tables = {parent: _merge(entries, hostless) for parent, entries in wild.items()}
    return _Listener(exact_tables, wild_tables, _merge(hostless))


class RoutingTable:
    """Every listener's rules, compiled for lookup. Immutable once built."""

    __slots__ = ("_listeners",)

    def __init__(self, listeners: dict[int, _Listener]) -> None:
        self._listeners = listeners

    @classmethod
    def build(cls, ir: IR) -> RoutingTable:
        return cls({lst.port: _build_listener(lst.rules) for lst in ir.listeners})

    def route(
        self,
        listener_port: int,
        host: str,
        path: str,
        method: str,
        query: str,
        headers: Sequence[tuple[bytes, bytes]],
        client_ip: str,
    ) -> Rule | None:
        """The rule that answers this request, or None (the proxy answers 404)."""
        listener = self._listeners.get(listener_port)
        if listener is None:
            return None
        h = normalize_host(host)
        return listener.route(h, path, _Request(h, path, method, query, headers, client_ip))

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(sorted(self._listeners))
