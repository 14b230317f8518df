"""OpenVINO against onnxruntime on the same ONNX files, this machine, one run: ms per inference
(median, alternating rounds, the same preprocessed frames), detection agreement (IoU, score
difference) on the astronaut photo and frames of bikes.mp4, the load time of a cold and a warm
compiled-model cache (each in a fresh process), and inferences a second under the LATENCY and
THROUGHPUT hints with 1, 2 and OpenVINO's optimal number of requests in flight (OpenVINO's own
AsyncInferQueue: the agent keeps one in flight). Prints one JSON object.

Usage: scripts/openvino_cost.py [FP32.onnx] [INT8.onnx] [--threads 2] [--rounds 8] [--per-round 4]
(INT8: e.g. `edge-agent model quantize models/person-yolov8s.onnx -o /tmp/person-int8.onnx
--calib models/media/bikes.mp4`; without it, the INT8 rows are left out)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import agent  # noqa: F401  (telemetry switches before any runtime is imported)
from agent.config import ASSETS_DIR
from agent.detection import Detector, DetectorSettings
from agent.detection.types import box_iou
from agent.serving import RuntimeSpec

MEDIA = ASSETS_DIR / "media"
AGREEMENT_SCORE = 0.25  # detections compared down to this score (more than the confident ones)

# A fresh process: the packages imported first, then the load (read, compile or import) timed.
LOAD = """
import sys, time
import agent, openvino
from agent.runtimes import load_runtime
t0 = time.perf_counter()
rt = load_runtime(sys.argv[1], runtime="openvino", threads=2, cache_dir=sys.argv[2] or None)
print(time.perf_counter() - t0, rt.loaded_from_cache)
"""


def frames(count: int) -> list[np.ndarray]:
    out = [cv2.imread(str(MEDIA / "astronaut.png"))]
    cap = cv2.VideoCapture(str(MEDIA / "bikes.mp4"))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    for index in np.linspace(0, total - 1, count - 1).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, image = cap.read()
        if ok:
            out.append(image)
    cap.release()
    return out


def timings(
    detectors: dict[str, Detector], tensors: list[np.ndarray], rounds: int, per_round: int
) -> dict[str, float]:
    """Median ms per inference of each detector, the detectors taking turns round by round."""
    samples: dict[str, list[float]] = {name: [] for name in detectors}
    for r in range(rounds):
        for name, detector in detectors.items():
            for i in range(per_round):
                tensor = tensors[(r * per_round + i) % len(tensors)]
                t0 = time.perf_counter()
                detector.infer(tensor)
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: round(float(np.median(v)), 1) for name, v in samples.items()}


def agreement(reference: Detector, other: Detector, images: list[np.ndarray]) -> dict[str, Any]:
    """Detections of ``reference`` matched by ``other`` (same label, best IoU) at 0.25."""
    settings = DetectorSettings(score_threshold=AGREEMENT_SCORE)
    ious, diffs, missed, extra, total = [], [], 0, 0, 0
    for image in images:
        want, _ = reference.detect(image, settings)
        got, _ = other.detect(image, settings)
        total += len(want)
        extra += max(0, len(got) - len(want))
        for d in want:
            same = [g for g in got if g.label == d.label]
            if not same:
                missed += 1
                continue
            best = max(same, key=lambda g: box_iou(g.box, d.box))
            ious.append(box_iou(best.box, d.box))
            diffs.append(abs(best.score - d.score))
    return {
        "detections": total,
        "unmatched": missed,
        "extra": extra,
        "min_iou": round(min(ious), 4) if ious else None,
        "max_score_diff": round(max(diffs), 4) if diffs else None,
        "within_bar": sum(1 for i, s in zip(ious, diffs, strict=True) if i >= 0.9 and s <= 0.02),
    }


def load_times(model: str, repeats: int) -> dict[str, Any]:
    """Seconds to open the model in a fresh process: no cache, the first load into an empty
    cache (cold: compile and store), then loads from it (warm)."""

    def once(cache: str) -> tuple[float, bool]:
        done = subprocess.run(
            [sys.executable, "-c", LOAD, model, cache],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        seconds, hit = done.stdout.split()
        return float(seconds), hit == "True"

    with tempfile.TemporaryDirectory() as tmp:
        no_cache = [once("")[0] for _ in range(repeats)]
        cold, warm = [], []
        for i in range(repeats):
            cache = str(Path(tmp) / str(i))
            seconds, hit = once(cache)
            assert not hit
            cold.append(seconds)
            seconds, hit = once(cache)
            assert hit
            warm.append(seconds)
    med = {k: float(np.median(v)) for k, v in (("none", no_cache), ("cold", cold), ("warm", warm))}
    return {
        "load_s_no_cache": round(med["none"], 3),
        "load_s_cold_cache": round(med["cold"], 3),
        "load_s_warm_cache": round(med["warm"], 3),
        "warm_vs_cold": round(med["warm"] / med["cold"], 3),
        "warm_vs_no_cache": round(med["warm"] / med["none"], 3),
    }


def hints(model: str, threads: int, count: int = 40) -> dict[str, Any]:
    """Inferences a second of ``model`` on the CPU per performance hint and requests in flight."""
    import openvino

    core = openvino.Core()
    x = np.random.default_rng(0).random((1, 3, 640, 640), np.float32)
    out: dict[str, Any] = {}
    for hint in ("LATENCY", "THROUGHPUT"):
        compiled = core.compile_model(
            model,
            "CPU",
            {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32",
             "INFERENCE_NUM_THREADS": threads},
        )  # fmt: skip
        best = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        out[f"{hint}_optimal_requests"] = best
        for requests in sorted({1, 2, best}):
            queue = openvino.AsyncInferQueue(compiled, requests)
            for _ in range(2 * requests):  # warm-up
                queue.start_async({0: x})
            queue.wait_all()
            t0 = time.perf_counter()
            for _ in range(count):
                queue.start_async({0: x})
            queue.wait_all()
            out[f"{hint}_{requests}_in_flight"] = round(count / (time.perf_counter() - t0), 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fp32", nargs="?", default=str(ASSETS_DIR / "person-yolov8s.onnx"))
    p.add_argument("int8", nargs="?", help="the INT8 QDQ model (optional)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--per-round", type=int, default=4)
    p.add_argument("--frames", type=int, default=25, help="pictures compared: astronaut + video")
    p.add_argument("--load-repeats", type=int, default=3)
    args = p.parse_args()
    import openvino

    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    specs = {
        "ort_fp32": (args.fp32, RuntimeSpec(runtime="onnx", threads=args.threads)),
        "ov_f32": (args.fp32, RuntimeSpec(runtime="openvino", threads=args.threads)),
    }
    if "BF16" in caps:
        specs["ov_bf16"] = (
            args.fp32,
            RuntimeSpec(runtime="openvino", threads=args.threads, precision="bf16"),
        )
    if args.int8:
        specs["ort_int8"] = (args.int8, RuntimeSpec(runtime="onnx", threads=args.threads))
        specs["ov_int8"] = (args.int8, RuntimeSpec(runtime="openvino", threads=args.threads))
    detectors = {name: spec.load(path) for name, (path, spec) in specs.items()}
    images = frames(args.frames)
    tensors = [detectors["ort_fp32"].preprocess(image)[0] for image in images]
    ms = timings(detectors, tensors, args.rounds, args.per_round)
    result: dict[str, Any] = {
        "uptime": Path("/proc/loadavg").read_text().split()[:3],
        "openvino": openvino.__version__.split("-")[0],
        "cpu_capabilities": caps,
        "threads": args.threads,
        "ms_per_inference": ms,
        "ov_f32_vs_ort_fp32": round(ms["ort_fp32"] / ms["ov_f32"], 3),
    }
    if "ov_bf16" in ms:
        result["ov_bf16_vs_ort_fp32"] = round(ms["ort_fp32"] / ms["ov_bf16"], 3)
    if args.int8:
        result["ov_int8_vs_ort_int8"] = round(ms["ort_int8"] / ms["ov_int8"], 3)
    ref = detectors["ort_fp32"]
    result["agreement_vs_ort_fp32"] = {
        name: agreement(ref, d, images) for name, d in detectors.items() if name != "ort_fp32"
    }
    if args.int8:
        result["agreement_ov_int8_vs_ort_int8"] = agreement(
            detectors["ort_int8"], detectors["ov_int8"], images
        )
    result.update(load_times(args.fp32, args.load_repeats))
    result["inferences_per_s_by_hint"] = hints(args.int8 or args.fp32, args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
