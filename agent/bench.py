"""Speed and memory of a model on this device: the bare runtime, the agent's pipeline and the
sequential loop a user would write by hand, on the same frames and threads; the CPU a still scene
costs with the motion gate on and off."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.config import DEFAULT_VIDEO, MqttConfig
from agent.detection import Detector
from agent.motion import MotionGate, MotionSettings
from agent.pipeline import Pipeline, Result
from agent.publish import MqttPublisher
from agent.publish.outbox import Outbox
from agent.publish.payloads import detections_message
from agent.runtimes import runtime_kind
from agent.serving import RuntimeSpec
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
                result.latency_ms(),
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


# The columns of `edge-agent bench --runtime A,B` (one row per runtime).
BENCH_COLUMNS = (
    "runtime",
    "device",
    "precision",
    "load_s",
    "runtime_fps",
    "pipeline_fps",
    "naive_fps",
    "latency_ms_p50",
    "rss_mb",
)


def runtime_row(detector: Detector, spec: RuntimeSpec) -> dict[str, object]:
    """Which runtime ran, and for OpenVINO the device and the precision it really ran at."""
    rt = detector.runtime
    row: dict[str, object] = {"runtime": runtime_kind(rt.path, spec.runtime)}
    if row["runtime"] == "openvino":
        row["device"] = getattr(rt, "device", spec.device)
        row["precision"] = getattr(rt, "precision", spec.precision)
    return row


def run_bench(
    model: str | Path,
    *,
    source: str | None = None,
    frames: int = 50,
    threads: int = 2,
    card: str | None = None,
    broker: str | None = None,
    spec: RuntimeSpec | None = None,
) -> dict[str, object]:
    """``spec``: the runtime options (default: by file suffix, ``threads``)."""
    video = source or str(DEFAULT_VIDEO)
    spec = spec or RuntimeSpec(threads=threads)
    t0 = time.perf_counter()
    detector = spec.load(model, card=card, warmup=False)
    load_s = time.perf_counter() - t0
    detector.warmup()
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
        **runtime_row(detector, spec),
        "source": video,
        "frames": frames,
        "threads": spec.threads,
        "load_s": round(load_s, 3),
        "runtime_fps": round(rt, 2),
        "pipeline_fps": round(pipe, 2),
        "naive_fps": round(naive, 2),
        "pipeline_vs_runtime": round(pipe / rt, 3),
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p95": _percentile(latencies, 95),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "published": bool(broker),
    }


def publish_cost_us(path: Path, count: int = 2000) -> dict[str, float]:
    """Per-frame cost of the publish path: payload built and written to the disk outbox."""
    box = Outbox(path)
    objects: list[dict[str, object]] = [
        {"label": "person", "class_id": 0, "score": 0.87, "box": [0.1, 0.2, 0.3, 0.4]}
    ] * 3

    def build(seq: int) -> bytes:
        return detections_message(
            seq, seq, 640, 480, time.time(), ("person", "1"), (30.0, 35.0), objects
        )

    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        box.put("edge-agent/bench/detections", build)
        samples.append((time.perf_counter() - t0) * 1e6)
    box.close()
    return {"publish_us_p50": _percentile(samples, 50), "publish_us_p95": _percentile(samples, 95)}


def drain_rate(path: Path, port: int, backlog: int = 10_000) -> float:
    """Messages per second at which a stored backlog reaches a broker (QoS 1, acknowledged)."""
    box = Outbox(path, max_messages=backlog * 2)
    payload = b'{"seq":0,"objects":[]}' + b" " * 200
    for _ in range(backlog):
        box.put("edge-agent/bench/detections", lambda seq: payload)
    publisher = MqttPublisher(MqttConfig(host="127.0.0.1", port=port), "bench", outbox=box)
    t0 = time.perf_counter()
    publisher.start()
    while box.depth > 0 and time.perf_counter() - t0 < 300:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    left = box.depth
    publisher.close()
    if left:
        raise SystemExit(f"bench: {left} messages still queued after {elapsed:.0f} s")
    return backlog / elapsed


def run_publish_bench(backlog: int = 10_000, port: int | None = None) -> dict[str, object]:
    import tempfile

    from agent.localbroker import LocalBroker

    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, object] = {
            "backlog": backlog,
            **publish_cost_us(Path(tmp) / "cost.sqlite"),
        }
        if port:
            result["drain_msgs_per_s"] = round(
                drain_rate(Path(tmp) / "drain.sqlite", port, backlog)
            )
        else:
            with LocalBroker() as broker:
                result["broker"] = broker.kind
                result["drain_msgs_per_s"] = round(
                    drain_rate(Path(tmp) / "drain.sqlite", broker.port, backlog)
                )
    return result


def run_update_bench(
    model: str | Path, *, threads: int = 2, probation_s: float = 0.0
) -> dict[str, object]:
    """Publish ``model`` twice to a registry served over loopback HTTP, run the pipeline on the
    sample video with version 1, update to version 2 and time it until committed; report the
    largest gap between two processed frames while it ran."""
    import functools
    import http.server
    import shutil
    import tempfile

    from agent.config import RegistryConfig
    from agent.registry.publish import publish
    from agent.registry.signing import generate_key
    from agent.registry.updater import Job, Updater
    from agent.serving import ModelSlot

    model = Path(model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key, pub = generate_key(root / "bench.key")
        src = root / "src"
        src.mkdir()
        shutil.copy(model, src / model.name)
        card = model.with_name(model.stem + ".card.yaml")
        for version in ("1.0.0", "2.0.0"):
            publish(
                src / model.name,
                root / "registry",
                name="bench",
                version=version,
                key=key,
                card=card if card.is_file() else None,
            )

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(root / "registry"))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        config = RegistryConfig(
            url=f"http://127.0.0.1:{server.server_address[1]}/",
            trusted_keys=[pub],
            model="bench",
            probation_s=probation_s,
        )
        stamps: list[float] = []
        frames: list[np.ndarray] = []
        slot = ModelSlot(RuntimeSpec(threads=threads))
        updater = Updater(
            config,
            root / "state",
            slot,
            configured=(model, card if card.is_file() else None),
            recent_frames=lambda: list(frames),
            frame_stats=lambda: pipeline.stats.snapshot(),
        )
        updater.load_serving()

        def on_result(result: Result) -> None:
            stamps.append(time.monotonic())
            frames.append(result.frame.image)
            del frames[:-5]

        source = open_source(str(DEFAULT_VIDEO), fps=0, loop=True)
        pipeline = Pipeline(source, slot, on_result)  # runs whatever the slot serves
        source.start()
        pipeline.start()
        while len(stamps) < 5:
            time.sleep(0.05)
        steady = float(np.median(np.diff(stamps)))
        t0 = time.monotonic()
        updater._run(Job("bench", "2.0.0", "stable"))
        elapsed = time.monotonic() - t0
        during = [s for s in stamps if s >= t0]
        gaps = np.diff([t0, *during]) if during else np.array([elapsed])
        ok = updater.state.state == "idle"
        pipeline.stop()
        source.stop()
        server.shutdown()
        server.server_close()
        return {
            "model": str(model),
            "size_mb": round(model.stat().st_size / 1e6, 1),
            "committed": ok,
            "error": updater.state.error,
            "update_to_commit_s": round(elapsed, 2),
            "probation_s": probation_s,
            "frame_interval_ms": round(steady * 1e3, 1),
            "max_frame_gap_ms": round(float(gaps.max()) * 1e3, 1),
        }


def _cpu_while_running(
    detector: Detector, video: Path, seconds: float, fps: float, gate: MotionGate | None
) -> dict[str, float]:
    """This process's CPU seconds while a pipeline runs ``video`` (looped, at its own pace,
    capped at ``fps``) for ``seconds``, and what the pipeline did."""
    source = open_source(str(video), fps=fps, loop=True, realtime=True)
    pipeline = Pipeline(source, detector, lambda result: None, gate=gate)
    source.start()
    pipeline.start()
    time.sleep(1.0)  # opened and past the first frame: the same start for both runs
    cpu0 = time.process_time()
    frames0, inferences0 = pipeline.stats.frames, pipeline.stats.inferences
    time.sleep(seconds)
    cpu = time.process_time() - cpu0
    stats = pipeline.stats
    frames, inferences = stats.frames - frames0, stats.inferences - inferences0
    pipeline.stop()
    source.stop()
    return {"cpu_s": round(cpu, 2), "frames": frames, "inferences": inferences}


def run_static_bench(
    model: str | Path,
    *,
    source: str | None = None,
    seconds: float = 30.0,
    fps: float = 5.0,
    threads: int = 2,
    card: str | None = None,
    spec: RuntimeSpec | None = None,
) -> dict[str, object]:
    """A still scene (the first frame of ``source`` repeated) at an ``fps`` cap for ``seconds``
    with the motion gate off, then on (default settings: a model run every ``recheck_s``):
    the agent's CPU seconds for each, in the same run."""
    import tempfile

    video = source or str(DEFAULT_VIDEO)
    first = _read_frames(video, 1)
    if not first:
        raise SystemExit(f"bench: cannot read frames from {video}")
    spec = spec or RuntimeSpec(threads=threads)
    detector = spec.load(model, card=card)
    for _ in range(3):  # warm caches and allocator before timing
        detector.detect(first[0])
    settings = MotionSettings()
    with tempfile.TemporaryDirectory() as tmp:
        still = Path(tmp) / "still.mp4"
        h, w = first[0].shape[:2]
        writer = cv2.VideoWriter(str(still), cv2.VideoWriter.fourcc(*"mp4v"), 25.0, (w, h))
        for _ in range(250):  # 10 s, looped
            writer.write(first[0])
        writer.release()
        off = _cpu_while_running(detector, still, seconds, fps, None)
        on = _cpu_while_running(detector, still, seconds, fps, MotionGate(settings))
    detector.close()
    return {
        "model": str(model),
        **runtime_row(detector, spec),
        "source": f"{video} (first frame, still)",
        "seconds": seconds,
        "fps_cap": fps,
        "threads": threads,
        "recheck_s": settings.recheck_s,
        "gate_off_cpu_s": off["cpu_s"],
        "gate_off_inferences": off["inferences"],
        "gate_on_cpu_s": on["cpu_s"],
        "gate_on_inferences": on["inferences"],
        "gate_on_frames": on["frames"],
        "gate_on_vs_off_cpu": round(on["cpu_s"] / off["cpu_s"], 3) if off["cpu_s"] else 0.0,
    }
