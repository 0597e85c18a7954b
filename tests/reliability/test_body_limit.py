"""``--max-body-bytes``: no limit by default (as ALB); when set, a larger body is refused with
413 and never (or never wholly) reaches a server (RFC 9110 section 15.5.14, CWE-400)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from albingress.dataplane.settings import ProxySettings
from albingress.diagnostics import ConfigError
from tests.e2e.harness import Serve
from tests.reliability.conftest import Stubs, serving
from tests.reliability.stubs import exchange

pytestmark = pytest.mark.e2e

H = b"Host: r.example.com\r\n"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, stubs: Stubs) -> Iterator[Serve]:
    with serving(
        tmp_path_factory.mktemp("limited"), stubs, 1, ("--max-body-bytes", "1000")
    ) as serve:
        yield serve


def _post(length: int, path: bytes) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n" % length
        + b"Connection: close\r\n\r\n" + b"x" * length
    )  # fmt: skip


def test_a_declared_length_over_the_limit_is_413_and_never_forwarded(
    limited: Serve, stubs: Stubs
) -> None:
    reply = exchange(limited.port, _post(1001, b"/too-big"))
    assert reply.status == 413 and reply.closed, reply.raw[:200]
    assert stubs.g1.count(b"/too-big") + stubs.g2.count(b"/too-big") == 0


def test_a_body_at_the_limit_is_forwarded(limited: Serve) -> None:
    assert exchange(limited.port, _post(1000, b"/at-limit")).status == 200


def test_a_chunked_body_growing_over_the_limit_is_cut_off(limited: Serve, stubs: Stubs) -> None:
    chunks = b"".join(b"258\r\n" + b"y" * 600 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    data = b"POST /chunked-big HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + chunks
    reply = exchange(limited.port, data)
    assert reply.closed
    assert reply.status in (413, 0), reply.raw[:200]  # 0: the server's answer had begun
    # the server never got the whole body: its head maybe, at most the first 1000 bytes
    for s in (stubs.g1, stubs.g2):
        for head, body in zip(s.heads, s.bodies, strict=True):
            if b"/chunked-big" in head:
                assert not body.endswith(b"0\r\n\r\n") and body.count(b"y") <= 1000


def test_no_body_limit_by_default(lb: Serve) -> None:
    assert exchange(lb.port, _post(2 * 1024 * 1024, b"/big-default")).status == 200


def test_the_setting_refuses_a_negative_limit() -> None:
    with pytest.raises(ConfigError):
        ProxySettings(max_body_bytes=-1)
    assert ProxySettings().max_body_bytes == 0
