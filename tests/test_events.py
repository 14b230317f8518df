"""Events end to end (DESIGN.md section 5): hand-made detections through the whole path
(filters, tracker, zones, events) with known answers; the real person model on bikes.mp4 over a
real mosquitto (new before end, stable ids, a snapshot that shows the box, retained counts); a
broker outage in the middle loses no event message; the offline replay."""

from __future__ import annotations

import json
import os
import queue
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import main as cli_main
from agent.config import parse_config
from agent.default_model import default_model
from agent.detection import Detection
from agent.tracking.camera_events import CameraEvents
from agent.tracking.events import EventMessage
from agent.tracking.store import EventReader
from tests.conftest import MEDIA, Subscriber
from tests.test_outbox import assert_no_gaps

BIKES = MEDIA / "bikes.mp4"
PREFIX = "edge-agent"

ZONED = parse_config(
    "zones:\n"
    "  gate: {polygon: [[0.4, 0.0], [0.6, 0.0], [0.6, 1.0], [0.4, 1.0]], labels: [person]}\n"
    "masks: [[[0.0, 0.8], [0.2, 0.8], [0.2, 1.0], [0.0, 1.0]]]\n"
    "objects: {person: {min_score: 0.4, threshold: 0.7}}\n"
    "events: {max_missed: 3, update_interval_s: 0}\n"
)


def _path(frames: list[list[Detection]], config: Any = ZONED) -> list[EventMessage]:
    events = CameraEvents("main", config.camera_configs()["main"], config.events, ["person"])
    out: list[EventMessage] = []
    for i, detections in enumerate(frames):
        out += events.process(detections, 1000.0 + i * 0.2, None).messages  # 5 fps
    return out


def _person(x: float, score: float = 0.85, y: float = 0.3) -> Detection:
    return Detection("person", 0, score, (x, y, x + 0.1, y + 0.4))


def test_a_person_walking_through_a_zone_gives_one_new_an_update_on_entering_one_end() -> None:
    walk = [[_person(0.05 + 0.05 * i)] for i in range(16)] + [[]] * 4  # left to right, gone
    messages = _path(walk)
    kinds = [m.type for m in messages]
    assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == 1
    assert kinds.count("end") == 1
    assert len({m.event["id"] for m in messages}) == 1  # one object, one id all along
    entered = [m for m in messages if m.type == "update" and m.event["zones"] == ["gate"]]
    assert entered and entered[0].event["entered_zones"] == ["gate"]
    assert messages[-1].event["entered_zones"] == ["gate"] and messages[-1].event["zones"] == []


def test_a_one_frame_false_positive_gives_no_event() -> None:
    assert _path([[], [_person(0.3, 0.95)], [], [], [], [], []]) == []


def test_a_flickering_low_score_never_confirms_a_steady_one_does() -> None:
    flicker = [[_person(0.3, 0.45 if i % 3 else 0.9)] for i in range(12)]
    assert _path(flicker) == []  # median 0.45 < threshold 0.7
    steady = [[_person(0.3, 0.8)] for _ in range(6)]
    assert [m.type for m in _path(steady)][:1] == ["new"]


def test_a_masked_object_gives_nothing() -> None:
    # its anchor (bottom centre, 0.05 0.9) is inside the mask in the bottom-left corner
    parked = [[Detection("person", 0, 0.9, (0.0, 0.5, 0.1, 0.9))] for _ in range(10)]
    assert _path(parked) == []


def test_the_tracker_keeps_an_object_through_frames_without_a_model_run() -> None:
    """Frames the motion gate keeps from the model never reach the path: no model run, no
    missed frame. A track seen, then 20 gated frames later seen again, is one event."""
    events = CameraEvents("main", ZONED.camera_configs()["main"], ZONED.events, ["person"])
    messages = []
    for i in range(5):
        messages += events.process([_person(0.2)], 1000.0 + i * 0.2, None).messages
    # 20 frames (4 s) gated: process() is not called for them
    for i in range(5):
        messages += events.process([_person(0.2)], 1005.0 + i * 0.2, None).messages
    assert [m.type for m in messages] == ["new"]


# --- over a real broker ----------------------------------------------------------------------


def events_config(port: int, assets: Path, **source: Any) -> dict[str, Any]:
    return {
        "device_id": "ev",
        "source": {"uri": str(BIKES), "fps": 5, "loop": False, **source},
        # the default person model (INT8 where setup made it: 2x faster, so a busy machine
        # still gives the tracker enough runs of bikes.mp4's 10 s)
        "model": {"path": str(default_model(assets)), "threads": 2},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5},
        "publish": {"detections": "off", "metrics_interval_s": 1},
        "events": {"max_missed": 3},
    }


def _messages(sub: Subscriber, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sub.seen.append(sub.messages.get(timeout=0.2))
        except Exception:
            continue


def _events_by_id(sub: Subscriber, topic: str) -> dict[str, list[dict[str, Any]]]:
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t, payload, _ in sub.seen:
        if t == topic:
            body = json.loads(payload)
            by_id[body["event"]["id"]].append(body)
    return by_id


def test_person_events_on_bikes_over_mqtt_with_a_snapshot_that_shows_the_box(
    broker, subscriber, write_config, run_agent, assets, tmp_path
):
    sub = subscriber(f"{PREFIX}/ev/#")
    agent = run_agent(write_config(events_config(broker.port, assets)))
    assert agent.wait(120) == 0  # the file ends: every open event ends, then the agent
    _messages(sub, 1.0)
    by_id = _events_by_id(sub, f"{PREFIX}/ev/events")
    assert by_id, "no person event on bikes.mp4"
    for messages in by_id.values():
        kinds = [m["type"] for m in messages]
        assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == 1, kinds
        assert all(m["event"]["label"] == "person" and m["event"]["camera"] == "main" for m in messages)
        assert messages[-1]["event"]["end"] >= messages[0]["event"]["start"]
    seqs = [json.loads(p)["seq"] for t, p, _ in sub.seen if t == f"{PREFIX}/ev/events"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the events' own count, no gap
    # the retained count went back to 0 at the end; the snapshot is a JPEG with the box
    counts = [p for t, p, _ in sub.seen if t == f"{PREFIX}/ev/objects/person"]
    assert counts and counts[-1] == b"0" and any(int(c) > 0 for c in counts)
    jpegs = [p for t, p, _ in sub.seen if t == f"{PREFIX}/ev/objects/person/snapshot"]
    assert jpegs and all(_decoded(j).shape[1] == 640 for j in jpegs)
    # the events are on disk with their snapshots (for `edge-agent events`): each shows its box
    metrics = [json.loads(p) for t, p, _ in sub.seen if t == f"{PREFIX}/ev/metrics"]
    assert metrics and 0 < metrics[-1]["events_sent"] <= len(seqs)  # counted as they are queued
    reader = EventReader(tmp_path / "state")
    kept = reader.entries(limit=100)
    snapshots = {e.event["id"]: reader.snapshot(e.event["id"]) for e in kept}
    reader.close()
    assert {e.event["id"] for e in kept} == set(by_id)
    assert all(e.event["end"] is not None for e in kept)
    for entry in kept:
        jpeg = snapshots[entry.event["id"]]
        assert jpeg is not None and entry.event["snapshot"] is not None
        assert _left_edge_drawn(_decoded(jpeg), entry.event["snapshot"]["box"])


def _decoded(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def _left_edge_drawn(image: np.ndarray, box: list[float]) -> bool:
    """The green box's left edge is where the event says."""
    x1, y1, _, y2 = box
    h, w = image.shape[:2]
    edge = image[int(y1 * h) + 2 : int(y2 * h) - 2, max(0, int(x1 * w) - 2) : int(x1 * w) + 3]
    green = (edge[..., 1] > 150) & (edge[..., 0] < 110) & (edge[..., 2] < 110)
    return bool(green.any(axis=1).mean() > 0.8)


class DurableEvents:
    """A consumer of ``C/events`` with a persistent session (clean_session=False, QoS 1), as a
    real one would be, so the broker keeps its messages while it is away."""

    def __init__(self, port: int, topic: str) -> None:
        self.bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"events-{os.getpid()}-{time.monotonic_ns()}",
            clean_session=False,
        )
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_message = lambda c, u, m: self.bodies.put(json.loads(m.payload))
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def drain(self, quiet: float, within: float | None = None) -> list[dict[str, Any]]:
        """What arrives until ``quiet`` s pass without a message (or ``within`` s in all: a
        looping video's events never go quiet while the agent runs)."""
        out = []
        end = time.monotonic() + within if within is not None else None
        while end is None or time.monotonic() < end:
            try:
                out.append(self.bodies.get(timeout=quiet))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow
def test_a_15_s_broker_outage_loses_no_event_message(
    durable_broker, write_config, run_agent, assets, tmp_path
):
    topic = f"{PREFIX}/ev/events"
    sub = DurableEvents(durable_broker.port, topic)
    config = events_config(durable_broker.port, assets, loop=True)
    config["mqtt"]["reconnect_max_s"] = 2
    agent = run_agent(write_config(config))
    got = [sub.bodies.get(timeout=90)]  # the first event is out
    durable_broker.stop()
    time.sleep(15)  # the video loops on: events start and end while the broker is away
    durable_broker.start()
    got += sub.drain(quiet=8.0, within=20.0)  # the outbox delivers the outage's messages
    agent.signal(signal.SIGTERM)
    assert agent.wait(60) == 0  # a clean stop ends the open events and delivers them
    got += sub.drain(quiet=2.0)
    sub.close()
    assert_no_gaps([b["seq"] for b in got])
    reader = EventReader(tmp_path / "state")
    kept = reader.entries(limit=200)
    reader.close()
    by_id: dict[str, list[str]] = defaultdict(list)
    for body in got:
        by_id[body["event"]["id"]].append(body["type"])
    assert len(kept) >= 2  # more than the one before the outage
    for entry in kept:  # every event the agent had, its new and its end arrived
        kinds = by_id[entry.event["id"]]
        assert "new" in kinds and kinds[-1] == "end", (entry.event["id"], kinds)


def test_replay_prints_the_events_of_a_recording(assets, tmp_path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{path: {default_model(assets)}}}\n"  # INT8 where setup made it: 2x faster
        "source: {fps: 5}\n"
        f"store: {{path: {tmp_path / 'state'}}}\n"
    )
    assert cli_main(["events", "-c", str(config), "--replay", str(BIKES), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and lines[0]["type"] == "new"
    ids = {line["event"]["id"] for line in lines}
    ends = {line["event"]["id"] for line in lines if line["type"] == "end"}
    assert ids == ends  # every event ends by the end of the recording
    assert all(0 <= line["event"]["start"] <= 10.5 for line in lines)  # the recording's clock


def test_detect_draw_grid_marks_the_frame_fractions(assets, tmp_path) -> None:
    out = tmp_path / "drawn"
    image = tmp_path / "grey.png"
    cv2.imwrite(str(image), np.full((300, 400, 3), 90, np.uint8))
    code = cli_main(
        ["detect", str(assets / "face-short-range.tflite"), str(image), "--draw", str(out), "--grid"]
    )
    assert code == 0
    drawn = cv2.imread(str(out / "grey.jpg"))
    h, w = drawn.shape[:2]

    def yellow_rows(x: int) -> float:
        strip = drawn[20 : h - 10, x - 1 : x + 2].astype(int)  # below the labels
        hit = (strip[..., 1] > 180) & (strip[..., 2] > 180) & (strip[..., 1] - strip[..., 0] > 60)
        return float(hit.any(axis=1).mean())

    assert yellow_rows(int(0.5 * w)) > 0.9  # the 0.5 line
    assert yellow_rows(int(0.55 * w)) < 0.1  # none between the lines


def test_a_long_lived_track_keeps_a_bounded_score_history_and_its_best() -> None:
    from agent.tracking.tracker import Tracker, TrackerSettings
    from agent.tracking.types import SCORE_HISTORY

    tracker = Tracker(TrackerSettings())
    for i in range(500):  # a parked car, seen at every run for 100 s
        update = tracker.update([_person(0.3, 0.99 if i == 7 else 0.8)], 1000.0 + i * 0.2)
    (track,) = update.active
    assert len(track.scores) == SCORE_HISTORY and track.top_score == 0.99
