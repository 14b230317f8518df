"""The events kept on disk (agent/tracking/store.py) and ``edge-agent events``: an event's new,
update and end are one entry, newest first, bounded in count and bytes (the oldest go with their
JPEGs), readable by another thread or process while the pipeline writes, and a file a power cut
damaged is set aside for a fresh store (DESIGN.md 9)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.cli import main
from agent.damaged import damaged_files
from agent.tracking.store import EventReader, EventStore, EventStoreError, store_file
from tests.test_damaged_state import aside
from tests.test_outbox import fill, small_disk  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parent.parent


def jpeg(seed: int, size: int = 160) -> bytes:
    """A real JPEG, different for every seed."""
    image = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return bytes(cv2.imencode(".jpg", image)[1].tobytes())


def event(n: int, **changes: Any) -> dict[str, Any]:
    """An event dict as DESIGN.md section 5 has it, started at ``1_700_000_000 + n``."""
    start = 1_700_000_000.0 + n
    return {
        "id": f"{start:.0f}.{n:04d}-ab12",
        "camera": "driveway",
        "label": "person",
        "score": 0.8,
        "top_score": 0.85,
        "box": [0.1, 0.2, 0.3, 0.6],
        "zones": [],
        "entered_zones": [],
        "start": start,
        "end": None,
        "stationary": False,
        "snapshot": None,
        **changes,
    }


def rows(root: Path, table: str) -> int:
    db = sqlite3.connect(f"{store_file(root).as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


# --- the store ---


def test_new_update_and_end_of_one_event_are_one_entry_with_the_latest(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    first, better = jpeg(1), jpeg(2)
    store.record(event(1), first)
    assert store.snapshot(event(1)["id"]) == first
    store.record(event(1, zones=["gate"], entered_zones=["gate"], score=0.9))  # no new snapshot
    assert store.snapshot(event(1)["id"]) == first  # kept
    store.record(event(1, zones=["gate"], entered_zones=["gate"], top_score=0.95), better)
    end = event(1, entered_zones=["gate"], top_score=0.95, end=1_700_000_009.5)
    store.record(end)
    assert store.list() == [end]
    assert store.get(end["id"]) == end
    assert store.snapshot(end["id"]) == better  # the newer snapshot replaced the first
    assert rows(tmp_path, "snapshots") == 1
    assert [e.snapshot_bytes for e in store.entries()] == [len(better)]
    assert store.get("no-such-id") is None and store.snapshot("no-such-id") is None
    store.close()
    reopened = EventStore(tmp_path)  # it is on disk, not only in memory
    assert reopened.list() == [end] and reopened.snapshot(end["id"]) == better
    reopened.close()


def test_events_come_newest_first_by_start_limited_and_per_camera(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    for n in (3, 1, 4, 2, 5):  # recorded out of order: the order is their start's
        store.record(event(n, camera="door" if n % 2 else "yard"))
    assert [e["start"] for e in store.list()] == [1_700_000_000.0 + n for n in (5, 4, 3, 2, 1)]
    assert [e["start"] - 1_700_000_000 for e in store.list(limit=2)] == [5, 4]
    assert [e["start"] - 1_700_000_000 for e in store.list(camera="door")] == [5, 3, 1]
    assert [e["start"] - 1_700_000_000 for e in store.list(camera="yard", limit=1)] == [4]
    assert store.list(camera="garage") == []
    store.close()


def test_at_most_keep_events_the_oldest_go_with_their_snapshots(tmp_path: Path) -> None:
    store = EventStore(tmp_path, keep=3)
    for n in range(1, 6):
        store.record(event(n), jpeg(n))
        store.record(event(n, end=1_700_000_002.0 + n))
    assert [e["start"] - 1_700_000_000 for e in store.list()] == [5, 4, 3]
    assert store.snapshot(event(1)["id"]) is None and store.snapshot(event(2)["id"]) is None
    assert store.snapshot(event(3)["id"]) == jpeg(3)
    assert rows(tmp_path, "events") == 3 and rows(tmp_path, "snapshots") == 3  # JPEGs gone too
    store.close()


def test_the_bytes_bound_counts_json_and_jpegs_and_drops_the_oldest(tmp_path: Path) -> None:
    size = len(jpeg(1))
    store = EventStore(tmp_path, keep=100, max_bytes=int(3.5 * (size + 600)))
    for n in range(1, 8):
        store.record(event(n, end=1_700_000_003.0 + n), jpeg(n))
        assert store.total_bytes <= store.max_bytes
    kept = [e["start"] - 1_700_000_000 for e in store.list()]
    assert kept == [7, 6, 5], kept  # three events of a JPEG and JSON each fit, four do not
    assert rows(tmp_path, "snapshots") == 3
    json_bytes = sum(len(json.dumps(e, separators=(",", ":"))) for e in store.list())
    assert store.total_bytes == json_bytes + sum(len(jpeg(int(n))) for n in kept)
    store.close()


def test_smaller_bounds_at_a_restart_trim_the_store_and_shrink_its_file(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    for n in range(1, 21):
        store.record(event(n, end=1_700_000_001.0 + n), jpeg(n, size=256))
    store.close()
    before = store_file(tmp_path).stat().st_size
    assert before > 20 * len(jpeg(1, size=256))
    store = EventStore(tmp_path, keep=2)
    assert [e["start"] - 1_700_000_000 for e in store.list()] == [20, 19]
    store.close()
    after = store_file(tmp_path).stat().st_size
    assert after < before / 4, (before, after)  # the freed pages went back to the disk


def test_an_open_event_outlasts_newer_ended_ones(tmp_path: Path) -> None:
    """A car parked for hours keeps its event while people come and go."""
    store = EventStore(tmp_path, keep=3)
    parked = event(0, label="car")
    store.record(parked, jpeg(0))
    for n in range(1, 10):
        store.record(event(n))
        store.record(event(n, end=1_700_000_001.0 + n))
    kept = [e["start"] - 1_700_000_000 for e in store.list()]
    assert kept == [9, 8, 0], kept
    assert store.snapshot(parked["id"]) == jpeg(0)
    store.close()
    # Left open by a run that is over (no end will come for it): the oldest goes first again.
    store = EventStore(tmp_path, keep=3)
    store.record(event(10, end=1_700_000_012.0))
    assert [e["start"] - 1_700_000_000 for e in store.list()] == [10, 9, 8]
    store.close()


def test_a_snapshot_larger_than_the_bound_is_not_kept_the_event_is(tmp_path: Path) -> None:
    store = EventStore(tmp_path, max_bytes=2000)
    store.record(event(1), jpeg(1))
    assert store.list() == [event(1)] and store.snapshot(event(1)["id"]) is None
    store.close()


def test_a_reader_in_another_thread_and_another_connection_while_the_pipeline_writes(
    tmp_path: Path,
) -> None:
    store = EventStore(tmp_path, keep=50)
    snapshots = {n: jpeg(n, size=96) for n in range(300)}
    problems: list[str] = []
    done = threading.Event()
    reads = [0]

    def read(source: Any) -> None:
        while not done.is_set():
            try:
                listed = source.list(limit=50)
                starts = [e["start"] for e in listed]
                if starts != sorted(starts, reverse=True):
                    problems.append(f"out of order: {starts}")
                for e in listed[:5]:
                    n = int(e["start"] - 1_700_000_000)
                    data = source.snapshot(e["id"])
                    if data is not None and data != snapshots[n]:
                        problems.append(f"event {n}: a snapshot that is not its own")
                reads[0] += 1
            except Exception as exc:
                problems.append(repr(exc))

    reader = EventReader(tmp_path)  # its own read-only connection, as the CLI and web page
    threads = [threading.Thread(target=read, args=(s,)) for s in (store, reader)]
    for t in threads:
        t.start()
    try:
        for n in range(300):
            store.record(event(n), snapshots[n])
            store.record(event(n, zones=["gate"]))
            store.record(event(n, end=1_700_000_001.0 + n))
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert not problems, problems[:5]
    assert reads[0] > 0
    assert [e["start"] - 1_700_000_000 for e in reader.list(limit=2)] == [299, 298]
    assert store.error is None
    reader.close()
    store.close()


# --- damaged or cut short by a power cut ---


def test_a_garbage_events_file_is_set_aside_and_a_fresh_store_works(tmp_path: Path) -> None:
    path = store_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\xffa power cut left this" * 400)
    with pytest.raises(EventStoreError, match=re.escape(str(path)) + ".*not a readable"):
        EventReader(tmp_path)  # a reader says so in one line, and leaves the file alone
    store = EventStore(tmp_path)
    store.record(event(1), jpeg(1))
    assert store.list() == [event(1)]
    store.close()
    [moved] = aside(path.parent, path.name)
    assert moved.read_bytes().startswith(b"\x00\xffa power cut")
    assert any(d["file"] == str(path) and d["moved_to"] == str(moved) for d in damaged_files())


def test_a_database_that_is_not_an_events_store_is_set_aside(tmp_path: Path) -> None:
    path = store_file(tmp_path)
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE events (x)")
    db.commit()
    db.close()
    store = EventStore(tmp_path)
    store.record(event(1))
    assert store.list() == [event(1)]
    store.close()
    assert len(aside(path.parent, path.name)) == 1


def test_a_database_cut_in_half_is_set_aside(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    for n in range(40):
        store.record(event(n), jpeg(n))
    store.close()
    path = store_file(tmp_path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    store = EventStore(tmp_path)
    store.record(event(99))
    assert store.list() == [event(99)]
    store.close()
    assert len(aside(path.parent, path.name)) == 1


def test_a_wal_torn_by_a_power_cut_opens_with_the_events_before_it(tmp_path: Path) -> None:
    """What a power cut leaves: the database and its WAL as they were on the card, the WAL's
    last frames half written. Every such copy opens, and holds a prefix of what was recorded."""
    live = tmp_path / "live"
    store = EventStore(live)
    for n in range(12):
        store.record(event(n), jpeg(n))
    path = store_file(live)
    wal = Path(f"{path}-wal")
    wal_bytes = wal.read_bytes()  # copied while the writer holds it open: nothing checkpointed
    db_bytes = path.read_bytes()
    store.close()
    assert len(wal_bytes) > 100_000
    for cut in (0, 1000, len(wal_bytes) // 3, len(wal_bytes) // 2 + 17, len(wal_bytes) - 5):
        card = tmp_path / f"cut{cut}"
        copy = store_file(card)
        copy.parent.mkdir(parents=True)
        copy.write_bytes(db_bytes)
        Path(f"{copy}-wal").write_bytes(wal_bytes[:cut])
        reopened = EventStore(card)
        starts = [e["start"] - 1_700_000_000 for e in reopened.list()]
        assert starts == list(range(len(starts) - 1, -1, -1)), (cut, starts)  # a prefix
        for e in reopened.list():
            n = int(e["start"] - 1_700_000_000)
            assert reopened.snapshot(e["id"]) == jpeg(n)  # never a torn JPEG
        reopened.record(event(50))
        reopened.close()
        assert not aside(copy.parent, copy.name)  # nothing was damaged
    assert starts == list(range(10, -1, -1))  # the last commit was torn: only it is lost


def test_a_full_disk_refuses_events_without_raising_and_recovers(
    small_disk: Path,  # noqa: F811
) -> None:
    store = EventStore(small_disk, retry_max_s=0.2)
    for n in range(5):
        store.record(event(n), jpeg(n))
    filler = fill(small_disk)
    for n in range(5, 60):
        store.record(event(n), jpeg(n, size=256))  # never raises into the pipeline
    assert store.error is not None and "full" in store.error
    assert store.refused > 0
    kept = [e["start"] - 1_700_000_000 for e in store.list(limit=100)]
    assert kept[-5:] == [4, 3, 2, 1, 0]  # what was stored stays
    filler.unlink()
    time.sleep(0.3)  # past the backoff
    store.record(event(70), jpeg(70))
    assert store.error is None
    assert store.list(limit=1) == [event(70)] and store.snapshot(event(70)["id"]) == jpeg(70)
    store.close()


def test_an_absent_store_reads_as_empty_and_is_not_created(tmp_path: Path) -> None:
    reader = EventReader(tmp_path / "state")
    assert not reader.exists
    assert reader.list() == [] and reader.get("x") is None and reader.snapshot("x") is None
    reader.close()
    assert not (tmp_path / "state").exists()
    store_file(tmp_path / "state").parent.mkdir(parents=True)
    store_file(tmp_path / "state").touch()  # created, then a power cut before its first write
    reader = EventReader(tmp_path / "state")
    assert reader.list() == []
    reader.close()
    store = EventStore(tmp_path / "state")  # the agent fills it, sets nothing aside
    store.record(event(1))
    store.close()
    reader = EventReader(tmp_path / "state")
    assert reader.list() == [event(1)]
    reader.close()
    assert not aside(store_file(tmp_path / "state").parent, "events.sqlite")


def as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as the user nobody (who may read, not write, root's files) with this
    tree's ``agent`` importable: the store module needs only the standard library."""
    python = Path("/usr/bin/python3")
    if os.geteuid() != 0 or shutil.which("runuser") is None or not python.is_file():
        pytest.skip("needs root, runuser and /usr/bin/python3 to read as another user")
    proc = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", str(python), "-c",
         f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_user_who_may_not_write_the_store_folder_reads_it_running_or_not() -> None:
    """WAL wants to create a -shm file beside the database: a reader that may not (the CLI run
    by another user than the agent's) still reads, while the agent writes and after it stopped."""
    folder = Path(tempfile.mkdtemp(prefix="events-ro-"))
    try:
        folder.chmod(0o755)
        read = f"from agent.tracking.store import EventReader\nprint(len(EventReader({str(folder)!r}).list()))"
        store = EventStore(folder)
        store.record(event(1), jpeg(1))
        store.record(event(2))
        running = as_nobody(read)
        store.close()  # the agent stops: its -wal and -shm are gone
        assert not Path(f"{store_file(folder)}-wal").exists()
        stopped = as_nobody(read)
        assert (running.returncode, running.stdout.strip()) == (0, "2"), running.stderr
        assert (stopped.returncode, stopped.stdout.strip()) == (0, "2"), stopped.stderr
    finally:
        shutil.rmtree(folder)


# --- edge-agent events ---


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"store:\n  path: {tmp_path / 'state'}\n")
    return path


def filled(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A config and its store with three events (newest first): one open, two ended."""
    store = EventStore(tmp_path / "state")
    events = [
        event(30, camera="yard", label="car", top_score=0.912),
        event(20, entered_zones=["gate", "path"], end=1_700_000_032.3),
        event(10, top_score=0.5, end=1_700_000_013.0),
    ]
    for e in reversed(events):
        store.record(e, jpeg(int(e["start"]) % 100))
    store.close()
    return config_file(tmp_path), events


def run_cli(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["events", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def test_events_prints_one_line_per_event_newest_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, events = filled(tmp_path)
    code, out, _ = run_cli("-c", config, capsys=capsys)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["start", "camera", "label", "top", "duration", "zones", "id"]
    assert [line.split("  ")[0] for line in lines] == [local(e["start"]) for e in events]
    cells = [line.split() for line in lines]
    assert cells[0][2:] == ["yard", "car", "0.91", "open", "-", events[0]["id"]]
    assert cells[1][2:] == ["driveway", "person", "0.85", "12.3", "s", "gate,path", events[1]["id"]]
    assert cells[2][2:] == ["driveway", "person", "0.50", "3.0", "s", "-", events[2]["id"]]


def test_events_json_camera_and_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, events = filled(tmp_path)
    code, out, _ = run_cli("-c", config, "--json", capsys=capsys)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == [
        {**e, "snapshot_bytes": len(jpeg(int(e["start"]) % 100))} for e in events
    ]
    code, out, _ = run_cli("-c", config, "--json", "--camera", "driveway", "--limit", "1", capsys=capsys)
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == [events[1]["id"]]
    code, out, _ = run_cli("-c", config, "--camera", "garage", capsys=capsys)
    assert code == 0 and out.strip() == f"no events of camera 'garage' kept in {store_file(tmp_path / 'state')}"


def test_events_on_an_absent_or_empty_store_says_so_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path)
    code, out, _ = run_cli("-c", config, capsys=capsys)
    path = store_file(tmp_path / "state")
    assert code == 0 and out.strip() == f"no events kept yet: {path} does not exist"
    assert not (tmp_path / "state").exists()  # the command created nothing
    EventStore(tmp_path / "state").close()
    code, out, _ = run_cli("-c", config, "--json", capsys=capsys)
    assert code == 0 and out.strip() == f"no events kept in {path}"


def test_events_snapshot_writes_the_jpeg_and_names_a_missing_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, events = filled(tmp_path)
    out_file = tmp_path / "snap.jpg"
    code, out, _ = run_cli("-c", config, "--snapshot", events[1]["id"], "-o", out_file, capsys=capsys)
    assert code == 0 and str(out_file) in out
    assert out_file.read_bytes() == jpeg(20)
    assert cv2.imdecode(np.frombuffer(out_file.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None
    code, _, err = run_cli("-c", config, "--snapshot", "nope", "-o", out_file, capsys=capsys)
    assert code == 1 and err.strip() == f"edge-agent: {store_file(tmp_path / 'state')}: no event 'nope' kept (edge-agent events)"
    code, _, err = run_cli("-c", config, "--snapshot", events[1]["id"], capsys=capsys)
    assert code == 1 and "needs -o FILE.jpg" in err


def test_events_on_a_damaged_store_is_one_line_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path)
    path = store_file(tmp_path / "state")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 1000)
    code, _, err = run_cli("-c", config, capsys=capsys)
    assert code == 1
    assert err.strip().startswith(f"edge-agent: {path}: not a readable events database")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert path.read_bytes() == b"garbage" * 1000 and not aside(path.parent, path.name)


def test_events_command_reads_while_the_agent_writes(tmp_path: Path) -> None:
    """Another process (the CLI), read-only, while a writer records events and snapshots."""
    config = config_file(tmp_path)
    store = EventStore(tmp_path / "state", keep=40)
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            store.record(event(n), jpeg(n % 50, size=96))
            store.record(event(n, end=1_700_000_001.0 + n))
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(3):
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "events", "-c", str(config), "--json"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            try:
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            assert proc.returncode == 0, err
            listed = [json.loads(line) for line in out.splitlines()]
            assert listed and len(listed) <= 40
            starts = [e["start"] for e in listed]
            assert starts == sorted(starts, reverse=True)
    finally:
        stop.set()
        writer.join(30)
    assert store.error is None
    store.close()
