"""The disk outbox: every detection message is written here before it is sent and deleted only
when the broker acknowledges it, so an outage or a restart loses nothing.

SQLite in WAL mode: one small transaction per message, crash-safe, bounded by ``max_messages``
(the oldest are dropped and counted when it is full). ``seq`` is assigned in the same transaction
and kept in the database, one count per topic, so it increases by one per message of a topic
across restarts.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.sqlite_state import (
    ReportsWrites,
    WriteHealth,
    connect_checked,
    open_or_set_aside,
    write_transaction,
)

log = logging.getLogger("agent.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0), ('dropped', 0);
"""


def _prepare(db: sqlite3.Connection) -> None:
    """The tables, made if new; raises DatabaseError for an SQLite file that is not an outbox."""
    db.executescript(_SCHEMA)
    try:
        db.execute("SELECT id, seq, topic, payload, qos, created FROM messages LIMIT 1")
        int(db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0])
    except (sqlite3.OperationalError, TypeError, ValueError) as exc:
        raise sqlite3.DatabaseError(f"not an outbox: {exc}") from exc


@dataclass(frozen=True)
class Message:
    id: int
    seq: int
    topic: str
    payload: bytes
    qos: int


class Outbox(ReportsWrites):
    """A bounded, persistent FIFO of outgoing messages. Thread-safe.

    A disk that fills up (or fails) never raises out of ``put`` or ``ack``: ``put`` stores
    nothing and returns None, ``ack`` keeps the ids and deletes them at a later call; ``error``
    says why, retries back off up to ``retry_max_s``, and it clears once a write succeeds again.
    Nothing already stored is lost meanwhile. A file that is not a readable database is set aside
    (``agent.damaged``) and a fresh outbox started.
    """

    def __init__(
        self, path: str | Path, max_messages: int = 100_000, retry_max_s: float = 5.0
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = open_or_set_aside(
            self.path, lambda: connect_checked(self.path, _prepare), "outbox database"
        )
        self._unreported = 0
        self._last_warning = -60.0
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        self.writes = WriteHealth(
            log,
            f"outbox {self.path}",
            "new messages are not stored and delivered ones are not yet deleted; nothing stored "
            "is lost, retrying until space is back",
            "messages",
            retry_max_s,
        )
        self._acks: list[int] = []  # delivered, not yet deleted (a write failed)

    def put(self, topic: str, build: Callable[[int], bytes], qos: int = 1) -> int | None:
        """Store the message ``build(seq)`` under the next ``seq``; returns that ``seq``, or None
        when it cannot be stored now (see ``error``)."""
        with self._lock:
            if self.writes.waiting():
                self.writes.refuse()
                return None
            try:
                with write_transaction(self._db) as db:
                    seq = self._next_seq(db, topic)
                    db.execute(
                        "INSERT INTO messages (seq, topic, payload, qos, created) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (seq, topic, build(seq), qos, time.time()),
                    )
                    depth = self._depth + 1
                    over = depth - self.max_messages
                    if over > 0:
                        db.execute(
                            "DELETE FROM messages WHERE id IN "
                            "(SELECT id FROM messages ORDER BY id LIMIT ?)",
                            (over,),
                        )
                        db.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (over,))
                        depth -= over
            except sqlite3.OperationalError as exc:
                self.writes.refuse()
                self.writes.failed(exc)
                return None
            self._depth = depth
            self.writes.succeeded()
        if over > 0:
            self._warn_dropped(over)
        return seq

    def _warn_dropped(self, count: int) -> None:
        # Once a minute at most: a long outage must not flood the journal as well.
        self._unreported += count
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            log.warning(
                "outbox full (%d messages): dropped the %d oldest since the last warning",
                self.max_messages,
                self._unreported,
            )
            self._last_warning, self._unreported = now, 0

    def peek(self, after_id: int = 0, limit: int = 100) -> list[Message]:
        """Up to ``limit`` stored messages with ``id > after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, topic, payload, qos FROM messages "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Message(int(r[0]), int(r[1]), str(r[2]), bytes(r[3]), int(r[4])) for r in rows]

    def ack(self, ids: list[int]) -> None:
        """Forget messages the broker has acknowledged (kept and retried while the disk is
        full: a restart before that sends them again, which QoS 1 allows)."""
        with self._lock:
            self._acks.extend(ids)
            if not self._acks or self.writes.waiting():
                return
            try:
                with write_transaction(self._db) as db:  # all or none: ``depth`` stays exact
                    cur = db.executemany(
                        "DELETE FROM messages WHERE id = ?", [(i,) for i in self._acks]
                    )
            except sqlite3.OperationalError as exc:
                self.writes.failed(exc)
                return
            self._depth -= max(cur.rowcount, 0)
            self._acks.clear()
            self.writes.succeeded()

    def retry(self) -> None:
        """Retry the deletions a full disk held back, when their backoff is over."""
        self.ack([])

    @property
    def retry_due(self) -> bool:
        return bool(self._acks) and time.monotonic() >= self.writes.retry_at

    def fetch(self, ids: list[int]) -> list[Message]:
        """The stored messages with these ids, oldest first (those still stored)."""
        if not ids:
            return []
        with self._lock:
            marks = ",".join("?" * len(ids))
            rows = self._db.execute(
                "SELECT id, seq, topic, payload, qos FROM messages "
                f"WHERE id IN ({marks}) ORDER BY id",
                ids,
            ).fetchall()
        return [Message(int(r[0]), int(r[1]), str(r[2]), bytes(r[3]), int(r[4])) for r in rows]

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()[0])

    @staticmethod
    def _next_seq(db: sqlite3.Connection, topic: str) -> int:
        """The next ``seq`` of ``topic`` (each topic counts on its own, so a subscriber to one
        camera's events sees a gap only where one of them is missing). A topic's first message
        goes on from the highest ``seq`` given so far: an outbox of a version with one count
        for all keeps going up."""
        key = f"seq:{topic}"
        db.execute(
            "INSERT OR IGNORE INTO meta (key, value) SELECT ?, value FROM meta WHERE key='seq'",
            (key,),
        )
        db.execute("UPDATE meta SET value=value+1 WHERE key=?", (key,))
        seq = int(db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])
        db.execute("UPDATE meta SET value=MAX(value, ?) WHERE key='seq'", (seq,))
        return seq

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` given so far, to any topic."""
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0])

    def last_seq_of(self, topic: str) -> int | None:
        """The last ``seq`` given to ``topic`` (None: none yet)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (f"seq:{topic}",))
            found = row.fetchone()
            return int(found[0]) if found else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
