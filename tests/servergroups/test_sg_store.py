"""The SQLite store: transactions, versions, persistence, file identity and permissions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from albingress.diagnostics import StateError
from albingress.servergroups.sqlite import SCHEMA_VERSION, SqliteStore
from albingress.servergroups.store import ConflictError

SPEC = {"serverGroupId": "sgp-abc", "serverGroupName": "web", "servers": []}


def test_new_file_is_private_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.db"
    store = SqliteStore(path)
    store.create("sgp-abc", SPEC)
    assert path.stat().st_mode & 0o777 == 0o600
    for side in ("state.db-wal", "state.db-shm"):  # WAL side files inherit the mode
        assert (path.parent / side).stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_create_get_replace_delete(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    calls: list[int] = []
    store.subscribe(lambda: calls.append(1))
    made = store.create("sgp-abc", SPEC)
    assert made.version == 1 and made.seq == 1
    with pytest.raises(ConflictError):
        store.create("sgp-abc", SPEC)
    got = store.get("sgp-abc")
    assert got is not None and got.spec == SPEC
    newer = store.replace("sgp-abc", {**SPEC, "serverGroupName": "web2"}, got.version)
    assert newer.version == 2
    with pytest.raises(ConflictError):  # stale version: nothing written
        store.replace("sgp-abc", {**SPEC, "serverGroupName": "lost"}, got.version)
    current = store.get("sgp-abc")
    assert current is not None and current.spec["serverGroupName"] == "web2"
    with pytest.raises(ConflictError):
        store.delete("sgp-abc", 1)
    store.delete("sgp-abc", 2)
    assert store.get("sgp-abc") is None
    assert len(calls) == 3  # create, replace, delete; failed writes notify nobody
    store.close()


def test_objects_are_kubernetes_shaped_copies(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.create("sgp-abc", SPEC)
    (obj,) = store.objects()
    assert obj["apiVersion"] == "albingress.dev/v1alpha1" and obj["kind"] == "ServerGroup"
    assert obj["metadata"]["name"] == "sgp-abc" and obj["metadata"]["namespace"] == "default"
    obj["spec"]["serverGroupName"] = "mutated"
    assert store.objects()[0]["spec"]["serverGroupName"] == "web"
    store.close()


def test_persists_across_reopen_in_creation_order(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    for name in ("sgp-zzz", "sgp-aaa", "sgp-mmm"):
        store.create(name, {**SPEC, "serverGroupId": name})
    store.delete("sgp-aaa", 1)
    store.close()
    again = SqliteStore(path)
    assert [g.id for g in again.list_groups()] == ["sgp-zzz", "sgp-mmm"]
    again.create("sgp-new", SPEC)
    assert [g.id for g in again.list_groups()][-1] == "sgp-new"
    again.close()


def test_garbage_file_is_reported_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    garbage = b"this is not a database at all\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(StateError, match="not an albingress state file"):
        SqliteStore(path)
    assert path.read_bytes() == garbage


def test_foreign_sqlite_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="another program"):
        SqliteStore(path)
    assert path.read_bytes() == before


def test_newer_schema_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StateError, match="schema version"):
        SqliteStore(path)


def test_missing_magic_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta WHERE key = 'magic'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="magic"):
        SqliteStore(path)


def test_directory_in_place_of_file(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not a regular file"):
        SqliteStore(tmp_path)
