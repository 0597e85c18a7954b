"""A client that does not read its answers gets no more requests read (CWE-400), in-process:
answers the proxy makes itself (here 404s) would otherwise pile up in its write buffer."""

from __future__ import annotations

from albingress.dataplane.settings import ProxySettings
from tests.dataplane.harness import Harness, aio, make_ir

SERVERS = [("127.0.1.1", 8001)]
SMALL = ProxySettings(write_high_water=16384, write_low_water=4096)


@aio
async def test_reading_stops_while_the_clients_answers_pile_up_and_resumes_when_it_reads() -> None:
    h = Harness(make_ir(SERVERS, host="a"), SMALL)
    client, ct = h.client()
    request = b"GET / HTTP/1.1\r\nHost: nomatch\r\n\r\n"
    client.data_received(request * 1000)  # 1000 answers: over the 16 KiB high-water mark
    await h.settle()
    assert ct.write_paused and not ct.reading
    assert ct.buffer.count(b"HTTP/1.1 404 ") == 1000
    ct.take()  # the client reads everything
    assert ct.reading
    client.data_received(request)
    await h.settle()
    assert ct.take().startswith(b"HTTP/1.1 404 ")


@aio
async def test_a_body_being_uploaded_is_still_read_while_the_answer_waits() -> None:
    """A client may send its whole body before it reads (http.client does): never stop reading
    a body because the answer is not read yet, or both sides would wait for each other."""
    h = Harness(make_ir(SERVERS, host="a"), SMALL)
    client, ct = h.client()
    client.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    await h.settle()
    conn, ut = h.upstream()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 50_000)
    await h.settle()
    assert ct.write_paused
    assert ct.reading  # the rest of the body is still read
    client.data_received(b"defghij")
    await h.settle()
    assert ut.take().endswith(b"abcdefghij")
