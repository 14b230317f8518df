"""Write cost of the events kept on disk, per record(): the store as built (JPEG blobs inside
SQLite, WAL) against JPEG files beside an SQLite index, with and without the fsyncs a file needs
to survive a power cut. A 50 KB JPEG (a frame of the sample video) per snapshot; per event a
new with its snapshot, three updates without one, an end with a new snapshot, at the store's
bounds (200 events) so that the oldest are deleted too.
Usage: scripts/event_store_cost.py [FOLDER] [EVENTS]   (FOLDER: on the disk to measure)"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from agent.config import DEFAULT_VIDEO
from agent.tracking.store import EventStore

Record = Callable[[dict[str, Any], bytes | None], None]


def jpeg_of_about(size: int) -> bytes:
    """A frame of the sample video, scaled until its JPEG is about ``size`` bytes."""
    cap = cv2.VideoCapture(str(DEFAULT_VIDEO))
    ok, frame = cap.read()
    cap.release()
    assert ok, DEFAULT_VIDEO
    scale, data = 1.0, b""
    for _ in range(20):
        shape = (int(frame.shape[1] * scale), int(frame.shape[0] * scale))
        data = cv2.imencode(".jpg", cv2.resize(frame, shape), [cv2.IMWRITE_JPEG_QUALITY, 90])[
            1
        ].tobytes()
        if abs(len(data) - size) < size * 0.05:
            break
        scale *= (size / len(data)) ** 0.5
    return data


class FilesBeside:
    """The other format measured: events in SQLite, each snapshot a file ``<id>.jpg`` written to
    a temporary name and renamed (with ``fsync``: the file and the folder synced first, without
    which a power cut can leave an empty or torn JPEG under the final name)."""

    def __init__(self, folder: Path, fsync: bool, keep: int = 200) -> None:
        self.folder, self.fsync, self.keep = folder, fsync, keep
        self.db = sqlite3.connect(folder / "events.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE events (id TEXT PRIMARY KEY, start REAL, event TEXT)")

    def record(self, event: dict[str, Any], jpeg: bytes | None) -> None:
        if jpeg is not None:
            final = self.folder / f"{event['id']}.jpg"
            tmp = final.with_suffix(".tmp")
            with tmp.open("wb") as f:
                f.write(jpeg)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            tmp.replace(final)
            if self.fsync:
                fd = os.open(self.folder, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(
            "INSERT INTO events VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET event=excluded.event",
            (event["id"], event["start"], json.dumps(event)),
        )
        old = self.db.execute(
            "SELECT id FROM events ORDER BY start DESC LIMIT -1 OFFSET ?", (self.keep,)
        ).fetchall()
        for (event_id,) in old:
            self.db.execute("DELETE FROM events WHERE id = ?", (event_id,))
        self.db.execute("COMMIT")
        for (event_id,) in old:
            (self.folder / f"{event_id}.jpg").unlink(missing_ok=True)


def measure(record: Record, jpeg: bytes, events: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"new + JPEG": [], "update": [], "end + JPEG": []}
    for i in range(events):
        event: dict[str, Any] = {
            "id": f"{i:06d}-abc",
            "camera": "driveway",
            "label": "person",
            "score": 0.81,
            "top_score": 0.9,
            "box": [0.1, 0.2, 0.3, 0.6],
            "zones": [],
            "entered_zones": [],
            "start": 1_700_000_000.0 + i,
            "end": None,
            "stationary": False,
            "snapshot": {"ts": 1_700_000_000.0 + i, "score": 0.9, "box": [0.1, 0.2, 0.3, 0.6]},
        }
        steps: list[tuple[str, bytes | None]] = [("new + JPEG", jpeg)]
        steps += [("update", None)] * 3 + [("end + JPEG", jpeg)]
        for n, (kind, snap) in enumerate(steps):
            event["zones"] = ["gate"] if n % 2 else []
            if kind == "end + JPEG":
                event["end"] = event["start"] + 4.0
            t0 = time.perf_counter()
            record(event, snap)
            times[kind].append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    where = sys.argv[1] if len(sys.argv) > 1 else None
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    jpeg = jpeg_of_about(50_000)
    print(f"{events} events, a {len(jpeg)} byte JPEG, ms per record() (median / p95 / max):")
    candidates: list[tuple[str, Callable[[Path], Record]]] = [
        ("blobs in SQLite (EventStore)", lambda d: EventStore(d).record),
        ("files beside, fsync", lambda d: FilesBeside(d, fsync=True).record),
        ("files beside, no fsync (not crash-safe)", lambda d: FilesBeside(d, fsync=False).record),
    ]
    for name, make in candidates:
        with tempfile.TemporaryDirectory(dir=where) as folder:
            times = measure(make(Path(folder)), jpeg, events)
        print(f"  {name}")
        for kind, values in times.items():
            values.sort()
            p95 = values[int(0.95 * (len(values) - 1))]
            print(
                f"    {kind:<11} {statistics.median(values):7.3f} / {p95:7.3f} / {values[-1]:7.3f}"
            )


if __name__ == "__main__":
    main()
