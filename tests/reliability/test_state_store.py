"""The state database under faults, in-process: a lock held by another process or a failed
commit is :class:`StoreUnavailable` after at most ``BUSY_TIMEOUT``, nothing half-written, and the
store works again once the fault is gone (no transaction left open)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from albingress.servergroups.sqlite import BUSY_TIMEOUT, SqliteStore
from albingress.servergroups.store import StoreUnavailable


def spec(gid: str) -> dict[str, object]:
    return {"serverGroupId": gid, "serverGroupName": gid, "serverGroupType": "Ip", "servers": []}


def test_a_locked_database_refuses_the_write_quickly_then_recovers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.create("sgp-one", spec("sgp-one"))
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="locked"):
        store.create("sgp-two", spec("sgp-two"))
    assert time.monotonic() - started < BUSY_TIMEOUT + 1
    assert [g.id for g in store.list_groups()] == ["sgp-one"]  # reads go on (WAL)
    holder.execute("ROLLBACK")
    holder.close()
    store.create("sgp-two", spec("sgp-two"))
    assert [g.id for g in store.list_groups()] == ["sgp-one", "sgp-two"]
    store.close()


def test_a_commit_that_fails_is_rolled_back_and_the_store_stays_usable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    # a reader holding an open read transaction in rollback-journal mode would not block WAL;
    # instead make COMMIT itself fail: a deferred foreign key violation is checked at commit
    store._db.execute(  # test-only: a table whose rows are invalid until commit
        "CREATE TABLE IF NOT EXISTS t (x INTEGER REFERENCES server_groups(seq)"
        " DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(sqlite3.IntegrityError), store._tx() as db:
        db.execute("INSERT INTO t VALUES (999)")
    assert not store._db.in_transaction
    store.create("sgp-ok", spec("sgp-ok"))
    assert [g.id for g in store.list_groups()] == ["sgp-ok"]
    store.close()
