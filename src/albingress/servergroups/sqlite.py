"""The embedded server-group store: one SQLite file, the state file of ``serve``.

The file identifies itself twice: SQLite's ``application_id`` header field holds
:data:`APPLICATION_ID`, and the ``meta`` table holds the magic string and the schema version. A
file that is not SQLite, belongs to another program, or has a newer schema raises
:class:`~albingress.diagnostics.StateError` at open and is never touched. A new file is created
with mode 0600 (it may later hold more than server groups) and uses WAL journaling.

Schema (version 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)            magic, schema_version
    server_groups(id TEXT PRIMARY KEY, seq INTEGER UNIQUE, created TEXT,
                  version INTEGER, spec TEXT)          spec is JSON
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from albingress.diagnostics import StateError
from albingress.servergroups.store import (
    ConflictError,
    StoredGroup,
    StoreUnavailable,
    Subscribers,
)

APPLICATION_ID = 0x416C6267  # "Albg"
MAGIC = "albingress-state"
SCHEMA_VERSION = 1
# Seconds a write waits for a lock held by another process before it is refused: the store is
# used from the supervisor's event loop, which must not stall for long.
BUSY_TIMEOUT = 1.0

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE server_groups (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    created TEXT NOT NULL,
    version INTEGER NOT NULL,
    spec TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SqliteStore:
    """:class:`~albingress.servergroups.store.ServerGroupStore` on a SQLite file.

    Safe to share between threads (one connection, serialised by a lock); every method is one
    transaction.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._subscribers = Subscribers()
        self._db = self._open()

    # ----------------------------------------------------------------- opening

    def _open(self) -> sqlite3.Connection:
        exists = self.path.exists()
        if exists and not self.path.is_file():
            raise StateError(f"state file {self.path} is not a regular file")
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                exists = True
            except OSError as exc:
                raise StateError(f"cannot create state file {self.path}: {exc}") from exc
            else:
                os.close(fd)
        try:
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state file {self.path}: {exc}") from exc
        try:
            fresh = not exists or self.path.stat().st_size == 0
            if fresh:
                os.chmod(self.path, 0o600)
            self._check_or_init(db, fresh=fresh)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StateError(
                f"state file {self.path} is not an albingress state file (corrupt or foreign: "
                f"{exc}); move it away or pass another --state path"
            ) from exc
        except StateError:
            db.close()
            raise
        return db

    def _check_or_init(self, db: sqlite3.Connection, fresh: bool) -> None:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        if fresh:
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables == 0 and app_id == 0:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _SCHEMA.strip().split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                    db.execute("INSERT INTO meta VALUES ('magic', ?)", (MAGIC,))
                    db.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                return
        if app_id != APPLICATION_ID:
            raise StateError(
                f"state file {self.path} belongs to another program (SQLite application_id "
                f"{app_id:#x}, expected {APPLICATION_ID:#x}); it was left untouched"
            )
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {self.path} has no readable meta table: {exc}") from exc
        if meta.get("magic") != MAGIC:
            raise StateError(
                f"state file {self.path} lacks the albingress magic; it was left untouched"
            )
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError as exc:
            raise StateError(f"state file {self.path} has an unreadable schema version") from exc
        if version != SCHEMA_VERSION:
            raise StateError(
                f"state file {self.path} has schema version {version}; this albingress reads "
                f"version {SCHEMA_VERSION}"
            )

    # ----------------------------------------------------------------- helpers

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a locked or full database raises StoreUnavailable (after at
        most BUSY_TIMEOUT of waiting), with nothing changed."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the state database refused the write: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreUnavailable(f"the state database refused the write: {exc}") from exc
                raise

    @staticmethod
    def _row(row: tuple[Any, ...]) -> StoredGroup:
        gid, seq, created, version, spec = row
        return StoredGroup(gid, json.loads(spec), created, version, seq)

    # ----------------------------------------------------------------- reads

    def get(self, group_id: str) -> StoredGroup | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, seq, created, version, spec FROM server_groups WHERE id = ?",
                (group_id,),
            ).fetchone()
        return self._row(row) if row else None

    def list_groups(self) -> list[StoredGroup]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, created, version, spec FROM server_groups ORDER BY seq"
            ).fetchall()
        return [self._row(r) for r in rows]

    def objects(self) -> list[dict[str, Any]]:
        return [g.to_object() for g in self.list_groups()]

    # ----------------------------------------------------------------- writes

    def create(self, group_id: str, spec: dict[str, Any]) -> StoredGroup:
        body = json.dumps(spec, sort_keys=True)
        created = _now()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM server_groups WHERE id = ?", (group_id,)).fetchone():
                raise ConflictError(f"server group {group_id} already exists")
            seq = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM server_groups").fetchone()[0]
            db.execute(
                "INSERT INTO server_groups (id, seq, created, version, spec) VALUES (?, ?, ?, 1, ?)",
                (group_id, seq, created, body),
            )
        self._subscribers.notify()
        return StoredGroup(group_id, json.loads(body), created, 1, seq)

    def replace(self, group_id: str, spec: dict[str, Any], version: int) -> StoredGroup:
        body = json.dumps(spec, sort_keys=True)
        with self._tx() as db:
            row = db.execute(
                "SELECT seq, created FROM server_groups WHERE id = ? AND version = ?",
                (group_id, version),
            ).fetchone()
            if row is None:
                raise ConflictError(f"server group {group_id} changed or was deleted meanwhile")
            db.execute(
                "UPDATE server_groups SET spec = ?, version = ? WHERE id = ?",
                (body, version + 1, group_id),
            )
        self._subscribers.notify()
        return StoredGroup(group_id, json.loads(body), row[1], version + 1, row[0])

    def delete(self, group_id: str, version: int) -> None:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM server_groups WHERE id = ? AND version = ?", (group_id, version)
            )
            if cur.rowcount != 1:
                raise ConflictError(f"server group {group_id} changed or was deleted meanwhile")
        self._subscribers.notify()

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.add(callback)

    def close(self) -> None:
        with self._lock:
            self._db.close()
