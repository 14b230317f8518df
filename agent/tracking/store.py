"""The events kept on disk (``<store.path>/events/events.sqlite``): the last ``keep`` events, each
with its latest snapshot JPEG, bounded in bytes, for the local page and ``edge-agent events``.

One SQLite file in WAL mode, the JPEGs as blobs in their own table: an event's new, update and
end are one row (upsert by id), written in one small transaction with its snapshot, so a power
cut loses at most the last few commits and never leaves an event pointing at a torn JPEG. An
update without a new snapshot rewrites only the event's row (a few hundred bytes), never the JPEG.
Blobs inside SQLite measured 2-4x faster than JPEG files beside it (scripts/event_store_cost.py:
0.2 against 0.5-0.8 ms median per new event with a 50 KB JPEG), which are only crash-safe with an
fsync of the file and its folder per snapshot.
A file that is not a readable events database is set aside (``agent.damaged``) and a fresh one
started; a reader in another process (the CLI) opens it read-only while the agent writes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import EdgeAgentError
from agent.sqlite_state import (
    ReportsWrites,
    WriteHealth,
    connect_checked,
    is_damage,
    open_or_set_aside,
    write_transaction,
)

log = logging.getLogger("agent.events.store")

EVENTS_DIR = "events"
DB_NAME = "events.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    start REAL NOT NULL,
    ended REAL,
    event TEXT NOT NULL,
    event_bytes INTEGER NOT NULL,
    snapshot_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS snapshots (id TEXT PRIMARY KEY, jpeg BLOB NOT NULL);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS events_by_start ON events (start);
CREATE INDEX IF NOT EXISTS events_by_camera ON events (camera, start);
"""


def store_file(root: str | Path) -> Path:
    """Where the events of the store folder ``root`` (``store.path``) are kept."""
    return Path(root) / EVENTS_DIR / DB_NAME


class EventStoreError(EdgeAgentError):
    """The events on disk cannot be read (a reader's error; the agent itself never raises it)."""


@dataclass(frozen=True)
class StoredEvent:
    """One kept event: its latest event dict (DESIGN.md section 5) and its snapshot's size."""

    event: dict[str, Any]
    snapshot_bytes: int


@dataclass
class _Entry:
    start: float
    size: int  # bytes of the event's JSON and its snapshot
    snapshot_bytes: int


def _check_ours(db: sqlite3.Connection) -> None:
    """Raise DatabaseError unless the open file holds our tables."""
    try:
        db.execute(
            "SELECT id, camera, start, ended, event, event_bytes, snapshot_bytes FROM events "
            "LIMIT 1"
        ).fetchall()
        db.execute("SELECT id, jpeg FROM snapshots LIMIT 0").fetchall()
    except sqlite3.OperationalError as exc:
        if not str(exc).startswith("no such"):  # a table or column: not ours; else a real error
            raise
        raise sqlite3.DatabaseError(f"not an events store: {exc}") from exc


def _prepare(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    _check_ours(db)  # before the indexes, which name our columns
    db.executescript(_INDEXES)


class _Queries:
    """The reads both the writer and a read-only reader do; the caller holds ``_lock``."""

    _db: sqlite3.Connection | None
    _lock: threading.Lock

    def entries(self, camera: str | None = None, limit: int = 50) -> list[StoredEvent]:
        """Up to ``limit`` kept events, newest first (by start), of one camera or all."""
        with self._lock:
            if self._db is None:
                return []
            where, params = ("WHERE camera = ?", [camera]) if camera is not None else ("", [])
            rows = self._db.execute(
                f"SELECT event, snapshot_bytes FROM events {where} "
                "ORDER BY start DESC, rowid DESC LIMIT ?",
                [*params, max(limit, 0)],
            ).fetchall()
        return [StoredEvent(json.loads(r[0]), int(r[1])) for r in rows]

    def list(self, camera: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The event dicts of ``entries``: newest first (by start)."""
        return [e.event for e in self.entries(camera, limit)]

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The latest event dict of ``event_id``, or None when it is not kept."""
        with self._lock:
            if self._db is None:
                return None
            row = self._db.execute("SELECT event FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def snapshot(self, event_id: str) -> bytes | None:
        """The latest snapshot JPEG of ``event_id``, or None (no snapshot, or not kept)."""
        with self._lock:
            if self._db is None:
                return None
            row = self._db.execute(
                "SELECT jpeg FROM snapshots WHERE id = ?", (event_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class EventReader(_Queries):
    """The kept events of store folder ``root``, read-only (another process may be writing them):
    creates nothing, and an absent store reads as empty. Raises ``EventStoreError`` (one line,
    naming the file) when the file is not a readable events database."""

    def __init__(self, root: str | Path) -> None:
        self.path = store_file(root)
        self._lock = threading.Lock()
        self._db = None
        if not self.path.exists() or self.path.stat().st_size == 0:
            return  # an empty file: created, cut before its first write (the agent fills it)
        try:
            try:
                self._db = self._open(immutable=False)
            except sqlite3.OperationalError as exc:
                # WAL needs the -shm file: a user who may not write the folder can still read
                # a store no agent has open (no -wal file), as an immutable file.
                if "readonly" not in str(exc) or Path(f"{self.path}-wal").exists():
                    raise
                self._db = self._open(immutable=True)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise EventStoreError(f"{self.path}: cannot be read: {exc}") from exc
            raise EventStoreError(
                f"{self.path}: not a readable events database ({exc}); the agent sets it "
                "aside and starts a fresh one at its next start"
            ) from exc

    @property
    def exists(self) -> bool:
        return self._db is not None

    def _open(self, immutable: bool) -> sqlite3.Connection:
        flags = "mode=ro&immutable=1" if immutable else "mode=ro"
        db = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?{flags}", uri=True, check_same_thread=False
        )
        try:
            _check_ours(db)
        except sqlite3.Error:
            db.close()
            raise
        return db


class EventStore(_Queries, ReportsWrites):
    """The kept events, written by the pipeline's thread and read by others. Thread-safe.

    ``record`` upserts an event by its id (the newest dict wins; a snapshot replaces the one
    before it) and keeps at most ``keep`` events and ``max_bytes`` of event JSON and JPEGs: the
    events that ended go first, oldest start first, then the oldest still open; the event being
    recorded always stays. An event still open (no ``end``) that this store was given since it
    opened is live and outlasts the ended ones (a car parked for hours keeps its event while
    people come and go); events left open by an earlier run are not live.

    A disk that fills up or fails never raises out of ``record``: the event is not stored, ``error``
    says why, writes are retried with a backoff, and what is stored stays readable.
    """

    def __init__(
        self,
        root: str | Path,
        keep: int = 200,
        max_bytes: int = 100 * 2**20,
        retry_max_s: float = 5.0,
    ) -> None:
        self.path = store_file(root)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        path = str(self.path)
        db = open_or_set_aside(
            path, lambda: connect_checked(path, _prepare, auto_vacuum=True), "events database"
        )
        self._db = db
        self._entries: dict[str, _Entry] = {
            str(r[0]): _Entry(float(r[1]), int(r[2]) + int(r[3]), int(r[3]))
            for r in db.execute("SELECT id, start, event_bytes, snapshot_bytes FROM events")
        }
        self._live: set[str] = set()  # open events recorded by this store
        self.writes = WriteHealth(
            log,
            f"events store {self.path}",
            "new events are not kept on disk (they are still published); retrying",
            "events",
            retry_max_s,
        )
        self._bound_at_open()

    def _bound_at_open(self) -> None:
        """Apply the bounds now (they may be smaller than the last run's) and give the disk
        back what that freed."""
        with self._lock:
            victims = self._victims(keep_id=None)
            try:
                if victims:
                    self._write(lambda db: self._delete(db, victims))
                self._drop(victims)
                assert self._db is not None
                # executescript: it runs to the end (execute frees one page, a step).
                self._db.executescript("PRAGMA incremental_vacuum;")
            except sqlite3.OperationalError as exc:  # a full disk: the store still opens
                self.writes.failed(exc)

    def record(self, event: dict[str, Any], snapshot_jpeg: bytes | None = None) -> None:
        """Store the event (its new, update or end), with its new snapshot if there is one
        (None keeps the one before). Never raises for the disk: see ``error``."""
        event_id = str(event["id"])
        camera = str(event["camera"])
        start = float(event["start"])
        ended = event.get("end")
        text = json.dumps(event, separators=(",", ":"))
        with self._lock:
            if self._db is None:
                raise ValueError("the event store is closed")
            if self.writes.waiting():
                self.writes.refuse()
                return
            old = self._entries.get(event_id)
            snap = old.snapshot_bytes if old is not None else 0
            if snapshot_jpeg is not None:
                if len(text) + len(snapshot_jpeg) > self.max_bytes:
                    log.warning(
                        "snapshot of event %s (%d bytes) is larger than the events' bound "
                        "(%d bytes): not kept",
                        event_id,
                        len(snapshot_jpeg),
                        self.max_bytes,
                    )
                    snapshot_jpeg = None
                else:
                    snap = len(snapshot_jpeg)
            entry = _Entry(start, len(text) + snap, snap)
            self._entries[event_id] = entry  # for choosing the victims; undone if it fails
            live = event_id in self._live
            if ended is None:
                self._live.add(event_id)
            else:
                self._live.discard(event_id)
            victims = self._victims(keep_id=event_id)

            def write(db: sqlite3.Connection) -> None:
                db.execute(
                    "INSERT INTO events (id, camera, start, ended, event, event_bytes, "
                    "snapshot_bytes) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "camera=excluded.camera, start=excluded.start, ended=excluded.ended, "
                    "event=excluded.event, event_bytes=excluded.event_bytes, "
                    "snapshot_bytes=excluded.snapshot_bytes",
                    (event_id, camera, start, ended, text, len(text), snap),
                )
                if snapshot_jpeg is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO snapshots (id, jpeg) VALUES (?, ?)",
                        (event_id, snapshot_jpeg),
                    )
                self._delete(db, victims)

            try:
                self._write(write)
            except sqlite3.Error as exc:
                if old is None:
                    del self._entries[event_id]
                else:
                    self._entries[event_id] = old
                if live:
                    self._live.add(event_id)
                else:
                    self._live.discard(event_id)
                self.writes.refuse()
                self.writes.failed(exc)
                return
            self._drop(victims)
            self.writes.succeeded()

    def _victims(self, keep_id: str | None) -> list[str]:
        """The events to delete for the bounds: ended (or not live) first, oldest start first;
        never ``keep_id``. Caller holds the lock."""
        over_count = len(self._entries) - self.keep
        over_bytes = sum(e.size for e in self._entries.values()) - self.max_bytes
        if over_count <= 0 and over_bytes <= 0:
            return []
        order = sorted(
            (i for i in self._entries if i != keep_id),
            key=lambda i: (i in self._live, self._entries[i].start),
        )
        victims = []
        for event_id in order:
            if over_count <= 0 and over_bytes <= 0:
                break
            victims.append(event_id)
            over_count -= 1
            over_bytes -= self._entries[event_id].size
        return victims

    @staticmethod
    def _delete(db: sqlite3.Connection, ids: list[str]) -> None:
        if ids:
            rows = [(i,) for i in ids]
            db.executemany("DELETE FROM events WHERE id = ?", rows)
            db.executemany("DELETE FROM snapshots WHERE id = ?", rows)

    def _drop(self, ids: list[str]) -> None:
        for event_id in ids:
            self._entries.pop(event_id, None)
            self._live.discard(event_id)

    def _write(self, body: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``body(db)`` in one transaction. Caller holds the lock."""
        assert self._db is not None
        with write_transaction(self._db) as db:
            body(db)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def total_bytes(self) -> int:
        """Bytes of the kept events' JSON and snapshots (what ``max_bytes`` bounds)."""
        with self._lock:
            return sum(e.size for e in self._entries.values())
