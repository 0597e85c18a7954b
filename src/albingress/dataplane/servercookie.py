"""StickySession type Server ("rewrite the server's cookie"), as bytes on the wire.

When a server of such a group sets the group's cookie, the client gets its value marked with
that server's tag (``alb.<tag>.<value>``, :func:`mark_set_cookie`); a request carrying the mark
is pinned to the server (:func:`server_cookie_pin`, used by the balancer), and the mark is taken
out before the request is forwarded (:func:`strip_cookie_mark`), so the server only ever sees
the value it set. Nothing is kept in the load balancer: every worker and replica agrees.
"""

from __future__ import annotations

COOKIE_MARK = b"alb."  # a Server-type cookie as the client keeps it: alb.<tag>.<server's value>


def server_cookie_pin(cookie: bytes, name: bytes) -> str | None:
    """The server tag in cookie ``name`` (b"<name>=") of the Cookie headers ``cookie``, put there
    when that server's Set-Cookie went through (StickySession type Server), or None."""
    at = 0
    while True:
        at = cookie.find(name, at)
        if at < 0:
            return None
        if at == 0 or cookie[at - 1 : at] in (b";", b" ", b"\t"):
            value = cookie[at + len(name) :].lstrip(b'"')
            if value.startswith(COOKIE_MARK) and value[len(COOKIE_MARK) + 8 :][:1] == b".":
                return value[len(COOKIE_MARK) : len(COOKIE_MARK) + 8].decode("latin-1")
        at += len(name)


def strip_cookie_mark(value: bytes, name: bytes) -> bytes:
    """A Cookie header value with our mark taken out of cookie ``name``: the server sees the
    value it set."""
    parts = value.split(b";")
    for i, part in enumerate(parts):
        text = part.lstrip()
        if text.startswith(name):
            rest = text[len(name) :]
            quote = b'"' if rest.startswith(b'"') else b""
            inner = rest[len(quote) :]
            if inner.startswith(COOKIE_MARK) and inner[len(COOKIE_MARK) + 8 :][:1] == b".":
                lead = part[: len(part) - len(text)]
                parts[i] = lead + name + quote + inner[len(COOKIE_MARK) + 9 :]
    return b";".join(parts)


def mark_set_cookie(value: bytes, name: bytes, mark: bytes) -> bytes:
    """A Set-Cookie value for cookie ``name`` with ``mark`` put in front of the cookie's value
    (inside its quotes, if any); any other Set-Cookie as it is."""
    text = value.lstrip()
    if not text.startswith(name):
        return value
    rest = text[len(name) :]
    quote = b'"' if rest.startswith(b'"') else b""
    inner = rest[len(quote) :]
    if inner.startswith(COOKIE_MARK):
        return value  # already marked (a server echoing the client's cookie)
    return name + quote + mark + inner
