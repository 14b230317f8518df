"""The disk outbox: every detection message is written here before it is sent and deleted only
when the broker acknowledges it, so an outage or a restart loses nothing.

SQLite in WAL mode: one small transaction per message, crash-safe, bounded by ``max_messages``
(the oldest are dropped and counted when it is full). ``seq`` is assigned in the same transaction
and kept in the database, so it increases by one per message across restarts.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Message:
    id: int
    seq: int
    topic: str
    payload: bytes
    qos: int


class Outbox:
    """A bounded, persistent FIFO of outgoing messages. Thread-safe."""

    def __init__(self, path: str | Path, max_messages: int = 100_000) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last few commits, never corrupt the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._unreported = 0
        self._last_warning = -60.0
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def put(self, topic: str, build: Callable[[int], bytes], qos: int = 1) -> int:
        """Store the message ``build(seq)`` under the next ``seq``; returns that ``seq``."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                seq = int(db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0]) + 1
                db.execute("UPDATE meta SET value=? WHERE key='seq'", (seq,))
                db.execute(
                    "INSERT INTO messages (seq, topic, payload, qos, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (seq, topic, build(seq), qos, time.time()),
                )
                self._depth += 1
                over = self._depth - self.max_messages
                if over > 0:
                    db.execute(
                        "DELETE FROM messages WHERE id IN "
                        "(SELECT id FROM messages ORDER BY id LIMIT ?)",
                        (over,),
                    )
                    db.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (over,))
                    self._depth -= over
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
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
        """Forget messages the broker has acknowledged."""
        if not ids:
            return
        with self._lock:
            cur = self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
            self._depth -= max(cur.rowcount, 0)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()[0])

    @property
    def last_seq(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
