"""Property-based fuzzing of the request path: hostile byte streams from a client, through the
proxy's real connection code (fake transports, no sockets), checked against what reaches servers.

Properties, for any client byte stream cut at any points:

* nothing raises out of the protocol callbacks and nothing is logged as an error;
* what each server connection receives is a valid sequence of HTTP/1.1 requests (a strict parser
  reads it without error): no malformed or ambiguous framing is ever passed on (CWE-444);
* every request a server completes is answered to the client exactly once, in order: a server
  never gets a request the client did not send as a request of its own (no smuggling), and the
  client's answers are well-formed responses.

The budget is set in ``conftest.py`` (``ALBINGRESS_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import asyncio
import logging

import httptools
from hypothesis import example, given
from hypothesis import strategies as st

from tests.dataplane.harness import Harness, make_ir, response
from tests.fuzz.conftest import FUZZ

SERVERS = [("127.0.1.1", 8001), ("127.0.1.2", 8001)]

# HEAD is left out: a response parser cannot know which answers have no body.
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"get", b"G\x00T", b"CONNECT"]
TARGETS = [b"/", b"/a?b=c", b"*", b"http://a/x", b"//x", b"/\x00", b"/a b", b"/%2e%2e/", b"a"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1"]
HEADERS = [
    b"Host: a",
    b"Host: b",
    b"Content-Length: 0",
    b"Content-Length: 3",
    b"Content-Length: 5",
    b"Content-Length: -1",
    b"Content-Length: 3, 3",
    b"Content-Length:  4 ",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: Chunked",
    b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: identity",
    b"Transfer-Encoding:\tchunked",
    b"Transfer-Encoding : chunked",
    b" Transfer-Encoding: chunked",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: X-Drop",
    b"X-Drop: 1",
    b"Expect: 100-continue",
    b"Upgrade: websocket",
    b"X-Forwarded-For: 1.2.3.4",
    b"X-A: a\x00b",
    b"X-A: \x7f",
    b"X-Folded: a\r\n b",
    b"X: y",
]
BODIES = [
    b"",
    b"abc",
    b"abcde",
    b"3\r\nabc\r\n0\r\n\r\n",
    b"3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n",
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
]
EOLS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]


def mostly(good: bytes, others: list[bytes]) -> st.SearchStrategy[bytes]:
    """``good`` three times in four: most requests get past the request line."""
    return st.one_of(st.just(good), st.just(good), st.just(good), st.sampled_from(others))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    eol = draw(mostly(b"\r\n", EOLS))
    line = b" ".join(
        (
            draw(mostly(b"GET", METHODS)),
            draw(mostly(b"/", TARGETS)),
            draw(mostly(b"HTTP/1.1", VERSIONS)),
        )
    )
    headers = draw(st.lists(st.sampled_from(HEADERS), max_size=4))
    if draw(mostly(b"host", [b""])):
        headers.insert(0, b"Host: a")
    head = line + eol + b"".join(h + eol for h in headers) + eol
    return head + draw(mostly(b"", BODIES))


streams = st.lists(
    st.one_of(requests(), requests(), requests(), st.binary(max_size=12)), min_size=1, max_size=5
)


def _parse_requests(data: bytes) -> tuple[int, str | None]:
    """Complete requests in ``data`` by a strict llhttp parser, and its error if any."""
    done = [0]

    class Callbacks:
        def on_message_complete(self) -> None:
            done[0] += 1

    parser = httptools.HttpRequestParser(Callbacks())
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return done[0], None  # what follows an upgrade is not HTTP
    except httptools.HttpParserError as exc:
        return done[0], f"{type(exc).__name__}: {exc}"
    return done[0], None


def _responses(data: bytes) -> list[int]:
    """Statuses of the complete responses in ``data`` (the client's view)."""
    statuses: list[int] = []

    class Callbacks:
        def on_headers_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Callbacks())
    try:
        parser.feed_data(data)
    except httptools.HttpParserError as exc:
        raise AssertionError(f"the client got a malformed response stream: {exc}") from exc
    return statuses


async def _run(data: bytes, cut: int) -> tuple[bytes, list[tuple[bytes, bool]]]:
    h = Harness(make_ir(SERVERS, groups=2))
    client, ct = h.client()
    out = b""
    answered: dict[int, int] = {}
    for i in range(0, len(data), cut):
        if ct.closing:
            break
        client.data_received(data[i : i + cut])
        for _ in range(6):
            await h.settle(3)
            for index, (_, conn, t) in enumerate(h.upstreams):
                got, error = _parse_requests(bytes(t.buffer))
                if error is None and got > answered.get(index, 0) and not t.closing:
                    for _ in range(got - answered.get(index, 0)):
                        conn.data_received(response(b"ok"))
                    answered[index] = got
        out += ct.take()
    if not ct.closing:
        client.eof_received()
    for _ in range(6):
        await h.settle(3)
    out += ct.take()
    client.connection_lost(None)
    return out, [(bytes(t.buffer), t.aborted) for _, _, t in h.upstreams]


@FUZZ
@given(parts=streams, cut=st.integers(min_value=1, max_value=64))
@example(
    parts=[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    ],
    cut=64,
)
@example(parts=[b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n"], cut=1)
@example(parts=[b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], cut=5)
def test_no_hostile_stream_reaches_a_server_malformed_or_smuggled(
    parts: list[bytes], cut: int
) -> None:
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logger = logging.getLogger("albingress.dataplane")
    logger.addHandler(handler)
    try:
        out, upstreams = asyncio.run(_run(b"".join(parts), cut))
    finally:
        logger.removeHandler(handler)
    assert not errors, [r.getMessage() for r in errors]
    statuses = _responses(out)
    forwarded = 0
    for sent, aborted in upstreams:
        complete, error = _parse_requests(sent)
        assert error is None or aborted, f"a server got malformed bytes ({error}): {sent!r}"
        forwarded += complete
    # each request a server completed was answered "ok" to the client, once
    assert statuses.count(200) == forwarded, (statuses, forwarded)
