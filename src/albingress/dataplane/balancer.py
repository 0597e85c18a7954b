"""Weighted forwarding over server groups, the way ALB does it.

A rule's ForwardAction lists (server group, weight) pairs. The weight belongs to the *group*,
whatever its number of servers: a group of one server with weight 50 gets half of the requests
next to a group of ten servers with weight 50. Two levels, both deterministic:

1. across the groups of one action: smooth weighted round robin (nginx's algorithm: every pick
   adds each candidate's weight to its running ``current``, takes the largest, and subtracts the
   candidates' total from it), with a rotation per rule;
2. inside the chosen group, by its scheduler: WRR (the same algorithm over the servers' own
   weights, rotation per group), WLC (fewest active requests per unit of weight), SCH (consistent
   hash of the client IP) or UCH (consistent hash of a query-string value, or of the URL).

When the set of live groups (or servers) changes, its rotation starts afresh: every whole cycle
of ``sum(weights)`` picks then gives each exactly its weight.

A server is *usable* when its weight is above 0, the active health checks do not list it, and the
passive check has not ejected it (one refused or reset connection, or one response timeout,
takes it out 5 s, doubling on each failure in a row up to 60 s). Groups without a usable server are left out, so the others share their
traffic in proportion to their weights; when nothing is usable, :meth:`Balancer.pick` returns None
and the proxy answers 503.

Stickiness lives in one cookie, :data:`STICKY_COOKIE`, whose value is
``<group tag>.<expiry>.<server tag>.<expiry>`` (tags are short hashes, expiries Unix seconds;
either half may be empty): the group half for ``ForwardAction.sticky``, the server half for a
group's own ``StickySession`` of type Insert.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from albingress.dataplane.accesslog import NO_PICK, pick_part
from albingress.dataplane.servercookie import COOKIE_MARK, server_cookie_pin
from albingress.ir import (
    IR,
    ForwardAction,
    GroupSource,
    Protocol,
    Scheduler,
    Server,
    ServerGroup,
    StickySession,
    server_key,
)

__all__ = ["EJECT_BASE", "EJECT_MAX", "STICKY_COOKIE", "Balancer", "Pick", "PickContext"]

STICKY_COOKIE = "albingress_sg"  # the name of the cookie that pins a client to a group/server
EJECT_BASE = 5.0  # seconds out after the first connect failure in a row
EJECT_MAX = 60.0  # the longest ejection
_RING_VNODES = 40  # points on the hash ring of a weight-100 server (fewer for lower weights)


@dataclass(frozen=True, slots=True)
class PickContext:
    client_ip: str
    path: str
    query: str
    sticky_cookie: str | None  # value of the request's STICKY_COOKIE cookie, if any
    exclude: frozenset[str] = frozenset()  # server keys (ir.server_key) already tried
    cookie: bytes = b""  # the request's Cookie headers, joined (StickySession type Server)

    def serves_again(self, path: str, query: str) -> bool:
        """Whether this context fits a request without cookies to ``path`` and ``query``."""
        cookieless = not self.cookie and not self.sticky_cookie
        return cookieless and self.path == path and self.query == query


@dataclass(frozen=True, slots=True)
class Pick:
    group: ServerGroup
    server: Server
    key: str  # ir.server_key(group.id, server.address, server.port)
    set_cookie: str | None  # a full Set-Cookie header value to add to the response, or None
    group_label: str = ""  # the group as the access log names it: a Service's name, else its id
    address: str = ""  # the server as "address:port"
    # StickySession type Server: b"<cookie name>=" (the server's cookie), and the mark that the
    # response's Set-Cookie gets in front of its value (see server_cookie_pin)
    cookie_name: bytes = b""
    cookie_mark: bytes = b""
    tls: bool = False  # the group's protocol is HTTPS: connections to the server use TLS
    # group_label and address for the access log (accesslog.pick_part)
    log_part: msgspec.Raw = dataclasses.field(default_factory=lambda: NO_PICK)

    @classmethod
    def of(cls, group: ServerGroup, server: Server, key: str) -> Pick:
        """The pick of ``server`` in ``group`` without a cookie, its labels made once."""
        label = group.name if group.source is GroupSource.SERVICE else group.id
        name = server_cookie_name(group.sticky)
        mark = COOKIE_MARK + _tag(key).encode() + b"." if name else b""
        address = f"{server.address}:{server.port}"
        tls = group.protocol is Protocol.HTTPS
        part = pick_part(label, address)
        return cls(group, server, key, None, label, address, name, mark, tls, part)

    def with_cookie(self, set_cookie: str) -> Pick:
        return dataclasses.replace(self, set_cookie=set_cookie)


def server_cookie_name(sticky: StickySession) -> bytes:
    """b"<cookie>=" for a StickySession of type Server (the compiler checked it is a token),
    else b""."""
    if sticky.enabled and sticky.type == "Server" and sticky.cookie:
        return sticky.cookie.encode("latin-1", "replace") + b"="
    return b""


def _tag(text: str) -> str:  # short and stable across processes, unlike hash()
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


# --------------------------------------------------------------------------- mutable state


class _Weighted:
    __slots__ = ("current", "weight")

    def __init__(self, weight: int) -> None:
        self.weight = weight
        self.current = 0


_W = TypeVar("_W", bound=_Weighted)


def _swrr(candidates: Sequence[_W]) -> _W:
    """nginx's smooth weighted round robin over non-empty ``candidates`` (all weight > 0)."""
    total = 0
    best = candidates[0]
    for c in candidates:
        c.current += c.weight
        total += c.weight
        if c.current > best.current:
            best = c
    best.current -= total
    return best


class _ServerState(_Weighted):
    __slots__ = ("active", "ejected_until", "failures", "healthy", "key", "pick", "server", "tag")

    def __init__(self, key: str, server: Server, group: ServerGroup) -> None:
        super().__init__(server.weight)
        self.key = key
        self.server = server
        self.pick = Pick.of(group, server, key)  # the answer when no cookie is set
        self.tag = _tag(key)
        self.active = 0  # requests in flight (WLC)
        self.failures = 0  # connect failures in a row (passive check)
        self.ejected_until = 0.0  # clock() time until which the passive check keeps it out
        self.healthy = True  # not listed by the active health checks


class _GroupState:
    __slots__ = ("_ep", "_until", "_usable", "cursor", "equal", "group", "ring", "servers", "tag")

    def __init__(self, group: ServerGroup, servers: list[_ServerState]) -> None:
        self.group = group
        self.servers = servers
        self.tag = _tag(group.id)
        self.ring: tuple[list[int], list[_ServerState]] | None = None  # built on first hash pick
        self._usable: list[_ServerState] = []
        self._ep = -1  # the balancer epoch _usable was computed at
        self._until = 0.0
        self.equal = False  # the usable servers all have the same weight
        self.cursor = 0  # round robin position when they do (SWRR's own order then)

    def usable(self, now: float, epoch: int) -> list[_ServerState]:
        """Usable servers, cached until the balancer's epoch moves or an ejection ends."""
        if epoch == self._ep and now < self._until:
            return self._usable
        until = math.inf
        usable = []
        for s in self.servers:
            if s.weight <= 0 or not s.healthy:
                continue
            if s.ejected_until > now:
                until = min(until, s.ejected_until)
                continue
            usable.append(s)
        if usable != self._usable:  # a new set: start its rotation afresh, so shares are exact
            for s in usable:
                s.current = 0
            self.cursor = 0
        self._usable, self._ep, self._until = usable, epoch, until
        self.equal = len({s.weight for s in usable}) <= 1
        return usable

    def hash_ring(self) -> tuple[list[int], list[_ServerState]]:
        if self.ring is None:
            points: list[tuple[int, str, _ServerState]] = []
            for s in self.servers:
                if s.weight <= 0:
                    continue
                name = f"{s.server.address}:{s.server.port}"
                for i in range(max(1, round(_RING_VNODES * s.weight / 100))):
                    points.append((_hash64(f"{name}#{i}"), name, s))
            points.sort(key=lambda p: (p[0], p[1]))
            self.ring = ([p[0] for p in points], [p[2] for p in points])
        return self.ring


class _GroupEntry(_Weighted):
    __slots__ = ("group_id", "state", "usable")

    def __init__(self, group_id: str, weight: int) -> None:
        super().__init__(weight)
        self.group_id = group_id
        self.state: _GroupState | None = None  # resolved by _RuleState.resolve
        self.usable: list[_ServerState] = []  # scratch: this pick's usable servers


class _RuleState:
    __slots__ = ("action", "entries", "fast", "live", "sticky")

    def __init__(self, action: ForwardAction, entries: list[_GroupEntry]) -> None:
        self.action = action
        self.entries = entries
        self.sticky = action.sticky  # any cookie to read (group or server stickiness)
        self.live = -1  # bit i set: entries[i] was a candidate at the last (non-retry) pick
        # (balancer epoch, clock time, candidates) of the last plain pick: reused until either
        # moves (entries' ``usable`` stay as that pick left them; a retry resets this)
        self.fast: tuple[int, float, list[_GroupEntry]] | None = None

    def resolve(self, groups: dict[str, _GroupState]) -> None:
        """Point the entries at the current group states (after each update)."""
        self.sticky = self.action.sticky
        for e in self.entries:
            e.state = groups.get(e.group_id)
            if e.state is not None and e.state.group.sticky.enabled:
                self.sticky = True


@dataclass(frozen=True, slots=True)
class _Sticky:
    """A parsed sticky cookie; empty tags mean "no pin"."""

    group: str
    group_expiry: int
    server: str
    server_expiry: int

    @classmethod
    def parse(cls, value: str | None) -> _Sticky:
        parts = (value or "").strip().strip('"').split(".")
        if len(parts) != 4:
            return _NO_STICKY
        try:
            gexp = int(parts[1]) if parts[1] else 0
            sexp = int(parts[3]) if parts[3] else 0
        except ValueError:
            return _NO_STICKY
        return cls(parts[0], gexp, parts[2], sexp)

    def value(self) -> str:
        gexp = str(self.group_expiry) if self.group else ""
        sexp = str(self.server_expiry) if self.server else ""
        return f"{self.group}.{gexp}.{self.server}.{sexp}"


_NO_STICKY = _Sticky("", 0, "", 0)


# --------------------------------------------------------------------------- the balancer


class Balancer:
    """Chooses a server for each forwarded request; one per worker process."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock  # ejections
        self._wall = wall_clock  # sticky cookie expiries (they outlive the process)
        self._groups: dict[str, _GroupState] = {}
        self._servers: dict[str, _ServerState] = {}
        self._rules: dict[str, _RuleState] = {}
        self._unhealthy: frozenset[str] = frozenset()
        self._epoch = 0  # moves whenever usability may have changed

    # ----------------------------------------------------------------- configuration and health

    def update(self, ir: IR) -> None:
        """Take a new IR; rotation, counters and ejections of what still exists are kept."""
        groups: dict[str, _GroupState] = {}
        servers: dict[str, _ServerState] = {}
        for group in ir.server_groups:
            old = self._groups.get(group.id)
            if old is not None and (old.group is group or old.group == group):
                groups[group.id] = old  # unchanged: keep every state as it is
                servers.update((st.key, st) for st in old.servers)
                continue
            states = []
            for srv in group.servers:
                key = server_key(group.id, srv.address, srv.port)
                st = self._servers.get(key) or _ServerState(key, srv, group)
                st.server, st.weight = srv, srv.weight
                st.pick = Pick.of(group, srv, key)
                st.healthy = key not in self._unhealthy
                states.append(st)
                servers[key] = st
            if old is None:
                groups[group.id] = _GroupState(group, states)
            else:
                old.group, old.servers, old.ring = group, states, None
                groups[group.id] = old
        forwarding = {
            rule.name
            for lst in ir.listeners
            for rule in lst.rules
            if rule.actions and isinstance(rule.final, ForwardAction)
        }
        self._groups, self._servers = groups, servers
        self._rules = {n: s for n, s in self._rules.items() if n in forwarding}
        for state in self._rules.values():
            state.resolve(groups)
        self._epoch += 1

    def set_unhealthy(self, keys: frozenset[str]) -> None:
        """The server keys the active health checks currently find unhealthy (all others are ok)."""
        self._unhealthy = frozenset(keys)
        for key, st in self._servers.items():
            st.healthy = key not in self._unhealthy
        self._epoch += 1

    def acquire(self, key: str) -> None:
        st = self._servers.get(key)
        if st is not None:
            st.active += 1

    def release(self, key: str) -> None:
        st = self._servers.get(key)
        if st is not None and st.active > 0:
            st.active -= 1

    def report_failure(self, key: str) -> None:
        """A connect was refused or reset, or a response timed out: eject it for a while."""
        st = self._servers.get(key)
        if st is None:
            return
        now = self._clock()
        if st.ejected_until > now:  # failures of requests already in flight: same incident
            return
        st.failures += 1
        st.ejected_until = now + min(EJECT_BASE * 2 ** (st.failures - 1), EJECT_MAX)
        self._epoch += 1

    def report_success(self, key: str) -> None:
        """The server answered: the next failure starts the ejection ladder again."""
        st = self._servers.get(key)
        if st is not None:
            st.failures = 0

    def answered(self, key: str) -> None:
        """``report_success`` and ``release`` together: the end of a request the server answered."""
        st = self._servers.get(key)
        if st is not None:
            st.failures = 0
            if st.active > 0:
                st.active -= 1

    def is_ejected(self, key: str) -> bool:
        st = self._servers.get(key)
        return st is not None and st.ejected_until > self._clock()

    def active(self, key: str) -> int:  # requests in flight, for WLC and metrics
        st = self._servers.get(key)
        return 0 if st is None else st.active

    # ----------------------------------------------------------------- picking

    def pick(self, rule_name: str, action: ForwardAction, ctx: PickContext) -> Pick | None:
        """The server for one request of ``rule_name``, or None when no server is usable."""
        now = self._clock()
        epoch = self._epoch
        exclude = ctx.exclude
        state = self._rules.get(rule_name)
        if state is None or state.action is not action:
            state = self._rule_state(rule_name, action)
        fast = state.fast
        if fast is not None and not exclude and fast[0] == epoch and now < fast[1]:
            # the common case, the same usable groups and servers as the last pick
            cached = fast[2]
            chosen = cached[0] if len(cached) == 1 else _swrr(cached)
            usable = chosen.usable
            if len(usable) == 1:
                return usable[0].pick
            assert chosen.state is not None
            return self._pick_server(chosen.state, usable, ctx).pick
        state.fast = None
        candidates: list[_GroupEntry] = []
        live = 0
        for i, entry in enumerate(state.entries):
            gs = entry.state
            if entry.weight <= 0 or gs is None:
                continue
            usable = gs.usable(now, epoch)
            if exclude and usable:
                usable = [s for s in usable if s.key not in exclude]
            if usable:
                entry.usable = usable
                candidates.append(entry)
                live |= 1 << i
        if not candidates:
            return None
        if live != state.live and not exclude:  # groups came or went: a fresh exact rotation
            for entry in state.entries:
                entry.current = 0
            state.live = live

        if not state.sticky and not exclude:  # the common case
            until = min(e.state._until for e in state.entries if e.state is not None)
            state.fast = (epoch, until, candidates)  # until an epoch or an ejection moves
            chosen = candidates[0] if len(candidates) == 1 else _swrr(candidates)
            assert chosen.state is not None
            return self._pick_server(chosen.state, chosen.usable, ctx).pick

        sticky = _NO_STICKY
        wall = int(self._wall())
        if ctx.sticky_cookie and state.sticky:
            sticky = _Sticky.parse(ctx.sticky_cookie)
        found = None
        if exclude:  # a retry: another server of the same group if it has one
            tried = {k.partition("|")[0] for k in exclude}
            found = next((c for c in candidates if c.group_id in tried), None)
        group_pinned = False
        if found is None and action.sticky and sticky.group and sticky.group_expiry > wall:
            found = next((c for c in candidates if c.state and c.state.tag == sticky.group), None)
            group_pinned = found is not None
        if found is None:
            found = candidates[0] if len(candidates) == 1 else _swrr(candidates)
        gs = found.state
        assert gs is not None
        pinned, server_pinned = self._sticky_server(gs, found.usable, sticky, wall, ctx.cookie)
        st = self._pick_server(gs, found.usable, ctx) if pinned is None else pinned
        set_cookie = self._cookie(
            action, gs, st, sticky, group_pinned=group_pinned, server_pinned=server_pinned
        )
        return st.pick if set_cookie is None else st.pick.with_cookie(set_cookie)

    def pick_in_group(self, group_id: str, ctx: PickContext) -> Pick | None:
        """A server of one group by its scheduler (for traffic mirroring); None when none."""
        gs = self._groups.get(group_id)
        if gs is None:
            return None
        usable = [s for s in gs.usable(self._clock(), self._epoch) if s.key not in ctx.exclude]
        return self._pick_server(gs, usable, ctx).pick if usable else None

    def _rule_state(self, rule_name: str, action: ForwardAction) -> _RuleState:
        state = self._rules.get(rule_name)
        if state is not None and (state.action is action or state.action == action):
            state.action = action
            return state
        state = _RuleState(action, [_GroupEntry(g.group_id, g.weight) for g in action.groups])
        state.resolve(self._groups)
        self._rules[rule_name] = state
        return state

    def _sticky_server(
        self,
        gs: _GroupState,
        usable: list[_ServerState],
        sticky: _Sticky,
        wall: int,
        cookie: bytes,
    ) -> tuple[_ServerState | None, bool]:
        """The server a cookie pins inside ``gs``: ours (group StickySession type Insert), or
        the server's own, marked on its way out (type Server)."""
        cfg = gs.group.sticky
        if not cfg.enabled:
            return None, False
        tag: str | None = None
        if cfg.type == "Insert":
            if sticky.server and sticky.server_expiry > wall:
                tag = sticky.server
        elif cookie:
            tag = server_cookie_pin(cookie, server_cookie_name(cfg))
        if tag is not None:
            for s in usable:
                if s.tag == tag:
                    return s, True
        return None, False

    def _pick_server(
        self, gs: _GroupState, usable: list[_ServerState], ctx: PickContext
    ) -> _ServerState:
        """A server among ``usable`` (non-empty) by the group's scheduler."""
        if len(usable) == 1:
            return usable[0]
        scheduler = gs.group.scheduler
        if scheduler is Scheduler.WRR:
            if gs.equal:  # SWRR over equal weights is round robin in list order: O(1)
                i = gs.cursor % len(usable)
                gs.cursor = i + 1
                return usable[i]
            return _swrr(usable)
        if scheduler is Scheduler.WLC:
            return _least_loaded(usable)
        if scheduler is Scheduler.SCH:
            value = ctx.client_ip
        else:
            value = _uch_value(gs.group.uch_key, ctx.path, ctx.query)
        found = self._ring_pick(gs, value, ctx.exclude)
        return _swrr(usable) if found is None else found

    def _ring_pick(
        self, gs: _GroupState, value: str, exclude: frozenset[str]
    ) -> _ServerState | None:
        points, owners = gs.hash_ring()
        if not points:
            return None
        now = self._clock()
        start = bisect.bisect_left(points, _hash64(value))
        n = len(points)
        for i in range(n):
            s = owners[(start + i) % n]
            if s.weight > 0 and s.healthy and s.ejected_until <= now and s.key not in exclude:
                return s
        return None

    def _cookie(
        self,
        action: ForwardAction,
        gs: _GroupState,
        st: _ServerState,
        sticky: _Sticky,
        *,
        group_pinned: bool,
        server_pinned: bool,
    ) -> str | None:
        cfg = gs.group.sticky
        server_sticky = cfg.enabled and cfg.type == "Insert"
        need_group = action.sticky and not group_pinned
        need_server = server_sticky and not server_pinned
        if not need_group and not need_server:
            return None
        wall = int(self._wall())
        if action.sticky:
            gexp = wall + action.sticky_timeout if need_group else sticky.group_expiry
            gtag = gs.tag
        else:
            gtag, gexp = "", 0
        if server_sticky:
            sexp = wall + cfg.cookie_timeout if need_server else sticky.server_expiry
            stag = st.tag
        else:
            stag, sexp = "", 0
        value = _Sticky(gtag, gexp, stag, sexp).value()
        max_age = max(gexp, sexp) - wall
        return f"{STICKY_COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly"


def _least_loaded(usable: list[_ServerState]) -> _ServerState:
    """WLC: the fewest active requests per unit of weight; ties share by weight (SWRR)."""
    best = [usable[0]]
    for s in usable[1:]:
        b = best[0]
        lhs, rhs = s.active * b.weight, b.active * s.weight
        if lhs < rhs:
            best = [s]
        elif lhs == rhs:
            best.append(s)
    return best[0] if len(best) == 1 else _swrr(best)


def _uch_value(key: str, path: str, query: str) -> str:
    """UCH hashes the value of query key ``key``; without it, the whole URL path and query."""
    if key:
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            if eq and name == key:
                return value
    return f"{path}?{query}" if query else path
