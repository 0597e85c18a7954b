"""Fixtures: an admin server with the ALB OpenAPI on 127.0.0.1 (ephemeral port), run on an event
loop in a background thread, and the official SDK as its client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_alb20200616.client import Client
from alibabacloud_tea_openapi.models import Config

from albingress.api.auth import AccessKey, Verifier
from albingress.api.openapi import OpenApiHandler
from albingress.api.server import AdminServer
from albingress.model.servergroup import NetworkSettings
from albingress.servergroups.service import ServerGroupService
from albingress.servergroups.sqlite import SqliteStore

KEY = AccessKey("LTAItestkey000000001", "test-secret-0123456789abcdefgh")
# Loopback sub-ranges stand for the load balancer's network and for remote sites.
SETTINGS = NetworkSettings.from_strings(vpc=("127.0.0.0/16",), remote=("127.4.0.0/16",))


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK honours proxy variables; every request here must go straight to loopback."""
    for name in (
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


class LoopThread:
    """An asyncio loop running in a daemon thread, stopped and joined by :meth:`close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Api:
    """A running API: the store, the service, the server address, and an SDK client."""

    loop: LoopThread
    path: Path
    in_use: dict[str, list[str]] = field(default_factory=dict)
    store: SqliteStore | None = None
    server: AdminServer | None = None
    service: ServerGroupService | None = None
    changes: list[int] = field(default_factory=list)
    key: AccessKey = KEY

    def start(self) -> None:
        self.store = SqliteStore(self.path)
        self.store.subscribe(lambda: self.changes.append(1))
        self.service = ServerGroupService(
            self.store, SETTINGS, in_use=lambda g: self.in_use.get(g, [])
        )
        self.server = AdminServer("127.0.0.1", 0)
        OpenApiHandler(self.service, Verifier((KEY,))).register(self.server)
        self.loop.run(self.server.start())

    def stop(self) -> None:
        if self.server is not None:
            self.loop.run(self.server.stop())
            self.server = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def objects(self) -> list[dict[str, Any]]:
        assert self.store is not None
        return self.store.objects()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        host, port = self.server.bound
        return f"{host}:{port}"

    def client(self, key_id: str = KEY.id, secret: str = KEY.secret) -> Client:
        return Client(
            Config(
                access_key_id=key_id,
                access_key_secret=secret,
                endpoint=self.endpoint,
                protocol="http",
                read_timeout=10000,
                connect_timeout=5000,
            )
        )


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def api(tmp_path: Path, loop_thread: LoopThread) -> Iterator[Api]:
    running = Api(loop_thread, tmp_path / "state" / "state.db")
    running.start()
    yield running
    running.stop()


@pytest.fixture
def client(api: Api) -> Client:
    return api.client()
