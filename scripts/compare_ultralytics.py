#!/usr/bin/env python3
"""The agent's pipeline against Ultralytics' ``predict`` on the same ONNX model and video: frames
per second and the peak resident memory of each, each run in a fresh process, alternated.

    .venv/bin/python scripts/compare_ultralytics.py --ultralytics-python /tmp/venv-ul/bin/python \\
        MODEL.onnx [--video models/media/bikes.mp4] [--frames 100] [--rounds 2] [--threads 2]

Ultralytics is never a dependency of the agent: it runs under its own interpreter (a throwaway
venv with ``pip install ultralytics``). Both get the card's thresholds, 640x640 input and every
frame of the video in order (the agent reads the file losslessly); both use onnxruntime with
``--threads`` intra-op threads (Ultralytics: onnxruntime's default, one per core, so
``--threads`` should be the core count for a fair run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_agent(model: str, video: str, frames: int, threads: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from agent.detection import Detector
    from agent.memory import return_large_blocks
    from agent.pipeline import Pipeline, Result
    from agent.sources import open_source

    return_large_blocks()  # as `edge-agent run` does
    detector = Detector.load(model, threads=threads)
    count = 0
    found = 0
    done = threading.Event()

    def on_result(result: Result) -> None:
        nonlocal count, found
        count += 1
        found += len(result.detections)
        if count >= frames:
            done.set()

    source = open_source(video, loop=False, realtime=False)
    pipeline = Pipeline(source, detector, on_result)
    source.start()
    t0 = time.perf_counter()
    pipeline.start()
    while not done.wait(0.5):
        if pipeline.finished.is_set():
            break
    elapsed = time.perf_counter() - t0
    pipeline.stop()
    source.stop()
    return {"fps": count / elapsed, "frames": count, "detections": found}


def run_ultralytics(model: str, video: str, frames: int, threads: int) -> dict[str, Any]:
    import yaml
    from ultralytics import YOLO

    card_path = Path(model).with_suffix("").as_posix() + ".card.yaml"
    card = yaml.safe_load(Path(card_path).read_text()) if Path(card_path).is_file() else {}
    thresholds = card.get("thresholds", {})
    options = {
        "conf": thresholds.get("score", 0.5),
        "iou": thresholds.get("iou", 0.45),
        "imgsz": 640,
        "device": "cpu",
        "verbose": False,
    }
    yolo = YOLO(model, task="detect")
    import cv2

    cap = cv2.VideoCapture(video)
    ok, first = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"cannot read {video}")
    yolo.predict(first, **options)  # loads the session and warms it up, as Detector.load does
    count = 0
    found = 0
    t0 = time.perf_counter()
    for result in yolo.predict(source=video, stream=True, **options):
        count += 1
        found += len(result.boxes)
        if count >= frames:
            break
    elapsed = time.perf_counter() - t0
    return {"fps": count / elapsed, "frames": count, "detections": found}


def child(kind: str, model: str, video: str, frames: int, threads: int) -> None:
    run = run_agent if kind == "agent" else run_ultralytics
    result = run(model, video, frames, threads)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="ONNX model (its card beside it gives the thresholds)")
    parser.add_argument("--ultralytics-python", required=True, help="interpreter with ultralytics")
    parser.add_argument("--video", default=str(ROOT / "models" / "media" / "bikes.mp4"))
    parser.add_argument("--frames", type=int, default=100, help="frames measured per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs of each")
    parser.add_argument("--threads", type=int, default=2, help="the agent's inference threads")
    parser.add_argument("--child", choices=["agent", "ultralytics"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.video, args.frames, args.threads)
        return 0
    if not Path(args.ultralytics_python).is_file():
        print(f"{args.ultralytics_python}: no such interpreter", file=sys.stderr)
        return 1
    runs: dict[str, list[dict[str, Any]]] = {"agent": [], "ultralytics": []}
    for _ in range(args.rounds):
        for kind, python in (("agent", sys.executable), ("ultralytics", args.ultralytics_python)):
            load = os.getloadavg()[0]
            out = subprocess.run(
                [python, __file__, args.model, "--ultralytics-python", args.ultralytics_python,
                 "--video", args.video, "--frames", str(args.frames),
                 "--threads", str(args.threads), "--child", kind],
                capture_output=True, text=True, check=False, timeout=1800,
                env={**os.environ, "YOLO_OFFLINE": "1"},
            )
            if out.returncode != 0:
                print(f"{kind} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                return 1
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["load_before"] = round(load, 2)
            runs[kind].append(result)
            print(kind, json.dumps(result), flush=True)
    agent_fps = statistics.median(r["fps"] for r in runs["agent"])
    ul_fps = statistics.median(r["fps"] for r in runs["ultralytics"])
    agent_rss = max(r["peak_rss_mb"] for r in runs["agent"])
    ul_rss = max(r["peak_rss_mb"] for r in runs["ultralytics"])
    print(json.dumps({
        "agent_fps": round(agent_fps, 2),
        "ultralytics_fps": round(ul_fps, 2),
        "fps_ratio": round(agent_fps / ul_fps, 3),
        "agent_peak_rss_mb": round(agent_rss, 1),
        "ultralytics_peak_rss_mb": round(ul_rss, 1),
        "rss_ratio": round(agent_rss / ul_rss, 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
