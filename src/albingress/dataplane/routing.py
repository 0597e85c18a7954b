"""The routing table: which rule of a listener answers a request.

Built once from an IR (pure: no I/O, no clock) and then only read, so a worker swaps whole tables
atomically. Semantics are those of ``reference/alb-semantics.md`` sections 3 and 4:

- the answer is the first rule, in IR order (``Listener.rules`` is sorted by precedence), whose
  host, path and conditions all match;
- hosts match case-insensitively without the port; ``*.foo.com`` matches exactly one more label;
- Exact paths compare whole and case-sensitively; Prefix paths compare element-wise on ``/``;
  ImplementationSpecific paths are ALB patterns with ``*`` and ``?`` (with use-regex: regular
  expressions, matched from the start of the path);
- condition blocks are ANDed, the values inside one block ORed; every value is an ALB pattern.
  Host and Header values compare case-insensitively, Path, Cookie and QueryString values (the
  query percent-decoded) case-sensitively; an empty QueryString key stands for any key; a
  SourceIp is a CIDR; response-direction conditions are ignored here; an unknown or malformed
  condition never matches, so its rule is never chosen by mistake.

How a lookup stays cheap whatever the number of rules::

    listener port ──dict──> _Listener
      host (lowercase, no port) ──dict──> exact host's nodes ──┐  usually one node holding the
      parent domain (one label off) ──dict──> wildcard's nodes ├─ host's rules merged in IR
      otherwise ──────────────────────────> hostless nodes ───┘  order with the shared ones

A :class:`_Node` with few rules is a list scanned in order. A bigger one is a step of a trie on
path segments: the request's next segment picks the child holding the rules that fix that
segment (``/api/v1`` fixes ``api`` then ``v1``; the pattern ``/files/*.png`` fixes ``files``)
together with the rules that fix none at that depth (``/``, ``*.png``). A lookup walks down one
dict get per segment until a short list remains, so its cost follows the depth at which rules
differ, not their number. Rules shared by many hosts (hostless, wildcard) are copied into each
host's index when few, and otherwise indexed once and searched beside it, the best IR index found
so far bounding each later search. Rules after a catch-all (``/`` Prefix, no conditions) in the
same list can never answer and are dropped, which keeps copied lists short.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

from albingress.ir import IR, Condition, PathMatch, PathType, Rule

__all__ = ["RoutingTable", "compile_pattern", "normalize_host", "path_regex"]

# A _Node with at most this many rules is scanned linearly: cheaper than a trie step.
_LINEAR_MAX = 8

_NO_INDEX = 1 << 62  # a bound above every rule index

# Shared rules (hostless, a wildcard's, those fixing no segment) are copied into each index that
# needs them when there are at most this many; more are indexed once and searched beside.
_MERGE_MAX = 64


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
    if path.type is PathType.REGEX:
        found = path_regex(value)
        return lambda p: found.match(p) is not None
    regex = compile_pattern(value)
    return lambda p: regex.fullmatch(p) is not None


@functools.lru_cache(maxsize=4096)
def path_regex(value: str) -> re.Pattern[str]:
    """A use-regex path, matched from the start of the request's path (its groups are what a
    rewrite's ${1}.. stand for). The compiler checked that it compiles."""
    return re.compile(value)


def _fixed_segments(path: PathMatch | None) -> tuple[str, ...]:
    """The leading path segments every request this rule matches must have.

    ``/a/b`` (Exact or Prefix) -> ``("a", "b")``; the pattern ``/files/7/*.png`` ->
    ``("files", "7")``; the root prefix, ``None`` and ``*.png`` -> ``()``.
    """
    if path is None or path.type is PathType.REGEX:
        return ()
    value = path.value
    if path.type is PathType.PREFIX:
        value = value.rstrip("/")
        return tuple(value[1:].split("/")) if value.startswith("/") else ()
    if not value.startswith("/"):
        return ()
    if path.type is PathType.IMPLEMENTATION_SPECIFIC:
        head = re.split(r"[*?]", value, maxsplit=1)[0]
        if head != value:  # the segment holding the first wildcard is not fixed
            return tuple(head[1:].split("/")[:-1])
    return tuple(value[1:].split("/"))


def _any_pattern(values: Iterable[str], ignore_case: bool) -> Callable[[str], bool]:
    regexes = [compile_pattern(v, ignore_case=ignore_case) for v in values]
    return lambda s: any(r.fullmatch(s) is not None for r in regexes)


def _pairs_check(values: Iterable[str]) -> Callable[[list[tuple[str, str]]], bool]:
    """``key=value`` alternatives, both ALB patterns; an empty key stands for any key."""
    wanted = []
    for v in values:
        key, _, val = v.partition("=")
        wanted.append((compile_pattern(key or "*"), compile_pattern(val)))

    def check(pairs: list[tuple[str, str]]) -> bool:
        return any(
            kre.fullmatch(k) is not None and vre.fullmatch(v) is not None
            for k, v in pairs
            for kre, vre in wanted
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
    segments: tuple[str, ...]  # leading path segments fixed by the rule's path (see below)
    catch_all: bool  # matches every request: nothing after it in IR order can be reached


def _compile_rule(index: int, rule: Rule) -> _Entry:
    checks: list[_Check] = []
    for cond in rule.conditions:
        try:
            check = _compile_condition(cond)
        except (ValueError, re.error):
            check = lambda _r: False  # noqa: E731 -- a broken condition never matches
        if check is not None:
            checks.append(check)
    path = rule.path
    catch_all = not checks and (
        path is None
        or (path.type is PathType.PREFIX and not path.value.strip("/"))
        or (path.type is PathType.IMPLEMENTATION_SPECIFIC and path.value.strip("*") == "")
    )
    return _Entry(index, rule, _path_check(path), tuple(checks), _fixed_segments(path), catch_all)


# --------------------------------------------------------------------------- path indexes

_Args = tuple[str, str, str, str, Sequence[tuple[bytes, bytes]], str]  # see _Request


def _checks_hold(e: _Entry, args: _Args) -> bool:
    req = _Request(*args)  # only rules with conditions pay for it
    return all(c(req) for c in e.checks)


def _reachable(entries: list[_Entry]) -> list[_Entry]:
    """``entries`` (IR order) cut after the first catch-all: what follows it is unreachable."""
    for i, e in enumerate(entries):
        if e.catch_all:
            return entries[: i + 1]
    return entries


def _ir_order(*groups: Iterable[_Entry]) -> list[_Entry]:
    return _reachable(sorted((e for g in groups for e in g), key=lambda e: e.index))


@dataclass(frozen=True, slots=True)
class _Node:
    """Rules that may answer a request, in IR order; split on one path segment when many.

    A node with ``children`` sends a request on by its next path segment to the child holding
    the rules that fix that segment (with the rules that fix none merged in, or in ``also`` when
    too many to copy); other segments go to ``rest``. A node without children is scanned.
    """

    entries: tuple[_Entry, ...]  # IR order; scanned when ``children`` is None
    children: dict[str, _Node] | None
    rest: _Node | None  # for a segment no child has, or no segment at all
    also: tuple[_Node, ...] = ()  # searched beside this node: shared groups kept apart

    def find(self, path: str, start: int, args: _Args, bound: int) -> _Entry | None:
        """The first entry below ``bound`` that matches; ``start``: offset of this segment."""
        found = self.walk(path, start, args, bound)
        for other in self.also:
            better = other.find(path, start, args, bound if found is None else found.index)
            if better is not None:
                found = better
        return found

    def walk(self, path: str, start: int, args: _Args, bound: int) -> _Entry | None:
        """:meth:`find` without ``also``; a loop down the trie, cheaper than calls."""
        node = self
        while True:
            children = node.children
            if children is None:
                for e in node.entries:
                    if e.index >= bound:
                        return None
                    if e.path_ok(path) and (not e.checks or _checks_hold(e, args)):
                        return e
                return None
            # Past the end of the path the segment reads "" (its child holds every rule that can
            # still match: those fixing no more segments; the rest are rejected by path_ok).
            end = path.find("/", start)
            if end < 0:
                child = children.get(path[start:], node.rest)
                start = len(path) + 1
            else:
                child = children.get(path[start:end], node.rest)
                start = end + 1
            if child is None:
                return None
            if child.also:
                return child.find(path, start, args, bound)
            node = child


def _node(entries: list[_Entry], depth: int = 0) -> _Node:
    """A node for ``entries`` (IR order) that dispatches on segment ``depth`` if worthwhile."""
    entries = _reachable(entries)
    if len(entries) <= _LINEAR_MAX:
        return _Node(tuple(entries), None, None)
    fixed: dict[str, list[_Entry]] = {}
    anywhere: list[_Entry] = []
    for e in entries:
        if depth < len(e.segments):
            fixed.setdefault(e.segments[depth], []).append(e)
        else:
            anywhere.append(e)
    if not fixed:  # nothing more to split on
        return _Node(tuple(entries), None, None)
    rest = _node(anywhere, depth + 1) if anywhere else None
    children: dict[str, _Node] = {}
    for seg, group in fixed.items():
        if rest is None or len(anywhere) <= _MERGE_MAX:
            children[seg] = _node(_ir_order(group, anywhere), depth + 1)
        else:
            child = _node(group, depth + 1)
            children[seg] = _Node(child.entries, child.children, child.rest, (*child.also, rest))
    return _Node(tuple(entries), children, rest)


_EMPTY = _Node((), None, None)


def _root(own: list[_Entry], *shared: tuple[list[_Entry], _Node | None]) -> _Node:
    """The node one host searches: its own rules merged with each small shared group, and the
    prebuilt node of each shared group too big to copy searched beside."""
    merged = list(own)
    apart = []
    for entries, prebuilt in shared:
        if prebuilt is not None:
            apart.append(prebuilt)
        else:
            merged.extend(entries)
    node = _node(_ir_order(merged)) if merged else _EMPTY
    return _Node(node.entries, node.children, node.rest, (*node.also, *apart))


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class _Listener:
    exact: dict[str, _Node]  # host -> its rules, matching wildcard rules, hostless rules
    wildcard: dict[str, _Node]  # parent domain of "*.parent" -> those and hostless rules
    default: _Node  # hostless rules


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

    # Shared groups (hostless rules, a wildcard's rules) are copied into each host's index when
    # small; a big one is indexed once and searched beside the host's own rules.
    def shared(entries: list[_Entry]) -> tuple[list[_Entry], _Node | None]:
        return entries, (_node(entries) if len(entries) > _MERGE_MAX else None)

    any_host = shared(hostless)
    wild_shared = {parent: shared(entries) for parent, entries in wild.items()}
    exact_nodes = {}
    for host, entries in exact.items():
        dot = host.find(".")
        wild_group = wild_shared.get(host[dot + 1 :]) if dot > 0 else None
        extra = [any_host] if wild_group is None else [wild_group, any_host]
        exact_nodes[host] = _root(entries, *extra)
    wild_nodes = {p: _root([], group, any_host) for p, group in wild_shared.items()}
    return _Listener(exact_nodes, wild_nodes, _root([], any_host))


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
        node = listener.exact.get(h)
        if node is None:
            dot = h.find(".")
            if dot > 0:
                node = listener.wildcard.get(h[dot + 1 :])
            if node is None:
                node = listener.default
        args = (h, path, method, query, headers, client_ip)
        if node.also:
            found = node.find(path, 1, args, _NO_INDEX)
        else:
            found = node.walk(path, 1, args, _NO_INDEX)
        return None if found is None else found.rule

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(sorted(self._listeners))
