"""RPC parameters: what the SDK flattens, the handler rebuilds; hooks of the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alibabacloud_tea_openapi.utils import Utils
from hypothesis import given
from hypothesis import strategies as st

from albingress.api.openapi import lower_keys, unflatten
from albingress.servergroups.service import ApiError, ServerGroupService
from albingress.servergroups.sqlite import SqliteStore

_key = st.from_regex(r"[A-Z][A-Za-z]{0,8}", fullmatch=True)
_leaf = st.text(max_size=8)
_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=12),
        st.dictionaries(_key, inner, min_size=1, max_size=4),
    ),
    max_leaves=20,
)


@given(st.dictionaries(_key, _values, max_size=5))
def test_unflatten_inverts_the_sdk_flattening(params: dict[str, Any]) -> None:
    assert unflatten(Utils.query(params)) == params


@pytest.mark.parametrize(
    "flat",
    [{"Servers.1.Port": "1", "Servers.Port": "2"}, {"A": "1", "A.B": "2"}, {"A..B": "1"}],
    ids=["list-and-field", "leaf-and-object", "empty-segment"],
)
def test_malformed_flat_parameters(flat: dict[str, str]) -> None:
    with pytest.raises(ApiError) as info:
        unflatten(flat)
    assert info.value.code.startswith("IllegalParam.")


def test_lower_keys() -> None:
    assert lower_keys(
        {"Servers": [{"ServerIp": "x"}], "HealthCheckConfig": {"HealthCheckPath": "/"}}
    ) == {
        "servers": [{"serverIp": "x"}],
        "healthCheckConfig": {"healthCheckPath": "/"},
    }


def test_server_status_hook_is_reported(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    seen: list[tuple[str, str, int]] = []

    def status(gid: str, server: Any) -> str:
        seen.append((gid, server["serverIp"], server["port"]))
        return "Unavailable" if server["port"] == 81 else "Available"

    svc = ServerGroupService(store, server_status=status)
    gid = svc.create({"serverGroupName": "web", "serverGroupType": "Ip"})
    svc.add_servers(
        gid,
        [{"serverType": "Ip", "serverIp": "127.0.0.1", "port": p} for p in (80, 81)],
    )
    page = svc.list_servers(gid)
    assert [(s["Port"], s["Status"]) for s in page.items] == [
        (80, "Available"),
        (81, "Unavailable"),
    ]
    assert seen == [(gid, "127.0.0.1", 80), (gid, "127.0.0.1", 81)]
    store.close()
