"""Frame -> detections loop: two stages so preprocessing of the next frame overlaps inference
of this one, per-stage timing; each frame runs with the model slot's detector of the moment, so a
model is swapped only between two frames."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.detection import Detection, Detector, DetectorSettings, StageTimes
from agent.detection.preprocess import Transform
from agent.serving import ModelSlot
from agent.sources import Frame, FrameSource

log = logging.getLogger("agent.pipeline")


@dataclass
class Result:
    """One processed frame."""

    frame: Frame
    detections: list[Detection]
    times: StageTimes
    model_name: str
    model_version: str
    done_ts: float


@dataclass
class _Prepared:
    frame: Frame
    tensor: np.ndarray
    transform: Transform
    detector: Detector
    preprocess_ms: float


class Offload(Protocol):
    """Runs a frame somewhere other than wholly here (split inference); returns the detections
    and the milliseconds of inference and decoding."""

    def run(
        self,
        detector: Detector,
        tensor: np.ndarray,
        transform: Transform,
        settings: DetectorSettings,
    ) -> tuple[list[Detection], float, float]: ...


class Stats:
    """Rolling figures for metrics and status: fps, latency percentiles, counters."""

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self._done: deque[float] = deque(maxlen=window)
        self._latency: deque[float] = deque(maxlen=window)
        self.frames = 0
        self.errors = 0
        self.heartbeat = time.monotonic()

    def record(self, latency_ms: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._done.append(now)
            self._latency.append(latency_ms)
            self.frames += 1
            self.heartbeat = now

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            done, lat = list(self._done), sorted(self._latency)
        fps = (
            (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else 0.0
        )

        def p(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0

        return {
            "fps": round(fps, 2),
            "latency_ms_p50": round(p(0.5), 2),
            "latency_ms_p95": round(p(0.95), 2),
            "frames": self.frames,
            "errors": self.errors,
        }


class Pipeline:
    """Runs the slot's detector on the newest frame of a source and hands each result on.

    Stage 1 (``prepare`` thread) takes the newest frame and preprocesses it; stage 2 (``infer``
    thread) runs the model, decodes and calls ``on_result``. onnxruntime and TFLite release the
    GIL while they run, so the stages overlap. Each stage hands over through a one-slot mailbox,
    so a slow model never builds a backlog of stale frames.
    """

    def __init__(
        self,
        source: FrameSource,
        model: ModelSlot | Detector,
        on_result: Callable[[Result], None],
        settings: DetectorSettings | None = None,
        offload: Offload | None = None,
    ) -> None:
        self.source = source
        self.offload = offload
        self.slot = model if isinstance(model, ModelSlot) else ModelSlot.holding(model)
        self.settings = settings or DetectorSettings()
        self.on_result = on_result
        self.stats = Stats()
        self._slot: _Prepared | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._prepare_done = False
        self._threads: list[threading.Thread] = []
        self.finished = threading.Event()
        self._infer_since: float | None = None

    @property
    def detector(self) -> Detector:
        """The detector the next frame runs with (the slot's)."""
        return self.slot.detector

    def stalled_for(self) -> float:
        """Seconds the current inference has been running (0 between frames)."""
        since = self._infer_since
        return time.monotonic() - since if since is not None else 0.0

    @property
    def alive(self) -> bool:
        """Both stages still run (or finished on purpose at the end of a finite source)."""
        return self.finished.is_set() or all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._prepare_loop, name="prepare", daemon=True),
            threading.Thread(target=self._infer_loop, name="infer", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _prepare_loop(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read(timeout=0.5)
                if frame is None:
                    if self.source.ended:
                        break
                    continue
                detector = self.slot.detector
                t0 = time.perf_counter()
                try:
                    tensor, transform = detector.preprocess(frame.image)
                except Exception:
                    self.stats.errors += 1
                    log.exception("preprocessing frame %s failed", frame.id)
                    continue
                item = _Prepared(
                    frame, tensor, transform, detector, (time.perf_counter() - t0) * 1e3
                )
                with self._cond:
                    # Lossless hand-over: wait for the infer stage to take the previous item.
                    # Frames are dropped upstream, in the source's newest-frame mailbox.
                    while self._slot is not None and not self._stop.is_set():
                        self._cond.wait(0.5)
                    self._slot = item
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._prepare_done = True
                self._cond.notify_all()

    def _infer_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._slot is None and not self._prepare_done and not self._stop.is_set():
                        self._cond.wait(0.5)
                    item, self._slot = self._slot, None
                    self._cond.notify_all()
                if item is None:
                    if self._prepare_done or self._stop.is_set():
                        return
                    continue
                with self.slot.use() as detector:  # not closed before this frame ends
                    self._process(item, detector)
        finally:
            self.finished.set()

    def _process(self, item: _Prepared, detector: Detector) -> None:
        times = StageTimes(preprocess=item.preprocess_ms)
        try:
            tensor, transform = item.tensor, item.transform
            if item.detector is not detector:  # swapped since this frame was prepared
                t0 = time.perf_counter()
                tensor, transform = detector.preprocess(item.frame.image)
                times.preprocess = (time.perf_counter() - t0) * 1e3
            self._infer_since = time.monotonic()
            if self.offload is None:
                detections, times.inference, times.decode = detector.run(
                    tensor, transform, self.settings
                )
            else:
                detections, times.inference, times.decode = self.offload.run(
                    detector, tensor, transform, self.settings
                )
            self._infer_since = None
        except Exception:
            self._infer_since = None
            # A model that fails on one frame must not take the agent down; the count shows in
            # status and metrics (and lets a later update roll back a bad model).
            self.stats.errors += 1
            log.exception("inference on frame %s failed", item.frame.id)
            return
        self.stats.record(times.total)
        result = Result(
            item.frame, detections, times, detector.card.name, detector.card.version, time.time()
        )
        try:
            self.on_result(result)
        except Exception:
            self.stats.errors += 1
            log.exception("handing on the result of frame %s failed", item.frame.id)
