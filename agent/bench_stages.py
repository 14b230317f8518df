"""Where a frame's time goes on the agent's path, stage by stage, each timed alone on the same
frames: video decoding, preprocessing, inference, the family's decoder, NMS, the detections in
frame coordinates, the detections payload and its write to the disk outbox.

    python -m agent.bench_stages MODEL [--source VIDEO] [--frames 200] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2

from agent.config import DEFAULT_VIDEO
from agent.detection import Detector
from agent.detection.decoders import DECODERS
from agent.detection.nms import label_groups, nms
from agent.publish.outbox import Outbox
from agent.publish.payloads import detections_message

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


def measure_stages(
    model: str | Path,
    *,
    source: str | None = None,
    frames: int = 200,
    threads: int = 2,
    card: str | None = None,
) -> dict[str, object]:
    """Median and p95 milliseconds of each stage over ``frames`` frames of ``source`` (looped),
    each stage timed on its own, one frame after the other, in this thread."""
    video = source or str(DEFAULT_VIDEO)
    detector = Detector.load(model, card=card, threads=threads)
    c = detector.card
    decoder = DECODERS[c.family]
    groups = label_groups(c.labels)
    names = [o.name for o in detector.runtime.outputs]
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
            tensor, transform = detector.preprocess(image)
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
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.bench_stages", description=__doc__)
    parser.add_argument("model", help="model file (.onnx or .tflite)")
    parser.add_argument("--source", help="video (default: the sample video)")
    parser.add_argument("--frames", type=int, default=200, help="frames to measure")
    parser.add_argument("--threads", type=int, default=2, help="inference threads")
    parser.add_argument("--card", help="model card (default: <model>.card.yaml)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    result = measure_stages(
        args.model, source=args.source, frames=args.frames, threads=args.threads, card=args.card
    )
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
