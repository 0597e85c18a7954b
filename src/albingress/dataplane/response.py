"""The response head the client gets: the server's head without hop-by-hop headers, reframed.

Framing rules (RFC 9112 section 6): a response to HEAD, a 204 or a 304 has no body and keeps
its Content-Length as is; a Content-Length body is relayed as it is; any other body (chunked, or
read until the server closes) is sent chunked to an HTTP/1.1 client, and delimited by closing
the connection for an HTTP/1.0 one. ``Connection: close`` is added when the client connection
will close after this response, ``Set-Cookie`` when the balancer pins a sticky session; for a
group with StickySession type Server, the server's own cookie is marked with the server's tag
(``servercookie.mark_set_cookie``), which pins the client's next requests to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from albingress.dataplane.servercookie import mark_set_cookie
from albingress.dataplane.wire import CRLF, HOP_BY_HOP, status_line

if TYPE_CHECKING:
    from albingress.dataplane.exchange import Exchange
    from albingress.dataplane.upstream import UpstreamConnection

_CONN_STANDARD = frozenset({b"close", b"keep-alive", b"upgrade", b""})


def _without_named(headers: list[tuple[bytes, bytes]], tokens: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` without those the Connection header names (RFC 9110 7.6.1)."""
    named = {t.strip().lower() for t in tokens.split(b",")} - _CONN_STANDARD
    if not named:
        return headers
    return [(n, v) for n, v in headers if n.lower() not in named]


def informational_head(conn: UpstreamConnection) -> bytes:
    """A 1xx (not 101) for an HTTP/1.1 client."""
    parts = [status_line(conn.status, conn.reason)]
    for name, value in conn.headers:
        if name.lower() not in HOP_BY_HOP:
            parts += (name, b": ", value, CRLF)
    parts.append(CRLF)
    return b"".join(parts)


def final_head(ex: Exchange, conn: UpstreamConnection) -> bytes:
    """The final response head for ``ex``'s client; sets ``ex.resp_chunked``,
    ``ex.close_after`` and ``conn.until_close`` as the framing requires."""
    status = conn.status
    parts = [status_line(status, conn.reason)]
    has_length = chunked = False
    tokens = b""
    headers = conn.headers
    pick = ex.pick
    if pick is not None and pick.cookie_name:  # StickySession type Server: mark its cookie
        headers = [
            (n, mark_set_cookie(v, pick.cookie_name, pick.cookie_mark))
            if n.lower() == b"set-cookie"
            else (n, v)
            for n, v in headers
        ]
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                chunked = True
            elif lname == b"connection":
                tokens = tokens + b"," + value if tokens else value
            continue
        if lname == b"content-length":
            has_length = True
        parts += (name, b": ", value, CRLF)
    if tokens and (set(tokens.lower().split(b",")) - _CONN_STANDARD):
        parts = [status_line(status, conn.reason)]
        for name, value in _without_named(headers, tokens):
            if name.lower() not in HOP_BY_HOP:
                parts += (name, b": ", value, CRLF)
    return _finish(ex, conn, parts, status, has_length, chunked)


def _finish(
    ex: Exchange,
    conn: UpstreamConnection,
    parts: list[bytes],
    status: int,
    length: bool,
    chunked: bool,
) -> bytes:
    close = not ex.keep_alive or ex.client.ctx.draining or ex.close_after
    if status == 101:
        parts += (b"Connection: upgrade\r\nUpgrade: ", ex.upgrade, CRLF, CRLF)
        return b"".join(parts)
    if ex.upgrade:
        close = True  # the client's parser already switched: no further requests
    if not (ex.head_only or status in (204, 304) or length):
        conn.until_close = not chunked
        if ex.version_10:
            close = True  # the body ends when the connection closes
        else:
            ex.resp_chunked = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
    pick = ex.pick
    if pick is not None and pick.set_cookie:
        parts += (b"Set-Cookie: ", pick.set_cookie.encode("latin-1"), CRLF)
    if close:
        ex.close_after = True
        parts.append(b"Connection: close\r\n\r\n")
    elif ex.version_10:
        parts.append(b"Connection: keep-alive\r\n\r\n")
    else:
        parts.append(CRLF)
    return b"".join(parts)
