"""Frame -> detections loop: two stages so preprocessing of the next frame overlaps inference
of this one, timed so the model always gets the newest frame; per-stage timing from capture on;
each frame runs with the model slot's detector of the moment, so a model is swapped only between
two frames (for every camera at once); a motion gate per camera keeps still frames from the
model; several cameras share the one model, taken in turn (``agent.scheduler``)."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.config import MAIN_CAMERA
from agent.detection import Detection, Detector, DetectorSettings, StageTimes
from agent.detection.preprocess import Transform
from agent.health import Heartbeat, supervised
from agent.motion import Motion, MotionGate
from agent.scheduler import Feed, RoundRobin
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
    #: milliseconds the frame waited between capture and the model: for the prepare stage,
    #: then, prepared, for the model to free up
    queued_ms: float = 0.0
    #: the motion gate's verdict on the frame (None: no gate); a still frame here is a recheck
    motion: Motion | None = None
    #: the camera the frame came from
    camera: str = MAIN_CAMERA

    def latency_ms(self) -> tuple[float, float, float]:
        """``(inference, total, queued)`` as the detections payload reports them; ``total`` runs
        from the frame's capture to now, so call it where the result is handed to MQTT."""
        total = (time.monotonic() - self.frame.mono) * 1e3
        return self.times.inference, max(total, self.times.total), self.queued_ms


@dataclass
class _Prepared:
    feed: Feed
    frame: Frame
    tensor: np.ndarray
    transform: Transform
    detector: Detector
    preprocess_ms: float
    started: float  # monotonic: preprocessing began
    ready: float  # monotonic: preprocessing ended
    motion: Motion | None = None


class _Durations:
    """The median of the last few durations of one stage, in seconds (0 before the first);
    worked out once per duration added, as it is read several times a frame."""

    def __init__(self, window: int = 9) -> None:
        self._last: deque[float] = deque(maxlen=window)
        self.median = 0.0

    def add(self, seconds: float) -> None:
        self._last.append(seconds)
        self.median = statistics.median(self._last)


class _Buffers:
    """The model input tensors the pipeline reuses: one for each frame in flight (being
    prepared, waiting for the model, in the model), so a frame's tensor (4.9 MB for a 640x640
    float input) is neither allocated nor faulted in afresh. A tensor comes back once nothing
    refers to it any more: the model has run on it, or a newer frame replaced it."""

    def __init__(self, keep: int = 3) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []
        self._shape: tuple[int, ...] = ()

    def take(self, detector: Detector) -> np.ndarray:
        shape = detector.preprocess.shape
        with self._lock:
            if shape != self._shape:  # another model: the old one's buffers are of no use
                self._free, self._shape = [], shape
            if self._free:
                return self._free.pop()
        return detector.preprocess.empty()

    def give(self, tensor: np.ndarray) -> None:
        with self._lock:
            if tensor.shape == self._shape and len(self._free) < self._keep:
                self._free.append(tensor)


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
        self.frames = 0  # frames taken: the model ran on them or the motion gate kept them
        self.inferences = 0  # frames the model ran on
        self.skipped_no_motion = 0  # frames the motion gate kept from the model
        self.errors = 0

    def record(self, latency_ms: float) -> None:
        """A frame the model ran on."""
        with self._lock:
            now = time.monotonic()
            self._done.append(now)
            self._latency.append(latency_ms)
            self.frames += 1
            self.inferences += 1

    def skipped(self) -> None:
        """A frame the motion gate kept from the model: counted in fps and frames, not in the
        latency (which is the model's path)."""
        with self._lock:
            now = time.monotonic()
            self._done.append(now)
            self.frames += 1
            self.skipped_no_motion += 1

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
            "inferences": self.inferences,
            "skipped_no_motion": self.skipped_no_motion,
            "errors": self.errors,
        }


class Pipeline:
    """Runs the slot's detector on the newest frame of a source and hands each result on.

    Stage 1 (``prepare`` thread) takes the newest frame and preprocesses it; stage 2 (``infer``
    thread) runs the model, decodes and calls ``on_result``. onnxruntime and TFLite release the
    GIL while they run, so the stages overlap. Each stage hands over through a one-slot mailbox,
    so a slow model never builds a backlog of stale frames.

    While the model is busy, stage 1 waits until the model is due to free up (the median of its
    last few frames) less the time preprocessing takes, and only then takes the newest frame: the
    model gets a frame captured just before it frees up, not one captured a whole inference
    earlier and kept waiting. A model that frees up sooner wakes stage 1 at once; one that is
    late gets each newer frame prepared in place of the waiting one (not from a lossless
    source, a file read as fast as it is taken, whose every frame is processed).

    With a motion ``gate``, stage 1 first asks it about each frame (on a small grey copy, far
    cheaper than preprocessing): a frame where nothing moves is counted and dropped, unless the
    model has not run for ``recheck_s`` (what arrived slowly or stands still is still seen).
    """

    def __init__(
        self,
        source: FrameSource | Sequence[Feed],
        model: ModelSlot | Detector,
        on_result: Callable[[Result], None],
        settings: DetectorSettings | None = None,
        offload: Offload | None = None,
        gate: MotionGate | None = None,
    ) -> None:
        if isinstance(source, FrameSource):
            feeds: Sequence[Feed] = [Feed(MAIN_CAMERA, source, gate)]
        else:
            if gate is not None:
                raise ValueError("with several cameras, each Feed has its own gate")
            feeds = source
        self.feeds = list(feeds)
        self.scheduler = RoundRobin(self.feeds)
        #: per camera: frames, inferences, frames kept from the model by motion, fps, latency
        self.camera_stats = {feed.name: Stats() for feed in self.feeds}
        self.offload = offload
        self.slot = model if isinstance(model, ModelSlot) else ModelSlot.holding(model)
        self.settings = settings or DetectorSettings()
        self.on_result = on_result
        #: called with (camera, frame) for each frame the motion gate keeps from the model (the
        #: local page's live view shows it with the latest boxes); must only keep a reference
        self.on_still: Callable[[str, Frame], None] | None = None
        self.stats = Stats()
        self._slot: _Prepared | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._prepare_done = False
        self._threads: list[threading.Thread] = []
        self._stages: list[Heartbeat] = []
        self.finished = threading.Event()
        self._infer_since: float | None = None
        # guarded by _cond: when the infer stage is due to be free again (None: it is waiting)
        self._busy_until: float | None = None
        self._taken = 0  # items the infer stage took
        self._cycle = _Durations()  # infer stage: take an item .. result handed on
        self._prep = _Durations()
        self._buffers = _Buffers()

    @property
    def source(self) -> FrameSource:
        """The first camera's source (the only one of a single-camera pipeline)."""
        return self.feeds[0].source

    @property
    def gate(self) -> MotionGate | None:
        """The first camera's motion gate (the only one of a single-camera pipeline)."""
        return self.feeds[0].gate

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
        """Both stages still run (or finished on purpose at the end of a finite source); false
        once a stage died on an exception."""
        if self.crashed is not None:
            return False
        return self.finished.is_set() or all(t.is_alive() for t in self._threads)

    @property
    def crashed(self) -> str | None:
        """Why a stage's thread died against its will (its traceback is logged), if one did:
        the pipeline then finishes, and it is not the end of a finite source."""
        return next((f"{h.name}: {h.dead}" for h in self._stages if h.dead is not None), None)

    def start(self) -> None:
        self._stages = [Heartbeat("prepare", None), Heartbeat("infer", None)]
        self._threads = [
            supervised("prepare", self._prepare_loop, self._stages[0]),
            supervised("infer", self._infer_loop, self._stages[1]),
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _lead(self) -> float:
        # twice the usual preprocessing: a frame a little early beats a model left waiting
        return 2 * self._prep.median + 0.002

    def _wait_for_the_model(self) -> int:
        """Return once a frame read now would be prepared about when the model frees up, or,
        while the model is late, at once (a newer frame replaces the waiting one). Returns the
        count of items the model took so far."""
        with self._cond:
            while not self._stop.is_set():
                due = self._busy_until
                if self._slot is None:
                    if due is None:
                        break
                    delay = due - self._lead() - time.monotonic()
                    if delay <= 0:
                        break
                    self._cond.wait(min(delay, 0.5))
                elif (
                    due is not None
                    and due - self._lead() <= time.monotonic()
                    and self._lossy
                    and self._replaceable
                ):
                    break  # a frame is ready but the model is late: prepare a newer one
                else:
                    self._cond.wait(0.5)
            return self._taken

    @property
    def _lossy(self) -> bool:
        return not self.scheduler.lossless

    @property
    def _replaceable(self) -> bool:
        # One camera: a frame waiting for a late model is replaced by a newer one. Several: it
        # waits, or its camera would lose its turn to the next one's frame.
        return len(self.feeds) == 1

    def _prepare_loop(self) -> None:
        try:
            while not self._stop.is_set():
                taken = self._wait_for_the_model()
                picked = self.scheduler.next(timeout=0.5)
                if picked is None:
                    if self.scheduler.ended:
                        break
                    continue
                feed, frame = picked
                stats = self.camera_stats[feed.name]
                motion = self._motion(feed, frame)
                still = motion is not None and not motion.moving
                if still and time.monotonic() - feed.last_to_model < self._recheck_s(feed):
                    stats.skipped()
                    self.stats.skipped()
                    if self.on_still is not None:
                        self.on_still(feed.name, frame)
                    continue
                detector = self.slot.detector
                started = time.monotonic()
                try:
                    tensor, transform = detector.preprocess(
                        frame.image, out=self._buffers.take(detector)
                    )
                except Exception:
                    stats.errors += 1
                    self.stats.errors += 1
                    log.exception("preprocessing frame %s of %s failed", frame.id, feed.name)
                    continue
                ready = time.monotonic()
                self._prep.add(ready - started)
                item = _Prepared(
                    feed,
                    frame,
                    tensor,
                    transform,
                    detector,
                    (ready - started) * 1e3,
                    started,
                    ready,
                    motion,
                )
                with self._cond:
                    if self._lossy:
                        if self._slot is None and self._taken != taken:
                            # The model took the frame this one was to replace and is busy
                            # with it: this one would wait a whole inference. The next one is
                            # read when the model is due to free up (this camera's turn kept).
                            self.scheduler.give_back(feed, frame)
                            self._buffers.give(tensor)
                            continue
                        # Replaces a frame the late model has not taken yet: newer is better.
                    else:
                        # Lossless hand-over: wait for the infer stage to take the previous
                        # item; a file's every frame is processed.
                        while self._slot is not None and not self._stop.is_set():
                            self._cond.wait(0.5)
                    if self._slot is not None:  # replaced before the model took it
                        self._buffers.give(self._slot.tensor)
                    self._slot = item
                    feed.last_to_model = ready
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._prepare_done = True
                self._cond.notify_all()

    @staticmethod
    def _recheck_s(feed: Feed) -> float:
        return feed.gate.settings.recheck_s if feed.gate is not None else 0.0

    @staticmethod
    def _motion(feed: Feed, frame: Frame) -> Motion | None:
        """The gate's verdict on ``frame``, or None when the camera has no gate or it is off."""
        gate = feed.gate
        if gate is None:
            return None
        if not gate.settings.enabled:
            gate.reset()  # switched on again later: it starts from the scene of then
            return None
        try:
            return gate.check(frame.image, frame.mono)
        except Exception:
            # A frame the gate cannot read goes to the model: better a run too many than a
            # person missed (and preprocessing reports what is wrong with it).
            log.exception("motion check of frame %s of %s failed", frame.id, feed.name)
            return None

    def _infer_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._busy_until = None
                    self._cond.notify_all()  # the prepare stage may go on at once
                    while self._slot is None and not self._prepare_done and not self._stop.is_set():
                        self._cond.wait(0.5)
                    item, self._slot = self._slot, None
                    taken = time.monotonic()
                    if item is not None:
                        self._taken += 1
                        self._busy_until = taken + self._cycle.median
                    self._cond.notify_all()
                if item is None:
                    if self._prepare_done or self._stop.is_set():
                        return
                    continue
                with self.slot.use() as detector:  # not closed before this frame ends
                    self._process(item, taken, detector)
                self._buffers.give(item.tensor)
                self._cycle.add(time.monotonic() - taken)
        finally:
            self.finished.set()

    def _process(self, item: _Prepared, taken: float, detector: Detector) -> None:
        times = StageTimes(preprocess=item.preprocess_ms)
        queued_ms = ((item.started - item.frame.mono) + (taken - item.ready)) * 1e3
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
            self.camera_stats[item.feed.name].errors += 1
            log.exception("inference on frame %s of %s failed", item.frame.id, item.feed.name)
            return
        self.stats.record(times.total)
        self.camera_stats[item.feed.name].record(times.total)
        result = Result(
            item.frame,
            detections,
            times,
            detector.card.name,
            detector.card.version,
            time.time(),
            max(0.0, queued_ms),
            item.motion,
            item.feed.name,
        )
        try:
            self.on_result(result)
        except Exception:
            self.stats.errors += 1
            log.exception("handing on the result of frame %s failed", item.frame.id)
