"""Tracking quality of agent.tracking.tracker on ground truth that ships in a PyPI package: the
TUD-Stadtmitte and TUD-Campus sequences (MOT format, 25 fps, 640x480) in motmetrics' wheel.

The tracker gets the ground-truth boxes at a lower frame rate (every 5th frame: 5 fps), with 20 %
of them dropped and each edge of the others moved by a normal draw of 5 % of the box's width or
height, scores drawn in 0.75..0.95; every phase of the frame step and several seeds are run and
scored together with motmetrics (MOTA, IDF1). The hypotheses are the confirmed tracks of each run
(what the events see), ``--matched-only`` keeps only those detected in that run. Also prints the
CPU time of one update with 10 objects.

    .venv/bin/python scripts/track_quality.py [--fps 5] [--seeds 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import motmetrics as mm
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.detection.types import Detection  # noqa: E402
from agent.tracking.tracker import Tracker, TrackerSettings  # noqa: E402

SEQUENCES = {"TUD-Stadtmitte": (640, 480), "TUD-Campus": (640, 480)}
SOURCE_FPS = 25.0
DROP = 0.2
JITTER = 0.05

Box = tuple[float, float, float, float]
Frame = list[tuple[int, Box]]  # ground-truth id, box as fractions of the frame


def load(name: str) -> list[Frame]:
    """One sequence's ground truth, frame by frame (a frame without objects is an empty list)."""
    width, height = SEQUENCES[name]
    rows = np.loadtxt(Path(mm.__file__).parent / "data" / name / "gt.txt", delimiter=",")
    count = int(rows[:, 0].max())
    frames: list[Frame] = [[] for _ in range(count)]
    for row in rows:
        x, y, w, h = (float(v) for v in row[2:6])
        box = (x / width, y / height, (x + w) / width, (y + h) / height)
        frames[int(row[0]) - 1].append((int(row[1]), box))
    return frames


def degrade(frames: list[Frame], rng: np.random.Generator) -> list[list[Detection]]:
    """The detector a tracker would get: 20 % of the boxes missing, the others jittered."""
    runs = []
    for frame in frames:
        detections = []
        for _, (x1, y1, x2, y2) in frame:
            if rng.random() < DROP:
                continue
            w, h = x2 - x1, y2 - y1
            dx1, dy1, dx2, dy2 = rng.normal(0.0, JITTER, 4) * (w, h, w, h)
            box = (x1 + dx1, y1 + dy1, x2 + dx2, y2 + dy2)
            detections.append(Detection("person", 0, float(rng.uniform(0.75, 0.95)), box))
        runs.append(detections)
    return runs


def iou_distance(truth: list[Box], hypotheses: list[Box]) -> np.ndarray[Any, Any]:
    """motmetrics.distances.iou_matrix (1 - IoU, NaN under 0.5 IoU), which calls np.asfarray
    and so fails on numpy 2 in motmetrics 1.4.0, its latest release."""
    if not truth or not hypotheses:
        return np.empty((len(truth), len(hypotheses)))
    a = np.asarray(truth)[:, None]
    b = np.asarray(hypotheses)[None, :]
    lo, hi = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    union = np.prod(a[..., 2:] - a[..., :2], -1) + np.prod(b[..., 2:] - b[..., :2], -1) - inter
    distance = 1 - inter / union
    return np.where(distance > 0.5, np.nan, distance)


#: one model run: the detections and the capture time in, (id, box) of the tracks to score out
Step = Callable[[list[Detection], float], list[tuple[Hashable, Box]]]


def ours(threshold: float = 0.7, matched_only: bool = False) -> Callable[[], Step]:
    """agent.tracking.tracker scored on its confirmed tracks (those missed at this run with their
    predicted box, unless ``matched_only``)."""

    def start() -> Step:
        tracker = Tracker(TrackerSettings(threshold=lambda label: threshold))

        def step(detections: list[Detection], ts: float) -> list[tuple[Hashable, Box]]:
            active = tracker.update(detections, ts).active
            return [
                (t.id, t.box) for t in active if t.confirmed and (t.missed == 0 or not matched_only)
            ]

        return step

    return start


def track(frames: list[Frame], runs: list[list[Detection]], fps: float, step: Step) -> Any:
    ids: dict[Hashable, int] = {}  # motmetrics wants numbers
    acc = mm.MOTAccumulator(auto_id=True)
    for index, (frame, detections) in enumerate(zip(frames, runs, strict=True)):
        shown = step(detections, index / fps)
        hyps = [ids.setdefault(key, len(ids)) for key, _ in shown]
        truth = [box for _, box in frame]
        acc.update([i for i, _ in frame], hyps, iou_distance(truth, [b for _, b in shown]))
    return acc


def quality(start: Callable[[], Step], fps: float = 5.0, seeds: int = 4) -> dict[str, float]:
    """MOTA and IDF1 over both sequences, every phase of the frame step, ``seeds`` draws each."""
    stride = round(SOURCE_FPS / fps)
    accs, names = [], []
    for name in SEQUENCES:
        frames = load(name)
        for phase in range(stride):
            for seed in range(seeds):
                sampled = frames[phase::stride]
                runs = degrade(sampled, np.random.default_rng(seed))
                accs.append(track(sampled, runs, SOURCE_FPS / stride, start()))
                names.append(f"{name}/{phase}/{seed}")
    summary = mm.metrics.create().compute_many(
        accs,
        names=names,
        metrics=["idf1", "mota", "num_switches", "num_frames", "num_objects"],
        generate_overall=True,
    )
    overall = summary.loc["OVERALL"]
    return {
        "idf1": round(float(overall["idf1"]), 3),
        "mota": round(float(overall["mota"]), 3),
        "id_switches": int(overall["num_switches"]),
        "frames": int(overall["num_frames"]),
        "boxes": int(overall["num_objects"]),
        "runs": len(accs),
    }


def cost_ms(start: Callable[[], Step], objects: int = 10, frames: int = 600) -> float:
    """CPU time of one run with ``objects`` people walking in straight lines at 5 fps (the
    median of 5 passes)."""
    rng = np.random.default_rng(0)
    corner0 = rng.uniform(0.1, 0.7, (objects, 2))
    speed = rng.uniform(-0.01, 0.01, (objects, 2))
    size = rng.uniform(0.05, 0.12, (objects, 2))
    runs = []
    for k in range(frames):
        corner = 0.1 + (corner0 + speed * k - 0.1) % 0.7
        boxes = np.concatenate([corner, corner + size], axis=1)
        runs.append([Detection("person", 0, 0.9, (b[0], b[1], b[2], b[3])) for b in boxes.tolist()])
    timings = []
    for _ in range(5):
        step = start()
        begin = time.process_time()
        for k, detections in enumerate(runs):
            step(detections, k / 5.0)
        timings.append((time.process_time() - begin) * 1000 / frames)
    return round(sorted(timings)[2], 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=5.0, help="model runs per second (<= 25)")
    parser.add_argument("--seeds", type=int, default=4, help="random drop/jitter draws per phase")
    parser.add_argument("--matched-only", action="store_true", help="score detected tracks only")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="confirmation threshold; 0 with --matched-only scores as the libraries were scored",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    start = ours(args.threshold, args.matched_only)
    result: dict[str, Any] = {"fps": args.fps, **quality(start, args.fps, args.seeds)}
    result["ms_per_update_10_objects"] = cost_ms(start)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
