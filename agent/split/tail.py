"""The tail agent (``split.role: tail``): serves heads that send it a cut tensor.

It subscribes to ``B/split/request``; each request names the cut, the model digest, the head's
thresholds and the topic to reply to. The tail runs the model's remaining layers and its decoder
and NMS, and replies with the kept boxes (in model-input coordinates; the head maps them back to
its frame and publishes them through its own outbox, so its ``seq`` and delivery guarantees stay
whole). Its retained ``B/status`` (with the last will ``offline``) is what heads watch.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from collections import deque
from types import FrameType
from typing import Any

import numpy as np

from agent.config import Config
from agent.damaged import damaged_files
from agent.detection.detector import DetectorSettings, decode_candidates
from agent.errors import EXIT_CONFIG, EdgeAgentError, SplitError
from agent.health import Heartbeats, ProcessUsage, supervised
from agent.publish import MqttPublisher
from agent.service import Notifier, ServiceLoop
from agent.serving import RuntimeSpec
from agent.split.codec import decode, encode
from agent.split.parts import SplitModel

log = logging.getLogger("agent.split.tail")

REQUEST = "split/request"


class TailAgent:
    """Runs tails for heads; one worker thread, newest requests first when it falls behind."""

    def __init__(self, config: Config, backlog: int = 4) -> None:
        self.config = config
        c = config.model
        spec = RuntimeSpec.from_config(c, config.store.path)
        self.model = SplitModel(c.path, threads=c.threads, providers=c.providers or None, spec=spec)
        # The whole model, for heads that send their input (the "input" cut), and its card.
        self.detector = spec.load(c.path, card=c.card, warmup=False)
        self.card = self.detector.card
        self._names = self.model.output_names
        self.health = Heartbeats(stall_s=config.service.stall_s)
        self.publisher = MqttPublisher(
            config.mqtt, config.device_id, status_extra=self._status, health=self.health
        )
        self.topics = self.publisher.topics
        self.notifier = Notifier()
        # The same service loop as the camera agent: READY, STATUS, and watchdog pings only
        # while the worker beats (a tail run that hangs, or a crashed worker, stops them).
        self.service = ServiceLoop(
            self.notifier,
            self.health,
            self._status_line,
            on_change=lambda stuck: self.publisher.publish_status("online"),
        )
        self.usage = ProcessUsage()
        self._requests: queue.Queue[bytes] = queue.Queue(maxsize=backlog)
        self._stop = threading.Event()
        self._tail_ms: deque[float] = deque(maxlen=200)
        self.served = 0
        self.failed = 0
        self.dropped = 0
        self._heartbeat = self.health.register("tail")
        self._worker = supervised("tail", self._work, self._heartbeat)

    def _status(self) -> dict[str, object]:
        return {
            "model": {
                "name": self.card.name,
                "version": self.card.version,
                "sha256": self.model.sha256,
            },
            "split": {"role": "tail"},
            "stuck": self.service.stuck,
            "damaged": damaged_files(),
        }

    def _status_line(self) -> str:
        return (
            f"tail for {self.card.name} {self.card.version}, {self.served} served, "
            f"{self.failed} refused, mqtt "
            + ("connected" if self.publisher.connected.is_set() else "connecting")
        )

    def _on_request(self, topic: str, payload: bytes) -> None:
        try:
            self._requests.put_nowait(payload)
        except queue.Full:  # behind: the oldest request is the one most likely already late
            try:
                self._requests.get_nowait()
                self.dropped += 1
            except queue.Empty:
                pass
            self._requests.put_nowait(payload)

    def _work(self) -> None:
        while not self._stop.is_set():
            self._heartbeat.idle()  # waiting for a request is not a stall
            try:
                payload = self._requests.get(timeout=0.5)
            except queue.Empty:
                continue
            self._heartbeat.beat()  # from here one request runs: at most ``service.stall_s``
            self._serve(payload)

    def _serve(self, payload: bytes) -> None:
        try:
            meta, tensors = decode(payload)
        except SplitError as exc:
            self.failed += 1
            log.warning("malformed split request: %s", exc)
            return
        reply_to = meta.get("reply_to")
        if not isinstance(reply_to, str) or not reply_to or any(c in reply_to for c in "+#"):
            self.failed += 1
            log.warning("split request without a usable reply_to: %r", reply_to)
            return
        answer: dict[str, Any] = {"id": meta.get("id"), "ok": False}
        arrays: dict[str, np.ndarray] = {}
        try:
            arrays, tail_ms = self.run(meta, tensors)
            answer.update(ok=True, tail_ms=round(tail_ms, 3))
            self.served += 1
            self._tail_ms.append(tail_ms)
        except Exception as exc:  # bad fields, shapes or model: refuse it, keep serving
            self.failed += 1
            answer["error"] = str(exc) if isinstance(exc, EdgeAgentError) else repr(exc)
            log.warning("split request %s refused: %s", meta.get("id"), answer["error"])
        self.publisher.publish(reply_to, encode(answer, arrays, method="raw"), qos=0)

    def run(
        self, meta: dict[str, Any], tensors: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], float]:
        """The tail of the requested cut and the decoder: kept boxes, scores and class ids."""
        model = meta.get("model") or {}
        if model.get("sha256") != self.model.sha256:
            raise SplitError(
                f"model mismatch: the head runs {model.get('name')} {model.get('version')} "
                f"({str(model.get('sha256'))[:12]}), this tail has {self.card.name} "
                f"{self.card.version} ({self.model.sha256[:12]})"
            )
        cut = str(meta.get("cut"))
        t0 = time.perf_counter()
        if self.model.cut(cut).kind == "remote":
            outputs = dict(
                zip(
                    self._names,
                    self.detector.infer(tensors[self.model.input_names[0]]),
                    strict=True,
                )
            )
        else:
            _head, tail = self.model.parts(cut)
            outputs = tail.run(tensors)
        s = meta.get("settings") or {}
        settings = DetectorSettings(
            score_threshold=s.get("score"), iou_threshold=s.get("iou"), labels=s.get("labels", ())
        )
        kept = decode_candidates(
            [outputs[n] for n in self._names], self.card, self._names, settings
        )
        tail_ms = (time.perf_counter() - t0) * 1e3
        return {
            "boxes": kept.boxes.astype(np.float32).reshape(-1, 4),
            "scores": kept.scores.astype(np.float32),
            "class_ids": kept.class_ids.astype(np.int32),
        }, tail_ms

    def metrics(self) -> dict[str, Any]:
        lat = sorted(self._tail_ms)
        return {
            "ts": round(time.time(), 3),
            "split": {
                "role": "tail",
                "served": self.served,
                "failed": self.failed,
                "dropped": self.dropped,
                "tail_ms_p50": round(lat[len(lat) // 2], 2) if lat else 0.0,
                "cuts_loaded": self.model.loaded,
            },
            "rss_mb": self.usage.rss_mb(),
            "cpu_percent": self.usage.cpu_percent(),
            "uptime_s": self.usage.uptime_s(),
        }

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self.notifier.stopping()
        self._stop.set()

    def run_forever(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self.publisher.route(f"{self.topics.base}/{REQUEST}", self._on_request, qos=0)
        self.publisher.start()
        self._worker.start()
        log.info(
            "tail for %s %s ready on %s/%s",
            self.card.name,
            self.card.version,
            self.topics.base,
            REQUEST,
        )
        interval = self.config.publish.metrics_interval_s
        next_metrics = time.monotonic() + interval
        while True:
            now = time.monotonic()
            self.service.tick(now)
            if self._stop.wait(0.2):
                break
            if self.publisher.fatal:
                self.stop()
                return EXIT_CONFIG  # refused credentials: a restart cannot fix them
            if now >= next_metrics:
                next_metrics = now + interval
                self.publisher.publish(
                    self.topics.metrics, json.dumps(self.metrics()).encode(), qos=0
                )
        self.stop()
        return 0

    def stop(self) -> None:
        self._stop.set()
        self.publisher.close("stopped", timeout=2.0)
        self.detector.close()
        self.notifier.close()
        log.info("tail stopped after %d requests (%d refused)", self.served, self.failed)
