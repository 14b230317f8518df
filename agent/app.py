"""Wiring: builds the source, detector, publisher and pipeline from the config, starts them in
order and stops them in reverse, publishing the final status."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from agent.config import Config
from agent.detection import Detector, DetectorSettings
from agent.pipeline import Pipeline, Result
from agent.publish import MqttPublisher
from agent.publish.payloads import detections_message
from agent.sources import FrameSource, SourceStatus, open_source

log = logging.getLogger("agent.app")


class Agent:
    """The daemon: one source, one detector (swappable), one MQTT connection."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop = threading.Event()
        self._seq = 0
        self.detector: Detector | None = None
        self.source: FrameSource | None = None
        self.pipeline: Pipeline | None = None
        self.publisher = MqttPublisher(
            config.mqtt, config.device_id, status_extra=self._status_extra
        )

    def _status_extra(self) -> dict[str, object]:
        extra: dict[str, object] = {}
        if self.detector is not None:
            extra["model"] = {
                "name": self.detector.card.name,
                "version": self.detector.card.version,
            }
        if self.source is not None:
            s = self.source.status
            extra["source"] = {"state": s.state, "failures": s.failures, "last_error": s.last_error}
        return extra

    def _on_source_status(self, status: SourceStatus) -> None:
        # Runs on the source's thread; paho's publish is thread-safe and does not block.
        if self._stop.is_set():
            return
        if status.state == "retrying":
            log.warning("source %s: %s (retry %d)", status.uri, status.last_error, status.failures)
        self.publisher.publish_status("online")

    def _on_result(self, result: Result) -> None:
        self._seq += 1
        frame = result.frame
        h, w = frame.image.shape[:2]
        payload = detections_message(
            self._seq,
            frame.id,
            w,
            h,
            frame.ts,
            (result.model_name, result.model_version),
            (result.times.inference, result.times.total),
            [d.to_dict() for d in result.detections],
        )
        self.publisher.publish(self.publisher.topics.detections, payload, qos=self.config.mqtt.qos)

    def start(self) -> None:
        c = self.config
        self.detector = Detector.load(
            c.model.path,
            card=c.model.card,
            threads=c.model.threads,
            runtime=c.model.runtime,
            providers=c.model.providers or None,
            delegate=c.model.delegate,
        )
        log.info(
            "model %s %s (%s, %s) loaded from %s",
            self.detector.card.name,
            self.detector.card.version,
            self.detector.card.family,
            c.model.path.suffix,
            c.model.path,
        )
        for note in self.detector.card.assumed:
            log.info("model card assumed: %s", note)
        self.publisher.start()
        self.source = open_source(
            c.source.uri,
            fps=c.source.fps,
            loop=c.source.loop,
            realtime=c.source.realtime,
            backoff_initial_s=c.source.backoff_initial_s,
            backoff_max_s=c.source.backoff_max_s,
            on_status=self._on_source_status,
        )
        settings = DetectorSettings(
            score_threshold=c.detection.score_threshold,
            iou_threshold=c.detection.iou_threshold,
            labels=tuple(c.detection.labels),
        )
        self.pipeline = Pipeline(self.source, self.detector, self._on_result, settings)
        self.source.start()
        self.pipeline.start()

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self._stop.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT, or until a finite source has been fully processed."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        assert self.pipeline is not None
        while not self._stop.is_set() and not self.pipeline.finished.is_set():
            self._stop.wait(0.5)
        self.stop()
        return 0

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()
        if self.pipeline is not None:
            self.pipeline.stop()
        self.publisher.close("stopped")
        if self.detector is not None:
            self.detector.close()
        log.info("stopped after %d frames", self.pipeline.stats.frames if self.pipeline else 0)
