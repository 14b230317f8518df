"""Where a frame's time goes on the agent's path, stage by stage, each timed alone on the same
frames: video decoding, preprocessing, inference, the family's decoder, NMS, the detections in
frame coordinates, the detections payload and its write to the disk outbox. Then the CPU a frame
costs, by thread, in the bare runtime loop and in the pipeline: on a machine shared with other
work, fps move with the load, CPU milliseconds per frame much less.

    python -m agent.bench_stages MODEL [--source VIDEO] [--frames 200] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import cv2

from agent.bench import _read_frames
from agent.config import DEFAULT_VIDEO
from agent.detection import Detector
from agent.detection.decoders import DECODERS
from agent.detection.nms import label_groups, nms
from agent.pipeline import Pipeline, Result
from agent.publish.outbox import Outbox
from agent.publish.payloads import detections_message
from agent.sources import open_source

#: the stages in the order a frame passes them; ``inference`` is the model, the rest is ours
STAGES = ("read", "preprocess", "inference", "decode", "nms", "detections", "payload", "outbox")


def _same(payload: bytes, seq: int) -> bytes:
    return payload


class _Laps:
    """Milliseconds since the last mark, collected per stage."""

    def __init__(self, stages: Sequence[str]) -> None:
        self.samples: dict[str, list[float]] = {stage: [] for stage in stages}
        self._mark = time.perf_counter()

    def start(self) -> None:
        self._mark = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.samples[stage].append((now - self._mark) * 1e3)
        self._mark = now


def _thread_cpu_ms() -> dict[int, float]:
    """CPU milliseconds of each thread of this process so far (Linux ``/proc``; empty
    elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, float] = {}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick * 1e3  # utime + stime
    return out


def _thread_role(name: str) -> str:
    if name in ("prepare", "infer"):
        return name
    if name.startswith("source "):
        return "source"
    return "model threads" if name == "" else "other"


def cpu_per_frame(detector: Detector, video: str, frames: int) -> dict[str, object]:
    """fps and CPU milliseconds per frame of the bare runtime (``infer`` on preprocessed frames)
    and of the pipeline (reader, prepare and infer threads, a file read losslessly), the
    pipeline's CPU by thread: ``model threads`` are the runtime's own workers."""
    sample = _read_frames(video, min(frames, 50))
    tensors = [detector.preprocess(f)[0] for f in sample]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(frames):
        detector.infer(tensors[i % len(tensors)])
    runtime = {
        "fps": round(frames / (time.perf_counter() - t0), 2),
        "cpu_ms": round((time.process_time() - cpu0) / frames * 1e3, 3),
    }
    del tensors
    done = threading.Event()
    count = 0

    def on_result(result: Result) -> None:
        nonlocal count
        count += 1
        if count >= frames:
            done.set()

    source = open_source(video, loop=True, realtime=False)
    pipeline = Pipeline(source, detector, on_result)
    source.start()
    before = _thread_cpu_ms()
    cpu0, t0 = time.process_time(), time.perf_counter()
    pipeline.start()
    done.wait()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    after = _thread_cpu_ms()
    roles = {t.native_id: _thread_role(t.name) for t in threading.enumerate()}
    pipeline.stop()
    source.stop()
    by_role: dict[str, float] = {}
    for tid, ms in after.items():
        # threads the runtime started (not Python's) are its workers
        role = roles.get(tid, "model threads")
        if tid == threading.main_thread().native_id:
            role = "other"
        by_role[role] = by_role.get(role, 0.0) + (ms - before.get(tid, 0.0)) / count
    return {
        "runtime": runtime,
        "pipeline": {
            "fps": round(count / elapsed, 2),
            "cpu_ms": round(cpu / count * 1e3, 3),
            "by_thread": {role: round(ms, 3) for role, ms in sorted(by_role.items())},
        },
        "pipeline_vs_runtime": round(count / elapsed / runtime["fps"], 3),
        "extra_cpu_ms": round(cpu / count * 1e3 - runtime["cpu_ms"], 3),
    }


def measure_stages(
    model: str | Path,
    *,
    source: str | None = None,
    frames: int = 200,
    threads: int = 2,
    card: str | None = None,
    cpu: bool = True,
) -> dict[str, object]:
    """Median and p95 milliseconds of each stage over ``frames`` frames of ``source`` (looped),
    each stage timed on its own, one frame after the other, in this thread; with ``cpu``, then
    ``cpu_per_frame`` over as many frames."""
    video = source or str(DEFAULT_VIDEO)
    detector = Detector.load(model, card=card, threads=threads)
    c = detector.card
    decoder = DECODERS[c.family]
    groups = label_groups(c.labels)
    names = [o.name for o in detector.runtime.outputs]
    buffer = detector.preprocess.empty()  # reused, as the pipeline does
    laps = _Laps(STAGES)
    kept_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp) / "outbox.sqlite")
        cap = cv2.VideoCapture(video)
        done = 0
        while done < frames:
            laps.start()
            ok, image = cap.read()
            if not ok:
                if done == 0:
                    raise SystemExit(f"bench_stages: cannot read frames from {video}")
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # the end of the file: loop
                continue
            laps.lap("read")
            tensor, transform = detector.preprocess(image, out=buffer)
            laps.lap("preprocess")
            outputs = detector.infer(tensor)
            laps.lap("inference")
            candidates = decoder(outputs, c, c.thresholds.score, names)
            laps.lap("decode")
            kept = nms(candidates, c.thresholds.iou, groups)
            laps.lap("nms")
            detections = detector.to_detections(kept, transform)
            laps.lap("detections")
            h, w = image.shape[:2]
            payload = detections_message(
                done,
                done,
                w,
                h,
                time.time(),
                (c.name, c.version),
                (1.0, 2.0, 0.5),
                [d.to_dict() for d in detections],
            )
            laps.lap("payload")
            outbox.put("bench/detections", functools.partial(_same, payload))
            laps.lap("outbox")
            kept_total += len(detections)
            done += 1
        cap.release()
        outbox.close()
    cpu_figures = cpu_per_frame(detector, video, frames) if cpu else None
    detector.close()
    samples = laps.samples

    def p95(values: list[float]) -> float:
        return sorted(values)[min(len(values) - 1, int(0.95 * len(values)))]

    ms = {
        stage: {
            "p50": round(statistics.median(values), 3),
            "p95": round(p95(values), 3),
        }
        for stage, values in samples.items()
    }
    ours = sum(ms[s]["p50"] for s in STAGES if s not in ("read", "inference"))
    return {
        "model": str(model),
        "source": video,
        "frames": frames,
        "threads": threads,
        "detections_per_frame": round(kept_total / frames, 2),
        "ms": ms,
        # what the agent's own per-frame work adds to the model's (medians, summed)
        "agent_ms_p50": round(ours, 3),
        "agent_vs_inference": round(ours / ms["inference"]["p50"], 3),
        "cpu": cpu_figures,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def format_table(result: dict[str, object]) -> str:
    ms = result["ms"]
    assert isinstance(ms, dict)
    lines = [f"{result['model']} on {result['source']}, {result['frames']} frames", ""]
    lines.append(f"{'stage':<12}{'p50 ms':>10}{'p95 ms':>10}")
    for stage in STAGES:
        lines.append(f"{stage:<12}{ms[stage]['p50']:>10.3f}{ms[stage]['p95']:>10.3f}")
    lines.append(
        f"agent's own work per frame (preprocess .. outbox, p50 summed): "
        f"{result['agent_ms_p50']:.3f} ms = {result['agent_vs_inference']:.3f} of inference"
    )
    cpu = result.get("cpu")
    if isinstance(cpu, dict):
        rt, pipe = cpu["runtime"], cpu["pipeline"]
        lines += [
            "",
            f"bare runtime: {rt['fps']} fps, {rt['cpu_ms']:.3f} CPU ms a frame",
            f"pipeline:     {pipe['fps']} fps ({cpu['pipeline_vs_runtime']:.3f} of the runtime), "
            f"{pipe['cpu_ms']:.3f} CPU ms a frame (+{cpu['extra_cpu_ms']:.3f}): "
            + ", ".join(f"{role} {ms:.3f}" for role, ms in pipe["by_thread"].items()),
        ]
    lines.append(f"load average: {result['load_average']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.bench_stages", description=__doc__)
    parser.add_argument("model", help="model file (.onnx or .tflite)")
    parser.add_argument("--source", help="video (default: the sample video)")
    parser.add_argument("--frames", type=int, default=200, help="frames to measure")
    parser.add_argument("--threads", type=int, default=2, help="inference threads")
    parser.add_argument("--card", help="model card (default: <model>.card.yaml)")
    parser.add_argument(
        "--no-cpu", action="store_true", help="only the stages (no runtime and pipeline runs)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    result = measure_stages(
        args.model,
        source=args.source,
        frames=args.frames,
        threads=args.threads,
        card=args.card,
        cpu=not args.no_cpu,
    )
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
