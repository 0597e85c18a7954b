"""Fixtures of the Kubernetes-mode tests: the API server emulator and a controller process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Backends, free_port
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.harness import Controller


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def controller(api: ApiServer, tmp_path: Path) -> Iterator[Controller]:
    """A controller, not started: the test fills the emulator first, then calls start()."""
    c = Controller(tmp_path, api.url)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def backends() -> Iterator[dict[str, tuple[str, int]]]:
    """Three stand-in pods on distinct loopback addresses."""
    servers = {
        "tea-1": ("127.0.1.1", free_port()),
        "tea-2": ("127.0.1.2", free_port()),
        "coffee-1": ("127.0.1.3", free_port()),
    }
    procs = Backends(servers)
    try:
        yield servers
    finally:
        procs.stop()
