"""HTTP/1.1 wire constants: status lines, hop-by-hop header names, canned answers.

Everything here is computed once at import so the hot path only looks things up: status lines
(``HTTP/1.1 200 OK``), the lowercase names of hop-by-hop headers, and the complete bytes of the
proxy's own answers (400, 404, 502, ...) with the reason in the body.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from albingress.dataplane.exchange import Exchange
    from albingress.ir import Server

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# Headers that describe one connection, never forwarded (RFC 9110 7.6.1), lowercase.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Request headers the proxy sets itself; a client's copy is replaced (X-Forwarded-For appended).
FORWARDED = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"})


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode("latin-1")


STATUS_LINES: dict[int, bytes] = {code: _status_line(code) for code in range(100, 600)}


def status_line(code: int, reason: bytes) -> bytes:
    """The client's status line: precomputed for 100-599, the server's reason kept otherwise."""
    line = STATUS_LINES.get(code)
    if line is not None:
        return line
    return b"HTTP/1.1 %d %s\r\n" % (code, reason)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` is never empty)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def simple_response(
    code: int,
    body: bytes,
    *,
    close: bool,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
    head_only: bool = False,
) -> bytes:
    """A complete response of the proxy's own, Content-Length framed."""
    parts = [STATUS_LINES.get(code) or _status_line(code)]
    parts.append(b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, len(body)))
    for name, value in extra or ():
        parts.append(b"%s: %s\r\n" % (name, value))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(CRLF)
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def error_body(code: int, reason: str) -> bytes:
    """``502 Bad Gateway: <reason>``: what people read when the proxy answers by itself."""
    return f"{code} {_status_line(code)[13:-2].decode()}: {reason}\n".encode()


def error_response(code: int, reason: str, *, close: bool, head_only: bool = False) -> bytes:
    return simple_response(code, error_body(code, reason), close=close, head_only=head_only)


CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


# A response relayed byte for byte must not carry these (checked on the lowercased head): a line
# starting with t, k, p or u may be hop-by-hop (te, trailer, transfer-encoding, keep-alive,
# proxy-*, upgrade), one starting with a space or tab is obs-fold. A false alarm only means the
# response takes the full parser.
_SUSPECT_LINE = re.compile(rb"\r\n[tkpu \t]")
_KEEP_ALIVE_LINE = re.compile(rb"\r\nconnection:[ ]*keep-alive[ ]*(?=\r\n)")


def plain_head(data: bytes, max_headers: int) -> bytes | None:
    """``data`` (one complete response, already validated by llhttp) as the client may get it:
    unchanged, or with its ``Connection: keep-alive`` line cut out. None when the head has any
    other hop-by-hop header, or more than ``max_headers`` fields: then it goes through the full
    parser and is rewritten (or refused)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    low = data[: end + 2].lower()
    if _SUSPECT_LINE.search(low) or low.count(b"\n") > max_headers + 1:
        return None
    conn = low.find(b"\r\nconnection:")
    if conn < 0:
        return data
    match = _KEEP_ALIVE_LINE.match(low, conn)
    if match is None or low.find(b"\r\nconnection:", conn + 13) >= 0:
        return None
    return data[:conn] + data[match.end() :]


def request_head(ex: Exchange, server: Server | None) -> list[bytes]:
    """The request head of ``ex`` for a server, in pieces: as received plus X-Forwarded-* for
    the fast lane, else rebuilt from the forwarded headers (``server`` gives Host to HTTP/1.0
    requests without one)."""
    client = ex.client
    raw = ex.raw_head
    if raw is not None:
        return [
            raw,
            b"X-Forwarded-Host: ",
            ex.host,
            CRLF,
            client.xff_line,
            client.forwarded_const,
            ex.rid_line,  # last, as AccessLog.forward_head puts it (attach sends this too)
            CRLF,
        ]
    parts = [ex.method.encode(), b" ", ex.target, b" HTTP/1.1\r\n"]
    for name, value in ex.headers:
        parts += (name, b": ", value, CRLF)
    if ex.xff:
        parts += (b"X-Forwarded-For: ", ex.xff, b", ", client.ip_bytes, CRLF)
    else:
        parts.append(client.xff_line)
    if ex.host:
        parts += (b"X-Forwarded-Host: ", ex.host, CRLF)
    elif server is not None:  # HTTP/1.0 without Host: HTTP/1.1 upstream needs one
        parts += (b"Host: ", f"{server.address}:{server.port}".encode(), CRLF)
    parts.append(client.forwarded_const)
    if ex.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if ex.upgrade:
        parts += (b"Connection: upgrade\r\nUpgrade: ", ex.upgrade, CRLF)
    parts += (ex.rid_line, CRLF)  # X-Request-Id last, on every path
    return parts


def client_request_id(low_head: bytes, head: bytes) -> str:
    """The X-Request-Id a client sent, from its head and that head lowercased ("" if none;
    at most 200 characters)."""
    at = low_head.find(_REQUEST_ID)
    if at < 0:
        return ""
    start = at + len(_REQUEST_ID)
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip(b" \t").decode("latin-1")[:200]


_REQUEST_ID = b"\r\nx-request-id:"
