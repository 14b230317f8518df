"""Speed and memory of a model on this device: the bare runtime, the agent's pipeline and the
sequential loop a user would write by hand, on the same frames and threads."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from agent.config import DEFAULT_VIDEO, MqttConfig
from agent.detection import Detector
from agent.pipeline import Pipeline, Result
from agent.publish import MqttPublisher
from agent.publish.payloads import detections_message
from agent.sources import open_source


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0


def _read_frames(source: str, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(source)
    frames: list[np.ndarray] = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            if not frames:
                break
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # short video: wrap around
            continue
        frames.append(frame)
    cap.release()
    return frames


def runtime_fps(detector: Detector, frames: list[np.ndarray]) -> float:
    tensors = [detector.preprocess(f)[0] for f in frames]
    t0 = time.perf_counter()
    for tensor in tensors:
        detector.infer(tensor)
    return len(tensors) / (time.perf_counter() - t0)


def naive_fps(detector: Detector, source: str, count: int) -> float:
    """read -> preprocess -> infer -> decode, one after the other, as a hand-written loop does."""
    cap = cv2.VideoCapture(source)
    done = 0
    t0 = time.perf_counter()
    while done < count:
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        tensor, transform = detector.preprocess(frame)
        detector.postprocess(detector.infer(tensor), transform)
        done += 1
    elapsed = time.perf_counter() - t0
    cap.release()
    return done / elapsed


def pipeline_fps(
    detector: Detector, source: str, count: int, broker: str | None
) -> tuple[float, list[float]]:
    publisher = None
    if broker:
        host, _, port = broker.partition(":")
        publisher = MqttPublisher(MqttConfig(host=host, port=int(port or 1883)), "bench")
        publisher.start()
        if not publisher.wait_connected(10):
            raise SystemExit(f"bench: no MQTT broker at {broker}")
    latencies: list[float] = []
    done = threading.Event()

    def on_result(result: Result) -> None:
        latencies.append(result.times.total)
        if publisher is not None:
            h, w = result.frame.image.shape[:2]
            payload = detections_message(
                len(latencies),
                result.frame.id,
                w,
                h,
                result.frame.ts,
                (result.model_name, result.model_version),
                (result.times.inference, result.times.total),
                [d.to_dict() for d in result.detections],
            )
            publisher.publish(publisher.topics.detections, payload, qos=1)
        if len(latencies) >= count:
            done.set()

    # realtime=False: the file is read as fast as the pipeline takes frames, losing none.
    frame_source = open_source(source, loop=True, realtime=False)
    pipeline = Pipeline(frame_source, detector, on_result)
    frame_source.start()
    t0 = time.perf_counter()
    pipeline.start()
    done.wait()
    elapsed = time.perf_counter() - t0
    pipeline.stop()
    frame_source.stop()
    if publisher is not None:
        publisher.close()
    return len(latencies) / elapsed, latencies


def run_bench(
    model: str | Path,
    *,
    source: str | None = None,
    frames: int = 50,
    threads: int = 2,
    card: str | None = None,
    broker: str | None = None,
) -> dict[str, object]:
    video = source or str(DEFAULT_VIDEO)
    detector = Detector.load(model, card=card, threads=threads)
    sample = _read_frames(video, frames)
    if not sample:
        raise SystemExit(f"bench: cannot read frames from {video}")
    for f in sample[:3]:  # warm caches and allocator before timing
        detector.detect(f)
    rt = runtime_fps(detector, sample)
    naive = naive_fps(detector, video, frames)
    pipe, latencies = pipeline_fps(detector, video, frames, broker)
    return {
        "model": str(model),
        "source": video,
        "frames": frames,
        "threads": threads,
        "runtime_fps": round(rt, 2),
        "pipeline_fps": round(pipe, 2),
        "naive_fps": round(naive, 2),
        "pipeline_vs_runtime": round(pipe / rt, 3),
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p95": _percentile(latencies, 95),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "published": bool(broker),
    }
