"""CPU cost per model run of the whole events path (filters, tracker, zones, event builder:
``CameraEvents.process``) with 10 objects walking at 5 fps, each living 50 runs and then
replaced, with 2 masks and 3 zones; no image (the snapshot JPEG is paid once per snapshot sent,
see scripts/events_cost.py). Usage: scripts/events_path_cost.py [RUNS]"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from agent.config import parse_config
from agent.detection import Detection
from agent.tracking.camera_events import CameraEvents

CONFIG = parse_config(
    "masks:\n"
    "  - [[0, 0], [0.3, 0], [0.3, 0.15], [0, 0.15]]\n"
    "  - [[0.8, 0], [1, 0], [1, 0.3], [0.8, 0.2]]\n"
    "zones:\n"
    "  gate: {polygon: [[0.1, 0.6], [0.5, 0.6], [0.5, 1.0], [0.1, 1.0]], labels: [person]}\n"
    "  lawn: {polygon: [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]}\n"
    "  path: {polygon: [[0.4, 0.3], [0.6, 0.3], [0.7, 1.0], [0.3, 1.0]]}\n"
)
OBJECTS, LIFE, FPS = 10, 50, 5.0


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rng = np.random.default_rng(0)
    events = CameraEvents("cam", CONFIG.camera_configs()["main"], CONFIG.events, ["person"])
    pos = rng.uniform(0.1, 0.8, (OBJECTS, 2))
    vel = rng.uniform(-0.01, 0.01, (OBJECTS, 2))
    born = -rng.integers(0, LIFE, OBJECTS)
    times, messages = [], 0
    for i in range(runs):
        detections = []
        for k in range(OBJECTS):
            if i - born[k] >= LIFE:  # gone; another one comes elsewhere
                born[k], pos[k] = i, rng.uniform(0.1, 0.8, 2)
            pos[k] = np.clip(pos[k] + vel[k], 0.0, 0.85)
            x, y = pos[k]
            if rng.random() < 0.1:
                continue  # missed by the model now and then
            detections.append(Detection("person", 0, float(rng.uniform(0.6, 0.9)),
                                        (x, y, x + 0.08, y + 0.15)))
        t0 = time.process_time()
        messages += len(events.process(detections, 1000.0 + i / FPS, None).messages)
        times.append((time.process_time() - t0) * 1e3)
    print(f"filters + tracker + zones + events, {OBJECTS} objects, {runs} runs: "
          f"median {statistics.median(times):.3f} ms, mean {statistics.fmean(times):.3f} ms, "
          f"p95 {sorted(times)[int(0.95 * len(times))]:.3f} ms per run; {messages} event messages")


if __name__ == "__main__":
    main()
