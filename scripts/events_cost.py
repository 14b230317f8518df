"""CPU cost per frame of the tracking path after the tracker: filters (2 masks, per-label score
and area limits), zones (3) and the event builder, with 10 objects walking about at 5 fps, each
living 50 frames and then replaced (so new, update and end all happen), and of one snapshot
JPEG (a bikes.mp4 frame, box drawn). Usage: scripts/events_cost.py [FRAMES]"""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np

from agent.config import DEFAULT_VIDEO, ObjectConfig, ZoneConfig
from agent.detection import Detection
from agent.tracking.events import EventBuilder, Snapshot
from agent.tracking.filters import ObjectFilters
from agent.tracking.types import TrackedObject, TrackUpdate
from agent.tracking.zones import Zones

OBJECTS = 10
LIFE = 50  # frames
FPS = 5.0


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rng = np.random.default_rng(0)
    masks = [[(0.0, 0.0), (0.3, 0.0), (0.3, 0.15), (0.0, 0.15)],
             [(0.8, 0.0), (1.0, 0.0), (1.0, 0.3), (0.8, 0.2)]]
    objects = {"person": ObjectConfig(min_score=0.5, min_area=0.001, max_area=0.9)}
    zones = Zones({
        "gate": ZoneConfig(polygon=[(0.1, 0.6), (0.5, 0.6), (0.5, 1.0), (0.1, 1.0)],
                           labels=["person"]),
        "lawn": ZoneConfig(polygon=[(0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)]),
        "path": ZoneConfig(polygon=[(0.4, 0.3), (0.6, 0.3), (0.7, 1.0), (0.3, 1.0)]),
    })
    filters = ObjectFilters(masks, objects)
    builder = EventBuilder("cam", zones, 1.0, labels=["person", "car"])
    start = rng.uniform(0.1, 0.9, (OBJECTS, 2))
    speed = rng.uniform(-0.01, 0.01, (OBJECTS, 2))
    tracks: list[TrackedObject | None] = [None] * OBJECTS
    # the builder keeps a reference to the frame, never a copy: its size does not matter here
    image = np.zeros((272, 640, 3), np.uint8)
    inputs = []
    for i in range(count):
        ts = i / FPS
        dets, active, ended = [], [], []
        for k in range(OBJECTS):
            age = (i + k * 5) % LIFE
            if age == 0 and tracks[k] is not None:
                ended.append(tracks[k])
                tracks[k] = None
            x, y = np.clip(start[k] + speed[k] * age, 0.1, 0.9)
            box = (float(x) - 0.05, float(y) - 0.1, float(x) + 0.05, float(y) + 0.1)
            score = float(rng.uniform(0.55, 0.95))
            label = "person" if k % 3 else "car"
            dets.append(Detection(label, 0, score, box))
            t = tracks[k]
            if t is None:
                t = tracks[k] = TrackedObject(f"{i}-{k}", label, box, score, ts, ts)
            t.box, t.score, t.last_ts = box, score, ts
            t.scores.append(score)
            t.confirmed = age >= 2
            t.stationary = age > 30
            active.append(t)
        # the objects the tracker returns are the same ones each frame: snapshot their state
        frame_tracks = [TrackedObject(t.id, t.label, t.box, t.score, t.first_ts, t.last_ts,
                                      list(t.scores[-3:]), t.confirmed, 0, t.stationary)
                        for t in active]
        inputs.append((dets, TrackUpdate(frame_tracks, list(ended)), ts, image))
    messages = snapshots = 0
    t0 = time.perf_counter()
    for dets, update, ts, frame in inputs:
        filters.apply(dets)
        out = builder.update(update, ts, frame)
        messages += len(out.messages)
        snapshots += len(out.snapshots)
    elapsed = time.perf_counter() - t0
    print(f"filters + zones + events, {OBJECTS} objects, {count} frames: "
          f"{elapsed / count * 1000:.3f} ms/frame ({messages} event messages, "
          f"{snapshots} snapshots given)")
    cap = cv2.VideoCapture(str(DEFAULT_VIDEO))
    ok, street = cap.read()
    cap.release()
    if not ok:
        sys.exit(f"{DEFAULT_VIDEO}: cannot read a frame (run scripts/fetch-assets)")
    for size in ((640, 272), (1920, 1080)):
        image = cv2.resize(street, size)
        runs = []
        for _ in range(6):  # the first is a warm-up
            snap = Snapshot("person", 0.0, 0.9, (0.4, 0.3, 0.5, 0.9), image)
            t0 = time.perf_counter()
            jpeg = snap.jpeg(256_000)
            runs.append(time.perf_counter() - t0)
        print(f"snapshot JPEG of a {size[0]}x{size[1]} street frame within 256 kB: "
              f"{float(np.median(runs[1:])) * 1000:.1f} ms, {len(jpeg)} bytes "
              "(once per snapshot given, not per frame)")


if __name__ == "__main__":
    main()
