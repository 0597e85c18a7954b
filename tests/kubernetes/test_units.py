"""Pieces on their own against the emulator: the Lease, the ServerGroup store, kubeconfig."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from albingress.controller import parse_group_id
from albingress.diagnostics import ConfigError
from albingress.servergroups.crstore import CustomResourceStore
from albingress.servergroups.store import ConflictError, StoreUnavailable
from albingress.sources.kube import ClusterConfig, KubeClient, SyncKubeClient, load_kubeconfig
from albingress.sources.kube.lease import LeaderElector
from tests.kubernetes.apimodel import BY_KIND
from tests.kubernetes.apiserver import ApiServer

SPEC = {"serverGroupId": "sgp-a1", "serverGroupName": "a1", "serverGroupType": "Ip", "servers": []}


def test_only_one_candidate_leads_and_release_hands_over(api: ApiServer) -> None:
    async def main() -> None:
        client = KubeClient(ClusterConfig(api.url))
        a = LeaderElector(client, "ns", "lock", "a", 1.0, 0.1, 0.05)
        b = LeaderElector(client, "ns", "lock", "b", 1.0, 0.1, 0.05)
        tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
        await asyncio.sleep(0.5)
        assert [a.is_leader, b.is_leader].count(True) == 1
        leader, other = (a, b) if a.is_leader else (b, a)
        tasks[0 if leader is a else 1].cancel()
        await leader.release()
        await asyncio.sleep(0.3)  # well under the 1 s lease: the release hands over at once
        assert other.is_leader and not leader.is_leader
        for t in tasks:
            t.cancel()
        await client.close()

    asyncio.run(main())


def test_a_leader_that_stops_renewing_is_replaced_after_the_lease(api: ApiServer) -> None:
    async def main() -> None:
        client = KubeClient(ClusterConfig(api.url))
        a = LeaderElector(client, "ns", "lock", "a", 1.0, 0.1, 0.05)
        b = LeaderElector(client, "ns", "lock", "b", 1.0, 0.1, 0.05)
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()  # fresh record: a is alive
        await asyncio.sleep(0.3)
        assert not await b.try_acquire_or_renew()
        await asyncio.sleep(0.8)  # a never renewed: 1.1 s > 1 s (the Lease holds whole seconds)
        assert await b.try_acquire_or_renew()
        lease = api.get("Lease", "ns", "lock")
        assert lease is not None and lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 2
        await client.close()

    asyncio.run(main())


def test_server_group_store_round_trip_with_versions(api: ApiServer) -> None:
    store = CustomResourceStore(SyncKubeClient(ClusterConfig(api.url)), "albingress")
    seen: list[int] = []
    store.subscribe(lambda: seen.append(1))
    created = store.create("sgp-a1", SPEC)
    assert created.id == "sgp-a1" and created.version > 0
    with pytest.raises(ConflictError):
        store.create("sgp-a1", SPEC)
    store.create("sgp-b2", {**SPEC, "serverGroupId": "sgp-b2"})
    assert [g.id for g in store.list_groups()] == ["sgp-a1", "sgp-b2"]
    got = store.get("sgp-a1")
    assert got is not None and got.spec["serverGroupName"] == "a1"
    updated = store.replace("sgp-a1", {**SPEC, "serverGroupName": "renamed"}, got.version)
    assert updated.version > got.version
    with pytest.raises(ConflictError):
        store.replace("sgp-a1", SPEC, got.version)  # stale
    with pytest.raises(ConflictError):
        store.delete("sgp-a1", got.version)  # stale
    store.delete("sgp-a1", updated.version)
    assert store.get("sgp-a1") is None
    assert api.get("ServerGroup", "albingress", "sgp-b2") is not None
    assert len(seen) == 4  # create, create, replace, delete


def test_server_group_store_reports_an_unreachable_api(api: ApiServer) -> None:
    store = CustomResourceStore(SyncKubeClient(ClusterConfig(api.url), timeout=1), "x")
    api.pause()
    with pytest.raises(StoreUnavailable):
        store.list_groups()
    api.resume()
    api.fail_next(1, "503")
    with pytest.raises(StoreUnavailable):
        store.create("sgp-a1", SPEC)
    assert store.list_groups() == []  # nothing was written


def test_kubeconfig_reads_context_cluster_and_user(tmp_path: Path) -> None:
    ca = b"-----BEGIN CERTIFICATE-----\n"
    path = tmp_path / "config"
    path.write_text(
        f"""
apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: dev
  context: {{cluster: c, user: u, namespace: shop}}
- name: other
  context: {{cluster: c, user: v}}
clusters:
- name: c
  cluster: {{server: "https://127.0.0.1:6443/", certificate-authority-data: {base64.b64encode(ca).decode()}}}
users:
- name: u
  user: {{token: abc}}
- name: v
  user: {{tokenFile: token.txt}}
"""
    )
    (tmp_path / "token.txt").write_text("from-file\n")
    config = load_kubeconfig(path)
    assert (config.server, config.token, config.namespace) == (
        "https://127.0.0.1:6443",
        "abc",
        "shop",
    )
    assert config.ca_data == ca
    assert config.headers() == {"Authorization": "Bearer abc"}
    other = load_kubeconfig(path, "other")
    assert other.headers() == {"Authorization": "Bearer from-file"}
    assert other.namespace == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("current-context: x\ncontexts: []", "no context named 'x'"),
        (
            "current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
            "clusters: [{name: c, cluster: {server: 'https://127.0.0.1'}}]\n"
            "users: [{name: u, user: {exec: {command: aws}}}]",
            "exec and auth-provider",
        ),
        ("- not a mapping", "not a kubeconfig"),
    ],
)
def test_kubeconfig_problems_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_kubeconfig(path)


@pytest.mark.parametrize(
    ("group_id", "parsed"),
    [
        ("svc:default/tea:80", ("default", "tea", 80)),
        ("svc:a-b/c.d:8080", ("a-b", "c.d", 8080)),
        ("sgp-abc", None),
        ("svc:broken", None),
    ],
)
def test_service_group_ids_parse_back(group_id: str, parsed: object) -> None:
    assert parse_group_id(group_id) == parsed


def test_in_cluster_config_reads_the_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from albingress.sources.kube import config as kube_config

    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "namespace").write_text("albingress")
    monkeypatch.setattr(kube_config, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    config = kube_config.in_cluster()
    assert config.server == "https://127.0.0.1:6443"
    assert config.namespace == "albingress"
    assert config.headers() == {"Authorization": "Bearer sa-token"}
    (tmp_path / "token").write_text("rotated")  # projected tokens rotate: read on each call
    assert config.headers() == {"Authorization": "Bearer rotated"}
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(ConfigError, match="kubeconfig"):
        kube_config.in_cluster()


@pytest.mark.parametrize(
    ("svc", "want"),
    [
        (
            {
                "status": {
                    "loadBalancer": {"ingress": [{"ip": "127.0.5.1"}, {"hostname": "lb.test"}]}
                }
            },
            [{"ip": "127.0.5.1"}, {"hostname": "lb.test"}],
        ),
        ({"spec": {"externalIPs": ["127.0.5.2"], "clusterIP": "127.0.5.3"}}, [{"ip": "127.0.5.2"}]),
        ({"spec": {"clusterIP": "127.0.5.3"}}, [{"ip": "127.0.5.3"}]),
    ],
)
def test_status_address_comes_from_the_published_service(
    api: ApiServer, svc: dict[str, Any], want: list[dict[str, str]]
) -> None:
    from albingress.controller import ControllerOptions, StatusWriter

    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": "x"}}
    api.apply({**body, "spec": svc.get("spec", {})})
    if "status" in svc:
        api._call(_set_status(api, svc["status"]))

    async def main() -> list[dict[str, str]]:
        client = KubeClient(ClusterConfig(api.url))
        try:
            elector = LeaderElector(client, "x", "lock", "me")
            options = ControllerOptions(publish_service="x/lb")
            writer = StatusWriter(client, None, elector, options)  # type: ignore[arg-type]
            return await writer.addresses()
        finally:
            await client.close()

    assert asyncio.run(main()) == want


async def _set_status(api: ApiServer, status: dict[str, Any]) -> None:
    with api._lock:
        api._write(BY_KIND["Service"], "x", "lb", {"status": status}, "PATCH", "status")
