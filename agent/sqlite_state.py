"""What the agent's SQLite state files share (the outbox, the events store): opening one in WAL
mode with an integrity check, a damaged file set aside for a fresh one, one write transaction,
and the health of writes on a disk that fills up or fails (one ERROR an episode, quiet retries
backing off, one INFO once writes succeed again)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence

from agent.damaged import set_aside

_DAMAGE_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
COMPANIONS = ("-wal", "-shm")  # WAL mode's files beside the database


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    """The file itself is bad (not a full disk, not a permission problem)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_CODES
    return type(exc) is sqlite3.DatabaseError  # ours: integrity check, schema not ours


def connect_checked(
    path: str, prepare: Callable[[sqlite3.Connection], None], *, auto_vacuum: bool = False
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, check its integrity and run ``prepare`` (the schema, and whether
    the tables are ours: raise ``sqlite3.DatabaseError`` if not). Closed again on any error."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        if auto_vacuum:  # before the first table: freed pages can then be given back
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last few commits, never corrupt it.
        db.execute("PRAGMA synchronous=NORMAL")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        prepare(db)
    except sqlite3.Error:
        db.close()
        raise
    return db


def open_or_set_aside(
    path: str,
    connect: Callable[[], sqlite3.Connection],
    what: str,
    companions: Sequence[str] = COMPANIONS,
) -> sqlite3.Connection:
    """``connect()``; a file that is not a readable ``what`` is set aside (``agent.damaged``) and
    a fresh one made. Any other error (a full disk, a permission) is raised."""
    try:
        return connect()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        set_aside(path, f"not a readable {what}: {exc}", tuple(companions))
        return connect()


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed at the end of the block, rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back on its own (disk full)
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


class WriteHealth:
    """Whether a state file can be written now. A failed write starts an episode: one ERROR (in
    the owner's ``log``), then retries spaced from 0.5 s doubling up to ``retry_max_s``; writes
    asked for before the next retry are refused (counted) without touching the disk; the first
    write that succeeds ends it with one INFO. The owner calls it under its own lock."""

    def __init__(
        self,
        log: logging.Logger,
        name: str,
        consequence: str,
        unit: str,
        retry_max_s: float = 5.0,
    ) -> None:
        self._log = log
        self.name = name  # e.g. "outbox /var/lib/edge-agent/outbox.sqlite"
        self._consequence = consequence  # what a failed write means for the user
        self._unit = unit  # what is refused: "messages", "events"
        self.retry_max_s = retry_max_s
        self.error: str | None = None  # why the last write failed; None once writes succeed
        self.refused = 0  # writes refused since the start (the disk full or failing)
        self._failed_since = 0.0
        self._retry_at = 0.0
        self._retry_s = 0.0

    def waiting(self) -> bool:
        """In an episode and its next retry not due: leave the disk alone."""
        return self.error is not None and time.monotonic() < self._retry_at

    def refuse(self) -> None:
        self.refused += 1

    @property
    def retry_at(self) -> float:
        return self._retry_at

    def failed(self, exc: sqlite3.Error) -> None:
        now = time.monotonic()
        if self.error is None:
            self._failed_since = now
            self._retry_s = min(0.5, self.retry_max_s)
            self._log.error("%s cannot be written (%s): %s", self.name, exc, self._consequence)
        else:
            self._retry_s = min(self.retry_max_s, self._retry_s * 2)
        self.error = f"{self.name}: {exc}"
        self._retry_at = now + self._retry_s

    def succeeded(self) -> None:
        if self.error is None:
            return
        self._log.info(
            "%s writable again after %.0f s; %d %s could not be stored meanwhile",
            self.name,
            time.monotonic() - self._failed_since,
            self.refused,
            self._unit,
        )
        self.error = None


class ReportsWrites:
    """For a state file's owner: its ``error`` and ``refused``, read from its ``writes``."""

    writes: WriteHealth

    @property
    def error(self) -> str | None:
        """Why the last write failed; None once writes succeed."""
        return self.writes.error

    @property
    def refused(self) -> int:
        """Writes refused since the start (the disk full or failing)."""
        return self.writes.refused
