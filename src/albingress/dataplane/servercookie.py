"""StickySession type Server ("rewrite the server's cookie"), as bytes on the wire.

When a server of such a group sets the group's cookie, the client gets its value marked with
that server's tag (``alb.<8 hex digits>.<value>``, :func:`mark_set_cookie`); a request carrying
the mark is pinned to the server (:func:`server_cookie_pin`, used by the balancer), and every
mark is taken out of the forwarded Cookie headers when the request head is read
(:func:`strip_marks`, ``request.parse_head``), so whatever server or mirror gets the request,
servers only ever see the values they set. Nothing is kept in the load balancer: every worker and
replica agrees. One pattern reads marks for both the pin and the strip, so they never disagree.
"""

from __future__ import annotations

import re

COOKIE_MARK = b"alb."  # a Server-type cookie as the client keeps it: alb.<tag>.<server's value>

# A cookie of a Cookie header whose value carries a mark: (start or ";"), spaces, name, "=",
# an optional opening quote, then the mark itself.
_MARKED = re.compile(rb"(^|;)([ \t]*)([^=; \t]+)=(\"?)alb\.([0-9a-f]{8})\.")


def server_cookie_pin(cookie: bytes, name: bytes) -> str | None:
    """The server tag in cookie ``name`` (b"<name>=") of the Cookie headers ``cookie``, put there
    when that server's Set-Cookie went through (StickySession type Server), or None."""
    for found in _MARKED.finditer(cookie):
        if found[3] + b"=" == name:
            return found[5].decode("ascii")
    return None


def strip_marks(cookie: bytes) -> bytes:
    """A Cookie header value with every mark taken out: the server sees the value it set."""
    return _MARKED.sub(rb"\1\2\3=\4", cookie)


def mark_set_cookie(value: bytes, name: bytes, mark: bytes) -> bytes:
    """A Set-Cookie value for cookie ``name`` (b"<name>=") with ``mark`` put in front of the
    cookie's value (inside its quotes, if any); any other Set-Cookie as it is. A server's value
    is always marked: a server never sees a marked value, whatever its own looks like."""
    text = value.lstrip()
    if not text.startswith(name):
        return value
    rest = text[len(name) :]
    quote = b'"' if rest.startswith(b'"') else b""
    return name + quote + mark + rest[len(quote) :]
