"""Fixtures for health-check tests: loopback-only guard and controllable test backends.

Every test here runs real servers on 127.0.2.x and a real checker in one asyncio loop. The
autouse guard wraps ``create_connection`` of every event loop so that an attempt to reach an
address outside 127.0.0.0/8 fails the test instead of leaving the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

ATTEMPTS: list[tuple[str, int]] = []


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Record every outgoing connection attempt; refuse (and fail on) non-loopback targets."""
    original = asyncio.base_events.BaseEventLoop.create_connection
    ATTEMPTS.clear()

    async def guarded(
        self: Any, protocol_factory: Any, host: Any = None, port: Any = None, **kw: Any
    ) -> Any:
        ATTEMPTS.append((str(host), int(port or 0)))
        if not is_loopback(str(host)):
            raise AssertionError(f"connection attempt to non-loopback {host}:{port}")
        return await original(self, protocol_factory, host, port, **kw)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_connection", guarded)
    yield ATTEMPTS
    bad = [a for a in ATTEMPTS if not is_loopback(a[0])]
    assert not bad, f"non-loopback connection attempts: {bad}"
