"""The measurement behind the tracker's choice: norfair, roboflow's trackers (SORT, ByteTrack,
OC-SORT) and motpy against ours on scripts/track_quality.py's sequences, each scored on the tracks
it matched at a run (as these libraries report them), and their CPU time per run with 10 objects.

The libraries are not dependencies of the agent (README "Tracker" says why); install the ones to
compare in a throwaway venv beside motmetrics and the agent's own dependencies, e.g.
`pip install --no-deps norfair==2.3.0 filterpy` (its metadata pins numpy<2, it runs on 2.4),
`pip install trackers==2.6.1` or `pip install --no-deps motpy==0.0.10 filterpy`; the ones missing
are skipped.

    python scripts/track_compare.py [--fps 5] [--seeds 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
from track_quality import Box, Detection, Step, cost_ms, ours, quality

PIXELS = np.array([640.0, 480.0, 640.0, 480.0])  # the sequences' frame: the libraries tune pixels


def norfair_tracker() -> Step:
    from norfair import Detection as NorfairDetection
    from norfair import Tracker
    from norfair.filter import OptimizedKalmanFilterFactory

    # IoU distance (match above 0.01 IoU); defaults R=4, Q=0.1 give IDF1 0.72 at 5 fps, a Kalman
    # trusting motion more (Q=10, R=1) is norfair's best found here; hit_counter_max 10 keeps a
    # track through the same missed runs as ours.
    tracker = Tracker(
        distance_function="iou",
        distance_threshold=0.99,
        hit_counter_max=10,
        initialization_delay=0,
        filter_factory=OptimizedKalmanFilterFactory(R=1.0, Q=10.0),
    )

    def step(detections: list[Detection], ts: float) -> list[tuple[Hashable, Box]]:
        points = [np.array(d.box).reshape(2, 2) * PIXELS[:2] for d in detections]
        given = [
            NorfairDetection(points=p, scores=np.array([d.score, d.score]))
            for p, d in zip(points, detections, strict=True)
        ]
        shown = []
        for obj in tracker.update(detections=given):
            last = obj.last_detection.points
            if any(np.array_equal(last, p) for p in points):  # matched at this run
                shown.append((obj.id, _box(last.reshape(4) / PIXELS)))
        return shown

    return step


def roboflow(name: str, **options: Any) -> Callable[[], Step]:
    def start() -> Step:
        import supervision as sv
        import trackers

        # 5 fps: lost_track_buffer 30 at frame_rate 5 is 5 runs, as our max_missed
        tracker = getattr(trackers, name)(
            frame_rate=5.0, lost_track_buffer=30, minimum_consecutive_frames=1, **options
        )

        def step(detections: list[Detection], ts: float) -> list[tuple[Hashable, Box]]:
            xyxy = np.array([d.box for d in detections]).reshape(-1, 4) * PIXELS
            given = sv.Detections(
                xyxy=xyxy,
                confidence=np.array([d.score for d in detections]),
                class_id=np.zeros(len(detections), dtype=int),
            )
            out = tracker.update(given)
            return [
                (int(i), _box(b / PIXELS))
                for b, i in zip(out.xyxy, out.tracker_id, strict=True)
                if i >= 0
            ]

        return step

    return start


def motpy_tracker() -> Step:
    from motpy import Detection as MotpyDetection
    from motpy import MultiObjectTracker

    tracker = MultiObjectTracker(
        dt=0.2,
        matching_fn_kwargs={"min_iou": 0.1},
        active_tracks_kwargs={"min_steps_alive": 1, "max_staleness": 5},
        tracker_kwargs={"max_staleness": 5},
    )

    def step(detections: list[Detection], ts: float) -> list[tuple[Hashable, Box]]:
        tracker.step([MotpyDetection(np.array(d.box) * PIXELS, d.score) for d in detections])
        fresh = tracker.active_tracks(max_staleness=0.5, min_steps_alive=1)
        return [(t.id, _box(np.array(t.box) / PIXELS)) for t in fresh]

    return step


def _box(values: Any) -> Box:
    x1, y1, x2, y2 = (float(v) for v in values)
    return x1, y1, x2, y2


CANDIDATES: list[tuple[str, str, Callable[[], Step]]] = [
    ("ours (OpenCV Kalman + lap)", "lap", ours(threshold=0.0, matched_only=True)),
    ("norfair (iou, Q=10, R=1)", "norfair", norfair_tracker),
    (
        "ByteTrack (trackers)",
        "trackers",
        roboflow("ByteTrackTracker", track_activation_threshold=0.5),
    ),
    ("SORT (trackers, iou 0.1)", "trackers", roboflow("SORTTracker", minimum_iou_threshold=0.1)),
    ("OC-SORT (trackers)", "trackers", roboflow("OCSORTTracker")),
    ("motpy (iou 0.1)", "motpy", motpy_tracker),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=5.0, help="model runs per second (<= 25)")
    parser.add_argument("--seeds", type=int, default=4, help="random drop/jitter draws per phase")
    args = parser.parse_args()
    print(f"{'tracker':<28} {'IDF1':>6} {'MOTA':>6} {'IDsw':>5} {'ms/run':>7}")
    for name, module, start in CANDIDATES:
        if importlib.util.find_spec(module) is None:
            print(f"{name:<28} skipped: {module} is not installed")
            continue
        q = quality(start, args.fps, args.seeds)
        print(f"{name:<28} {q['idf1']:>6} {q['mota']:>6} {q['id_switches']:>5} {cost_ms(start):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
