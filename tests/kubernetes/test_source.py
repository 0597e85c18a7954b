"""The Kubernetes source against the emulator: list + watch, versions, bookmarks, 410, faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from albingress.sources.kube import (
    Backoff,
    ClusterConfig,
    KubeClient,
    KubernetesSource,
    Reflector,
)
from albingress.sources.kube.client import SERVICE
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.harness import endpoint_slice, ingress, service

FAST = Backoff(0.02, 0.2)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def run(api: ApiServer, body: Callable[[KubeClient], Awaitable[None]]) -> None:
    async def main() -> None:
        client = KubeClient(ClusterConfig(api.url), timeout=2)
        try:
            await asyncio.wait_for(body(client), 20)
        finally:
            await client.close()

    asyncio.run(main())


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, res: Any, kind: str, old: Any, new: Any) -> None:
        body = new if new is not None else old
        self.events.append((kind, body["metadata"]["name"] if body else ""))


def reflector(client: KubeClient, rec: Recorder) -> Reflector:
    return Reflector(client, SERVICE, rec, backoff=FAST, watch_timeout=30)


def watch_versions(api: ApiServer) -> list[str]:
    return [
        q.get("resourceVersion", "")
        for (m, p), q in zip(api.requests, api.queries, strict=True)
        if m == "GET" and p == "/api/v1/services" and q.get("watch")
    ]


def test_list_then_watch_add_change_delete(api: ApiServer) -> None:
    api.apply(service("a"))

    async def body(client: KubeClient) -> None:
        rec = Recorder()
        r = reflector(client, rec)
        task = asyncio.create_task(r.run())
        await asyncio.wait_for(r.synced.wait(), 5)
        assert set(r.cache) == {("default", "a")}
        api.apply(service("b"))
        api.apply(service("a", port=81))
        api.delete("Service", "default", "b")
        await until(lambda: ("DELETED", "b") in rec.events)
        assert rec.events[-3:] == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
        assert r.cache[("default", "a")]["spec"]["ports"][0]["port"] == 81
        assert r.resource_version == str(api.rv)
        task.cancel()

    run(api, body)


def test_dropped_watch_resumes_from_last_version_without_listing(api: ApiServer) -> None:
    async def body(client: KubeClient) -> None:
        rec = Recorder()
        r = reflector(client, rec)
        task = asyncio.create_task(r.run())
        await asyncio.wait_for(r.synced.wait(), 5)
        api.apply(service("a"))
        await until(lambda: ("default", "a") in r.cache)
        seen = r.resource_version
        api.drop_watches()
        api.apply(service("b"))  # written while no watch is open
        await until(lambda: ("default", "b") in r.cache)
        assert r.lists == 1
        assert seen in watch_versions(api)[1:]
        task.cancel()

    run(api, body)


def test_gone_410_lists_again_and_loses_nothing(api: ApiServer) -> None:
    async def body(client: KubeClient) -> None:
        rec = Recorder()
        r = reflector(client, rec)
        task = asyncio.create_task(r.run())
        await asyncio.wait_for(r.synced.wait(), 5)
        api.pause()  # the watch ends; the next one comes when the server is back
        api.apply(service("a"))
        api.compact()  # the version the reflector holds is gone
        api.resume()
        await until(lambda: ("default", "a") in r.cache)
        assert r.lists == 2
        assert ("RELIST", "") in rec.events
        task.cancel()

    run(api, body)


def test_bookmarks_move_the_version_forward(api: ApiServer) -> None:
    async def body(client: KubeClient) -> None:
        r = reflector(client, Recorder())
        task = asyncio.create_task(r.run())
        await asyncio.wait_for(r.synced.wait(), 5)
        before = int(r.resource_version)
        api.apply(ingress("x", "x.example.com", "svc"))  # another kind: no Service event
        await until(lambda: int(r.resource_version) > before)
        assert r.cache == {}
        task.cancel()

    run(api, body)


@pytest.mark.parametrize("mode", ["500", "503", "garbage"])
def test_failing_server_is_retried_with_backoff(api: ApiServer, mode: str) -> None:
    api.apply(service("a"))
    api.fail_next(3, mode)

    async def body(client: KubeClient) -> None:
        r = reflector(client, Recorder())
        task = asyncio.create_task(r.run())
        await asyncio.wait_for(r.synced.wait(), 5)
        assert r.errors == 3
        assert set(r.cache) == {("default", "a")}
        api.fail_next(1, mode, lambda m, p: "services" in p)  # the next watch fails too
        api.drop_watches()
        api.apply(service("b"))
        await until(lambda: ("default", "b") in r.cache)
        assert r.errors == 4
        task.cancel()

    run(api, body)


def test_resource_not_served_counts_as_empty(api: ApiServer) -> None:
    api.missing.add("Service")

    async def body(client: KubeClient) -> None:
        r = reflector(client, Recorder())
        task = asyncio.create_task(r.run())
        await asyncio.wait_for(r.synced.wait(), 5)
        assert r.missing and r.cache == {}
        task.cancel()

    run(api, body)


def test_source_debounces_a_burst_and_tells_what_changed(api: ApiServer) -> None:
    api.apply(service("tea"))
    api.apply(endpoint_slice("tea", ["127.0.1.1"], 8080))

    async def body(client: KubeClient) -> None:
        source = KubernetesSource(client, debounce=0.1, max_delay=1.0, backoff=FAST)
        assert await source.start(5)
        source.take_changes()
        calls: list[float] = []
        task = asyncio.create_task(source.run(lambda: calls.append(time.monotonic())))
        for i in range(30):
            api.apply(endpoint_slice("tea", [f"127.0.1.{i + 1}"], 8080))
        await until(lambda: bool(calls))
        await asyncio.sleep(0.3)
        assert len(calls) == 1
        changes = source.take_changes()
        assert changes.endpoints_only
        assert changes.services == {("default", "tea")}
        slices = [o for o in source.snapshot().objects if o.kind == "EndpointSlice"]
        assert slices[0].body["endpoints"][0]["addresses"] == ["127.0.1.30"]
        api.apply(service("tea", port=81))
        await until(lambda: len(calls) == 2)
        assert not source.take_changes().endpoints_only
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(api, body)


def test_source_watches_only_the_namespaces_given(api: ApiServer) -> None:
    api.apply(service("a", ns="shop"))
    api.apply(service("b", ns="other"))

    async def body(client: KubeClient) -> None:
        source = KubernetesSource(client, ("shop",), backoff=FAST)
        assert await source.start(5)
        keys = {o.key for o in source.snapshot().objects}
        assert keys == {("Service", "shop", "a")}
        await source.stop()

    run(api, body)


def test_a_hung_request_times_out_and_is_retried(api: ApiServer) -> None:
    api.apply(service("a"))
    api.fail_next(1, "hang")

    async def main() -> None:
        client = KubeClient(ClusterConfig(api.url), timeout=0.5)
        try:
            r = Reflector(client, SERVICE, Recorder(), backoff=FAST, watch_timeout=30)
            task = asyncio.create_task(r.run())
            await asyncio.wait_for(r.synced.wait(), 5)
            assert r.errors == 1 and set(r.cache) == {("default", "a")}
            task.cancel()
        finally:
            await client.close()

    asyncio.run(main())


def test_a_silent_watch_ends_quietly_and_is_started_again() -> None:
    with ApiServer(bookmark_interval=30) as quiet:  # no bookmark within the test

        async def main() -> None:
            client = KubeClient(ClusterConfig(quiet.url))
            try:
                started = time.monotonic()
                stream = client.watch(SERVICE, "", "1", 60, read_timeout=0.3)
                assert [e async for e in stream] == []
                assert time.monotonic() - started < 5
            finally:
                await client.close()

        asyncio.run(main())
