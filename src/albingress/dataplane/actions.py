"""Pure helpers that carry out a rule's actions other than forwarding.

The proxy calls them in the order ALB runs actions (reference section 2): TrafficLimit first
(:class:`TrafficLimiter`), then InsertHeader / RemoveHeader (:func:`apply_header_actions`) and
Rewrite (:func:`rewrite`) as written, then the final action: a forward (the balancer), a
:func:`redirect_location` or a :func:`fixed_response`. Nothing here does I/O; the limiter takes
an injectable clock.

Variables ``${host}``, ``${path}``, ``${port}``, ``${protocol}`` and ``${query}`` stand for the
request's own values wherever an action field allows them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from albingress.ir import (
    Action,
    FixedResponseAction,
    InsertHeaderAction,
    RedirectAction,
    RemoveHeaderAction,
    RewriteAction,
    TrafficLimitAction,
)

__all__ = [
    "TrafficLimiter",
    "apply_header_actions",
    "fixed_response",
    "redirect_location",
    "rewrite",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _substitute(template: str, values: dict[str, str]) -> str:
    """Replace each ``${name}`` known in ``values``; anything else is left as written."""
    if "${" not in template:
        return template
    out = []
    i = 0
    while True:
        start = template.find("${", i)
        if start < 0:
            out.append(template[i:])
            break
        end = template.find("}", start + 2)
        if end < 0:
            out.append(template[i:])
            break
        name = template[start + 2 : end]
        out.append(template[i:start])
        out.append(values.get(name.lower(), template[start : end + 1]))
        i = end + 1
    return "".join(out)


def _strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.rpartition(":")[0] if ":" in host else host


def redirect_location(
    action: RedirectAction, scheme: str, host: str, port: int, path: str, query: str
) -> str:
    """The Location of a Redirect action for a request to ``scheme://host:port/path?query``.

    Default ports (80 for http, 443 for https) are left out of the result, as is an empty query.
    When the scheme changes, a request on the old scheme's default port goes to the new scheme's
    default port unless the action names a port.
    """
    scheme = scheme.lower()
    values = {
        "host": _strip_port(host),
        "path": path,
        "port": str(port),
        "protocol": scheme,
        "query": query,
    }
    new_scheme = _substitute(action.protocol, values).strip().lower() or scheme
    new_host = _substitute(action.host, values).strip() or values["host"]
    new_port = _substitute(action.port, values).strip()
    if (
        new_scheme != scheme
        and action.port.strip() == "${port}"
        and port == _DEFAULT_PORTS.get(scheme)
    ):
        # http://h/ -> https with the port left as it was: the new scheme's default port, not
        # https://h:80/ (the usual HTTP-to-HTTPS redirect names no port).
        new_port = ""
    new_path = _substitute(action.path, values) or "/"
    if not new_path.startswith("/"):
        new_path = "/" + new_path
    new_query = _substitute(action.query, values).removeprefix("?")
    authority = new_host
    if new_port and new_port != str(_DEFAULT_PORTS.get(new_scheme, "")):
        authority = f"{new_host}:{new_port}"
    location = f"{new_scheme}://{authority}{new_path}"
    return f"{location}?{new_query}" if new_query else location


def fixed_response(action: FixedResponseAction) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers (Content-Type and Content-Length) and body of a FixedResponse action."""
    body = action.content.encode("utf-8")
    content_type = action.content_type or "text/plain"
    if content_type.startswith(("text/", "application/json")) and "charset" not in content_type:
        content_type += "; charset=utf-8"
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
    ]
    return action.http_code, headers, body


def apply_header_actions(
    actions: Sequence[Action],
    headers: list[tuple[bytes, bytes]],
    client_ip: str,
    *,
    client_port: int = 0,
    lb_id: str = "albingress",
    lb_port: int = 0,
    protocol: str = "http",
) -> list[tuple[bytes, bytes]]:
    """The request headers after the InsertHeader and RemoveHeader actions, in order.

    InsertHeader values: UserDefined is the value as written; ReferenceHeader copies the value
    of the named request header (nothing is inserted when it is absent); SystemDefined is one of
    ClientSrcIp, ClientSrcPort, SLBId, SLBPort, Protocol. Without CoverEnabled an existing header
    of that name is kept and nothing is added; with it, every existing one is replaced. Header
    names compare case-insensitively. The input list is not modified.
    """
    system = {
        "clientsrcip": client_ip,
        "clientsrcport": str(client_port),
        "slbid": lb_id,
        "slbport": str(lb_port),
        "protocol": protocol.lower(),
    }
    result = list(headers)
    for action in actions:
        if isinstance(action, RemoveHeaderAction):
            name = action.key.lower().encode("latin-1")
            result = [(k, v) for k, v in result if k.lower() != name]
        elif isinstance(action, InsertHeaderAction):
            name = action.key.lower().encode("latin-1")
            value: str | bytes | None
            kind = action.value_type.lower()
            if kind == "referenceheader":
                ref = action.value.lower().encode("latin-1")
                value = next((v for k, v in result if k.lower() == ref), None)
            elif kind == "systemdefined":
                value = system.get(action.value.lower())
            else:
                value = action.value
            if value is None:
                continue
            exists = any(k.lower() == name for k, _ in result)
            if exists and not action.cover:
                continue
            if exists:
                result = [(k, v) for k, v in result if k.lower() != name]
            raw = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
            result.append((action.key.encode("latin-1"), raw))
    return result


def rewrite(
    action: RewriteAction, host: str, path: str, query: str, groups: Sequence[str | None] = ()
) -> tuple[str, str, str]:
    """The (host, path, query) sent upstream after a Rewrite action; ``groups`` are the capture
    groups of a use-regex path, ``${1}``, ``${2}``... (an unmatched group is empty)."""
    values = {"host": host, "path": path, "query": query}
    for i, group in enumerate(groups, 1):
        values[str(i)] = group or ""
    new_host = _substitute(action.host, values) or host
    new_path = _substitute(action.path, values) or "/"
    if not new_path.startswith("/"):
        new_path = "/" + new_path
    new_query = _substitute(action.query, values).removeprefix("?")
    return new_host, new_path, new_query


# --------------------------------------------------------------------------- traffic limits


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def refill(self, now: float, rate: float) -> None:
        if now > self.stamp:
            self.tokens = min(max(1.0, rate), self.tokens + (now - self.stamp) * rate)
            self.stamp = now


@dataclass(frozen=True, slots=True)
class _Limits:
    qps: float  # tokens a second and bucket size for the whole rule
    per_ip: float  # the same per client address; 0 = unlimited


class TrafficLimiter:
    """Token buckets per rule (QPS) and per rule and client address (QPS per IP).

    A bucket holds one second of tokens (at least one) and refills continuously. ``share``
    divides the limits, so N worker processes each given ``share=N`` together allow the rate.
    """

    __slots__ = ("_clock", "_ips", "_max_ips", "_rules", "_share")

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        share: int = 1,
        max_ips: int = 100_000,
    ) -> None:
        self._clock = clock
        self._share = max(1, share)
        self._max_ips = max_ips  # idle per-IP buckets are dropped beyond this many
        self._rules: dict[str, _Bucket] = {}
        self._ips: dict[tuple[str, str], _Bucket] = {}

    def _limits(self, action: TrafficLimitAction) -> _Limits:
        return _Limits(action.qps / self._share, action.qps_per_ip / self._share)

    def allow(self, rule_name: str, action: TrafficLimitAction, client_ip: str) -> bool:
        """True when the request may pass (and it is counted); False: answer 503."""
        limits = self._limits(action)
        now = self._clock()
        rule = self._rules.get(rule_name)
        if rule is None:
            rule = self._rules[rule_name] = _Bucket(max(1.0, limits.qps), now)
        rule.refill(now, limits.qps)
        ip_bucket = None
        if limits.per_ip > 0:
            ip_bucket = self._ips.get((rule_name, client_ip))
            if ip_bucket is None:
                if len(self._ips) >= self._max_ips:
                    self._sweep(now, limits.per_ip)
                ip_bucket = _Bucket(max(1.0, limits.per_ip), now)
                self._ips[(rule_name, client_ip)] = ip_bucket
            ip_bucket.refill(now, limits.per_ip)
            if ip_bucket.tokens < 1:
                return False
        if rule.tokens < 1:
            return False
        rule.tokens -= 1
        if ip_bucket is not None:
            ip_bucket.tokens -= 1
        return True

    def _sweep(self, now: float, rate: float) -> None:
        """Forget per-IP buckets idle long enough to be full again (they would start full)."""
        idle = max(1.0, rate) / rate
        self._ips = {k: b for k, b in self._ips.items() if now - b.stamp < idle}
        if len(self._ips) >= self._max_ips:  # all busy: drop the oldest half
            keep = sorted(self._ips.items(), key=lambda kv: kv[1].stamp)[len(self._ips) // 2 :]
            self._ips = dict(keep)

    @property
    def tracked_ips(self) -> int:
        """How many per-IP buckets are held (bounded by ``max_ips``)."""
        return len(self._ips)

    def forget(self, rule_names: frozenset[str]) -> None:
        """Drop the buckets of rules that no longer exist (after a new IR)."""
        self._rules = {k: b for k, b in self._rules.items() if k in rule_names}
        self._ips = {k: b for k, b in self._ips.items() if k[0] in rule_names}
