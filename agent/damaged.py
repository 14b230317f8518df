"""State files that cannot be read (a power cut on an SD card) are set aside, never crash-looped
on: renamed to ``<name>.damaged-<UTC time>``, logged at ERROR, listed in the retained status."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("agent.damaged")


@dataclass(frozen=True)
class Damaged:
    """One state file set aside this run."""

    file: str
    moved_to: str | None  # None: it could not even be renamed (then it is left where it is)
    reason: str
    ts: float


_lock = threading.Lock()
_found: list[Damaged] = []


def set_aside(path: str | Path, reason: str, companions: tuple[str, ...] = ()) -> Path | None:
    """Rename the damaged ``path`` (and ``path + suffix`` for each of ``companions``, such as
    SQLite's ``-wal``) out of the way, so the caller can start a fresh one; returns the new name,
    or None when even the rename failed (reported too)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():  # twice in one second: keep both
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        n += 1
    moved: Path | None = target
    try:
        path.rename(target)
    except OSError as exc:
        moved = None
        log.error("state file %s is damaged (%s) and cannot be set aside: %s", path, reason, exc)
    else:
        for suffix in companions:
            extra = Path(f"{path}{suffix}")
            if extra.exists():
                try:
                    extra.rename(Path(f"{target}{suffix}"))
                except OSError as exc:
                    log.error("cannot set %s aside: %s", extra, exc)
        log.error(
            "state file %s is damaged (%s): set aside as %s, starting with a fresh one",
            path,
            reason,
            target,
        )
    with _lock:
        _found.append(Damaged(str(path), str(moved) if moved else None, reason, time.time()))
    return moved


def damaged_files() -> list[dict[str, object]]:
    """What was set aside in this process, oldest first (for the retained status)."""
    with _lock:
        return [asdict(d) for d in _found]
