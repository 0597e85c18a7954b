"""The Supervisor API as the CLI calls it, in this test's own event loop (workers are real)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from albingress.dataplane.settings import ProxySettings
from albingress.dataplane.supervisor import Supervisor
from albingress.diagnostics import ConfigError
from albingress.ir import server_key

from .conftest import get, ir_for

pytestmark = pytest.mark.e2e


async def _get(port: int, path: str = "/") -> tuple[int, bytes]:
    status, _, body = await asyncio.to_thread(get, port, path)
    return status, body


def test_supervisor_config_health_restart_and_stop(backend):
    _, p1 = backend("a", "127.0.1.1")
    ir = ir_for([[("127.0.1.1", p1)]])

    async def scenario() -> None:
        sup = Supervisor({80: ("127.0.0.1", 0)}, 2, ProxySettings(drain_timeout=2))
        sup.publish_config(ir, 1)  # before start: sent to the workers as they start
        await sup.start()
        try:
            port = sup.bound[80][1]
            assert port > 0 and sup.bound[80][0] == "127.0.0.1"
            assert await sup.wait_applied(1)
            assert await _get(port) == (200, b"a")
            key = server_key("sgp-e2e0", "127.0.1.1", p1)
            sup.publish_health(frozenset({key}))
            await asyncio.sleep(0.3)
            for _ in range(4):  # both workers took the server out of rotation
                status, body = await _get(port)
                assert status == 503 and b"no healthy server" in body
            sup.publish_health(frozenset())
            await asyncio.sleep(0.3)
            assert await _get(port) == (200, b"a")
            pids = sup.worker_pids()
            os.kill(pids[0], signal.SIGKILL)
            for _ in range(50):
                await asyncio.sleep(0.1)
                now = sup.worker_pids()
                if len(now) == 2 and pids[0] not in now:
                    break
            assert len(now) == 2 and pids[1] in now and pids[0] not in now
            sup.publish_config(ir, 2)
            assert await sup.wait_applied(2)  # the restarted worker has the config too
            assert await _get(port) == (200, b"a")
        finally:
            await sup.stop()
        assert sup.worker_pids() == []
        with pytest.raises(OSError):
            await asyncio.to_thread(get, port, "/")

    asyncio.run(scenario())


def test_a_port_in_use_is_a_clear_error():
    async def scenario() -> None:
        first = Supervisor({80: ("127.0.0.1", 0)}, 1)
        await first.start()
        try:
            taken = first.bound[80][1]
            second = Supervisor({80: ("127.0.0.1", taken)}, 1)
            with pytest.raises(ConfigError, match=f"127.0.0.1:{taken}"):
                await second.start()
            assert second.worker_pids() == []
        finally:
            await first.stop()

    asyncio.run(scenario())
