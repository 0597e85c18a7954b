"""Reading a request head into an :class:`~.exchange.Exchange`, and what is refused.

Request checks beyond llhttp's own (llhttp already rejects Content-Length together with
Transfer-Encoding, duplicate Content-Length, bad chunk sizes, obs-fold, bare LF):

* RFC 9112 section 2.6 -- only HTTP/1.0 and HTTP/1.1: anything else gets 505;
* RFC 9112 section 3.2 -- an HTTP/1.1 request needs exactly one Host header;
* RFC 9112 section 6.1 -- Transfer-Encoding in an HTTP/1.0 request is refused;
* RFC 9110 section 9.3.6 -- CONNECT is not proxied (405);
* h2c smuggling -- ``Upgrade: h2c`` is never passed on: an HTTP/2 tunnel to a server would carry
  requests no rule has seen. The request is forwarded as a plain HTTP/1.1 one (RFC 9110 7.8 lets
  a server ignore Upgrade) and the connection closed after its answer;
* the request line and headers together above ``max_header_bytes`` (or more than
  ``max_headers`` fields): 431 (counted by the client connection).

Headers are sorted in one pass: hop-by-hop ones (RFC 9110 7.6.1, and those the Connection
header names) are dropped, X-Forwarded-* are the proxy's to set, Host, Cookie and Upgrade are
kept and remembered.

The fast lane (:func:`simple_shape`) takes a bodyless HTTP/1.1 request that llhttp has
already validated without per-header callbacks and that carries nothing the proxy must rewrite:
its head is then forwarded as received, plus X-Forwarded-*. What it reads (a
:class:`RequestShape`) is kept by the worker for the same bytes from any client; what a
connection routed is kept by that connection (:class:`RequestMemo`) for the same bytes again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httptools

from albingress.dataplane.accesslog import exchange_part
from albingress.dataplane.balancer import PickContext
from albingress.dataplane.exchange import Exchange
from albingress.dataplane.servercookie import COOKIE_MARK, strip_marks
from albingress.dataplane.wire import FORWARDED, HOP_BY_HOP, client_request_id
from albingress.ir import ForwardAction

if TYPE_CHECKING:
    import msgspec

    from albingress.dataplane.downstream import ClientConnection
    from albingress.ir import Rule


class RequestRejected(Exception):
    """Raised inside a parser callback to stop parsing: answer ``code`` and close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# What the header scan does with a request header, by lowercase name.
_DROP, _HOST, _XFF, _COOKIE, _CONNECTION, _UPGRADE, _TE, _RID = range(8)
_SPECIAL: dict[bytes, int] = dict.fromkeys(HOP_BY_HOP | FORWARDED, _DROP)
_SPECIAL.update(
    {
        b"host": _HOST,
        b"x-forwarded-for": _XFF,
        b"cookie": _COOKIE,
        b"connection": _CONNECTION,
        b"upgrade": _UPGRADE,
        b"transfer-encoding": _TE,
        b"x-request-id": _RID,
    }
)


# Request headers that rule out the fast lane (lowercased head): hop-by-hop ones, those the proxy
# rewrites or reads (X-Forwarded-*, Cookie for sticky sessions, Expect), any body framing.
_NOT_SIMPLE = re.compile(
    rb"\r\n(?:proxy-|x-forwarded-|[ \t]|(?:connection|keep-alive|te|trailer|transfer-encoding"
    rb"|upgrade|content-length|cookie|expect)[ \t]*:)"
)
_NO_HEADERS: list[tuple[bytes, bytes]] = []  # never modified
_HTTP2 = frozenset({b"h2c", b"h2"})  # upgrade tokens never tunnelled (h2c smuggling)


class RequestValidator:
    """Callbacks of the validating parser: messages begun and ended, keep-alive of the last."""

    __slots__ = ("begun", "checker", "done", "keep_alive")

    def __init__(self) -> None:
        self.begun = 0
        self.done = False
        self.keep_alive = False
        self.checker: httptools.HttpRequestParser | None = None

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_message_complete(self) -> None:
        self.done = True
        checker = self.checker
        self.keep_alive = checker is not None and checker.should_keep_alive()


def parse_head(
    client: ClientConnection,
    parser: httptools.HttpRequestParser,
    url: bytes,
    raw: list[tuple[bytes, bytes]],
) -> Exchange:
    """The exchange for a request whose head llhttp just parsed; RequestRejected if refused."""
    version = parser.get_http_version()
    if version not in ("1.1", "1.0"):
        raise RequestRejected(505, f"HTTP/{version} is not supported")
    method = parser.get_method().decode("ascii", "replace")
    if method == "CONNECT":
        raise RequestRejected(405, "CONNECT is not supported")
    if url[:1] == b"/":
        path_b, _, query_b = url.partition(b"?")
        target = url
        authority = b""
    elif url == b"*":
        path_b, query_b, target, authority = b"*", b"", b"*", b""
    else:  # absolute-form (RFC 9112 3.2.2): the authority replaces Host
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise RequestRejected(400, "invalid request target") from None
        path_b = parsed.path or b"/"
        query_b = parsed.query or b""
        target = path_b + (b"?" + query_b if query_b else b"")
        authority = parsed.host or b""
        if parsed.port:
            authority += b":%d" % parsed.port
    path_b = path_b.partition(b"#")[0]
    out: list[tuple[bytes, bytes]] = []
    ex = Exchange(
        client,
        method,
        target,
        path_b.decode("latin-1"),
        query_b.decode("latin-1"),
        raw,
        out,
    )
    hosts = 0
    upgrade = b""
    special = _SPECIAL
    for name, value in raw:
        kind = special.get(name.lower())
        if kind is None:
            out.append((name, value))
        elif kind == _HOST:
            hosts += 1
            ex.host = value
            out.append((name, value))
        elif kind == _COOKIE:  # the balancer reads the marks, servers see their own values
            ex.cookie = value if not ex.cookie else ex.cookie + b"; " + value
            out.append((name, strip_marks(value) if COOKIE_MARK in value else value))
        elif kind == _XFF:
            ex.xff = value if not ex.xff else ex.xff + b", " + value
        elif kind == _CONNECTION:
            ex.connection_tokens += b"," + value
        elif kind == _UPGRADE:
            upgrade = value
        elif kind == _TE:
            ex.chunked = True
        elif kind == _RID and value.strip(b" \t"):  # an empty one is dropped: one is made
            out.append((name, value))
    if ex.connection_tokens:
        named = {t.strip().lower() for t in ex.connection_tokens.split(b",")}
        named -= {b"", b"close", b"keep-alive", b"upgrade"}
        if named:
            out[:] = [(n, v) for n, v in out if n.lower() not in named]
    ex.version_10 = version == "1.0"
    if ex.version_10:
        if ex.chunked:
            raise RequestRejected(400, "Transfer-Encoding in an HTTP/1.0 request")
    elif hosts != 1:
        raise RequestRejected(400, "an HTTP/1.1 request needs exactly one Host header")
    if hosts > 1:
        raise RequestRejected(400, "more than one Host header")
    if authority:
        ex.host = authority
        out[:] = [(n, v) for n, v in out if n.lower() != b"host"]
        out.append((b"Host", authority))
    ex.keep_alive = parser.should_keep_alive()
    if parser.should_upgrade() and upgrade:
        if _HTTP2 & {t.strip().lower().partition(b"/")[0] for t in upgrade.split(b",")}:
            ex.h2c_dropped = True
            ex.keep_alive = False
        else:
            ex.upgrade = upgrade
    return ex


# Requests longer than this are never remembered (by a connection or by the worker): an idle
# connection keeps at most about three copies of this many bytes.
MEMO_MAX_BYTES = 2048


@dataclass(frozen=True, slots=True)
class RequestShape:
    """What the fast lane reads in a request's bytes (llhttp-checked, nothing to rewrite): the
    same for every connection, so a worker keeps the shapes of recent requests by their bytes
    (``WorkerContext.shapes``) and the same bytes from any client skip the checks."""

    method: str
    target: bytes
    path: str
    query: str
    host: bytes
    raw_head: bytes  # the head as received, without its final empty line
    request_id: str  # the client's X-Request-Id, "" when none

    def exchange(self, client: ClientConnection) -> Exchange:
        """The fast lane's exchange for this request on ``client``."""
        ex = Exchange(
            client, self.method, self.target, self.path, self.query, _NO_HEADERS, _NO_HEADERS
        )
        ex.host = host = self.host
        ex.request_id = self.request_id
        ex.raw_head = raw = self.raw_head
        ex.wire_head = b"%sX-Forwarded-Host: %s\r\n%s%s" % (
            raw,
            host,
            client.xff_line,
            client.forwarded_end,
        )
        ex.req_done = True
        return ex


def simple_shape(data: bytes) -> RequestShape | None:
    """The shape of ``data`` (one whole request head, validated by llhttp), or None when the
    request needs the full parser's treatment."""
    low = data.lower()
    if _NOT_SIMPLE.search(low):
        return None
    at = low.find(b"\r\nhost:")
    if at < 0 or low.find(b"\r\nhost:", at + 7) >= 0:
        return None
    line_end = data.find(b"\r\n")
    first = data[:line_end]
    sp1 = first.find(b" ")
    sp2 = first.rfind(b" ")
    target = first[sp1 + 1 : sp2]
    if first[sp2 + 1 :] != b"HTTP/1.1" or target[:1] != b"/" or b"#" in target:
        return None
    path, _, query = target.partition(b"?")
    request_id = client_request_id(low, data)
    if not request_id and b"\r\nx-request-id:" in low:
        return None  # an empty X-Request-Id: the full path drops it
    return RequestShape(
        first[:sp1].decode("latin-1"),
        target,
        path.decode("latin-1"),
        query.decode("latin-1"),
        data[at + 7 : data.find(b"\r\n", at + 7)].strip(b" \t"),
        data[: len(data) - 2],
        request_id,
    )


@dataclass(frozen=True, slots=True)
class RequestMemo:
    """A fast-lane request a client connection already checked and routed, remembered so the
    same bytes again (a keep-alive client repeating its request) skip the checks: llhttp and the
    header scan would find them exactly as valid, and routing (pure) the same rule."""

    data: bytes  # the request as received
    method: str
    target: bytes
    path: str
    query: str
    host: bytes
    raw_head: bytes
    request_id: str  # the client's X-Request-Id, "" when none
    wire_head: bytes  # what the server gets (with this connection's X-Forwarded-*)
    generation: int  # the rule holds while this table generation is live (WorkerContext)
    rule: Rule
    action: ForwardAction  # the rule's only action
    pick_context: PickContext  # what the balancer is told about this request
    log_part: msgspec.Raw | None  # its access log part (accesslog.exchange_part), when logged

    def exchange(self, client: ClientConnection) -> Exchange:
        """A new exchange for the same request again."""
        ex = Exchange(
            client, self.method, self.target, self.path, self.query, _NO_HEADERS, _NO_HEADERS
        )
        ex.host = self.host
        ex.raw_head = self.raw_head
        ex.request_id = self.request_id
        ex.wire_head = self.wire_head
        ex.req_done = True
        ex.rule = self.rule
        ex.log_part = self.log_part
        return ex


def _client_id(ex: Exchange, raw: bytes) -> str:
    if ex.rid_line:  # ex.request_id is one generated for it
        return ""
    return client_request_id(raw.lower(), raw) if ex.request_id is None else ex.request_id


def remember(data: bytes, ex: Exchange, generation: int) -> RequestMemo | None:
    """The memo of fast-lane request ``data`` once ``ex`` was routed by the table of
    ``generation`` (a number, not the table: an idle connection must not keep an old table)."""
    rule, raw, wire = ex.rule, ex.raw_head, ex.wire_head
    if rule is None or raw is None or wire is None:
        return None
    action = rule.actions[-1]
    if not isinstance(action, ForwardAction):
        return None
    pctx = ex.client.last_pick_context  # the one forward() just used, usually
    if pctx is None or not pctx.serves_again(ex.path, ex.query):
        pctx = PickContext(ex.client.client_ip, ex.path, ex.query, None)
    log_part = ex.log_part
    if log_part is None and ex.client.ctx.access_log is not None:
        log_part = exchange_part(ex)
    return RequestMemo(
        data,
        ex.method,
        ex.target,
        ex.path,
        ex.query,
        ex.host,
        raw,
        _client_id(ex, raw),
        wire,
        generation,
        rule,
        action,
        pctx,
        log_part,
    )
