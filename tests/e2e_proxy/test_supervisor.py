"""The Supervisor API as the CLI calls it, in this test's own event loop (workers are real)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal

import pytest

from albingress.dataplane.settings import ProxySettings
from albingress.dataplane.supervisor import Supervisor
from albingress.diagnostics import ConfigError
from albingress.ir import Server, server_key

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


def test_only_the_servers_that_changed_are_sent_and_applied(backend):
    _, p1 = backend("a", "127.0.1.1")
    _, p2 = backend("b", "127.0.1.2")
    first = ir_for([[("127.0.1.1", p1)], [("127.0.1.2", p2)]], [100, 0])
    group = first.server_groups[0]
    moved = dataclasses.replace(group, servers=(Server("127.0.1.2", p2, 100, "b"),))
    second = dataclasses.replace(first, server_groups=(moved, first.server_groups[1]))

    async def scenario() -> None:
        sup = Supervisor({80: ("127.0.0.1", 0)}, 2, ProxySettings(drain_timeout=2))
        sup.publish_config(first, 1)
        await sup.start()
        try:
            port = sup.bound[80][1]
            assert await sup.wait_applied(1)
            assert await _get(port) == (200, b"a")
            sent: list[bytes] = []
            real_send = sup._send
            sup._send = lambda slot, data: (sent.append(data), real_send(slot, data))  # type: ignore[method-assign]
            sup.publish_servers(second, [moved], 2)
            assert await sup.wait_applied(2)
            for _ in range(4):  # both workers: the group now has only the other server
                assert await _get(port) == (200, b"b")
            messages = [json.loads(d) for d in sent]
            assert {m["type"] for m in messages} == {"servers"} and len(messages) == 2
            assert [g["id"] for g in messages[0]["groups"]] == [group.id]  # one group, not all
            # a worker that missed the base version says so and gets the whole config
            sup.publish_servers(first, [group], 3)
            slot = sup._workers[0]
            real_send(slot, json.dumps({"type": "servers", "version": 4, "base": 99,
                                        "groups": []}).encode() + b"\n")  # fmt: skip
            await asyncio.sleep(0.3)
            assert any(json.loads(d)["type"] == "config" for d in sent[2:])
            assert await sup.wait_applied(3)
            # a worker started later gets the whole current config, servers included
            os.kill(sup.worker_pids()[0], signal.SIGKILL)
            for _ in range(50):
                await asyncio.sleep(0.1)
                if len(sup.worker_pids()) == 2 and all(s.applied == 3 for s in sup._workers):
                    break
            for _ in range(4):
                assert await _get(port) == (200, b"a")
        finally:
            await sup.stop()

    asyncio.run(scenario())
