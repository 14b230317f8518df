"""Wiring: builds the source, detector, outbox, MQTT connection and pipeline from the config,
runs the control loop (commands, metrics, discovery), and stops everything in reverse order."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.commands import CommandError, CommandProcessor
from agent.config import Config, load_config
from agent.detection import Detector, DetectorSettings
from agent.detection.detector import file_sha256
from agent.detection.draw import annotate, jpeg_within
from agent.errors import ConfigError, EdgeAgentError
from agent.health import ProcessUsage
from agent.overlay import deep_merge, merged, read_overlay, with_overlay, write_overlay
from agent.pipeline import Pipeline, Result
from agent.publish import MqttPublisher
from agent.publish.homeassistant import discovery_messages
from agent.publish.outbox import Outbox
from agent.publish.payloads import detections_message
from agent.registry.trial_frames import RecentFrames
from agent.service import Notifier
from agent.sources import FrameSource, SourceStatus, open_source

if TYPE_CHECKING:
    from agent.registry.updater import Job, Updater, UpdateState
    from agent.split.head import SplitHead

log = logging.getLogger("agent.app")

EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus= keeps it from restart loops


class Agent:
    """The daemon: one source, one detector (swappable), one MQTT connection with its outbox."""

    def __init__(self, config: Config, config_path: str | Path | None = None) -> None:
        self.config = with_overlay(config)
        self.config_path = config_path
        self.notifier = Notifier()
        self._reload_requested = False
        self._ready = False
        self._next_ping = 0.0
        self._next_metrics = 0.0
        self._stop = threading.Event()
        self.detector: Detector | None = None
        self.source: FrameSource | None = None
        self.pipeline: Pipeline | None = None
        self.usage = ProcessUsage()
        self.commands = CommandProcessor(self)
        self._latest: Result | None = None
        self._last_signature: tuple[tuple[str, int], ...] | None = None
        self._last_publish = 0.0
        self.outbox = Outbox(self.config.outbox_path, self.config.mqtt.outbox.max_messages)
        self.publisher = MqttPublisher(
            self.config.mqtt,
            self.config.device_id,
            outbox=self.outbox,
            status_extra=self._status_extra,
        )
        self.topics = self.publisher.topics
        # Real frames for a new model's trial, scaled down; only where updates can come from.
        self._recent = (
            RecentFrames(self.config.registry.trial_frames) if self.config.registry else None
        )
        self.model_info: dict[str, Any] = {}
        self.split: SplitHead | None = None
        if self.config.split.role == "head":
            # Imported here: only a split head needs onnx and the split machinery.
            from agent.split.head import SplitHead

            self.split = SplitHead(
                self.config.split,
                self.publisher,
                threads=self.config.model.threads,
                providers=self.config.model.providers or None,
            )
        self.updater: Updater | None = None
        if self.config.registry is not None:
            # Imported here: a device without a registry never loads the update machinery.
            from agent.registry.updater import Updater

            self.updater = Updater(
                self.config.registry,
                self.config.store.path,
                threads=self.config.model.threads,
                on_change=self._on_update_change,
                on_done=self._on_update_done,
            )
            self.updater.recover()

    # --- status and results ---

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
        if not self._stop.is_set():
            self.publisher.publish_status("online")

    def _should_publish(self, result: Result) -> bool:
        publish = self.config.publish
        if publish.mode == "every_frame":
            return True
        signature = tuple(sorted(Counter(d.label for d in result.detections).items()))
        now = time.monotonic()
        if signature != self._last_signature or now - self._last_publish >= publish.heartbeat_s:
            self._last_signature = signature
            return True
        return False

    def _on_result(self, result: Result) -> None:
        self._latest = result
        if self._recent is not None:
            self._recent.add(result.frame.image)
        if not self._should_publish(result):
            return
        self._last_publish = time.monotonic()
        frame = result.frame
        h, w = frame.image.shape[:2]
        objects = [d.to_dict() for d in result.detections]

        def build(seq: int) -> bytes:
            return detections_message(
                seq,
                frame.id,
                w,
                h,
                frame.ts,
                (result.model_name, result.model_version),
                result.latency_ms(),  # measured now: the hand-off to MQTT
                objects,
            )

        self.publisher.send(self.topics.detections, build, qos=self.config.mqtt.qos)

    # --- command handlers' side (called on the control thread) ---

    def ping(self) -> dict[str, Any]:
        return {
            "agent_version": __version__,
            "uptime_s": self.usage.uptime_s(),
            "ts": round(time.time(), 3),
        }

    def _settings(self) -> DetectorSettings:
        d = self.config.detection
        return DetectorSettings(d.score_threshold, d.iou_threshold, tuple(d.labels))

    def apply_config_patch(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Validate ``patch`` against the whole config, apply it live, persist it."""
        new = merged(self.config, patch)  # raises ConfigError, changing nothing
        overlay = deep_merge(read_overlay(self.config.overlay_path), patch)
        write_overlay(self.config.overlay_path, overlay)
        self.config = new
        if self.pipeline is not None:
            self.pipeline.settings = self._settings()
        if self.source is not None and "source" in patch:
            self.source.set_fps(new.source.fps)
        self._last_signature = None
        self._next_metrics = 0.0  # a new metrics period counts from now
        if "detection" in patch and "labels" in patch["detection"]:
            self._discovery()  # Home Assistant's entities follow the watched labels
        log.info("config changed over MQTT: %s", json.dumps(patch))
        return {
            "detection": new.detection.model_dump(),
            "source": {"fps": new.source.fps},
            "publish": new.publish.model_dump(),
        }

    def snapshot(self) -> dict[str, Any]:
        latest = self._latest
        if latest is None:
            raise CommandError("no frame has been processed yet")
        jpeg = jpeg_within(
            annotate(latest.frame.image, latest.detections), self.config.publish.snapshot_max_bytes
        )
        topic = f"{self.topics.base}/snapshot"
        self.publisher.publish(topic, jpeg, qos=1)
        h, w = latest.frame.image.shape[:2]
        return {
            "topic": topic,
            "bytes": len(jpeg),
            "frame": {"id": latest.frame.id, "width": w, "height": h},
            "objects": len(latest.detections),
        }

    # --- models and updates ---

    def _load_detector(self) -> Detector:
        """The store's current model when there is one (it passed every check), else the
        configured model file."""
        c = self.config
        kwargs: dict[str, Any] = {
            "threads": c.model.threads,
            "runtime": c.model.runtime,
            "providers": c.model.providers or None,
            "delegate": c.model.delegate,
        }
        serving = self.updater.serving() if self.updater else None
        if serving is not None:
            model, card, _version = serving
            try:
                detector = Detector.load(model, card=card, **kwargs)
                self._set_model_info(detector, model, "store")
                return detector
            except EdgeAgentError as exc:
                log.error(
                    "store model %s cannot be loaded (%s): using %s", model, exc, c.model.path
                )
        detector = Detector.load(c.model.path, card=c.model.card, **kwargs)
        self._set_model_info(detector, c.model.path, "config")
        return detector

    def _set_model_info(self, detector: Detector, path: Path, origin: str) -> None:
        self.model_info = {
            "name": detector.card.name,
            "version": detector.card.version,
            "sha256": file_sha256(path),
            "format": path.suffix.lstrip("."),
            "family": detector.card.family,
            "from": origin,
            "since": round(time.time(), 3),
        }

    def _publish_model(self, update: dict[str, Any] | None = None) -> None:
        body = dict(self.model_info)
        if self.updater is not None:
            s = self.updater.state
            body["update"] = {
                "state": s.state,
                "version": s.version,
                "error": s.error,
                **(update or {}),
            }
            if s.history:
                body["last_update"] = s.history[-1]
        self.publisher.publish(self.topics.model, json.dumps(body).encode(), qos=1, retain=True)

    def _on_update_change(self, state: UpdateState, extra: dict[str, Any]) -> None:
        # The model in service can change at these steps: swap (probation), commit, rollback.
        origin = {
            "probation": "store (probation)",
            "committed": "store",
            "failed": self.model_info.get("from", "config"),
        }.get(state.state)
        if origin is not None and self.pipeline is not None:
            detector = self.pipeline.detector
            self._set_model_info(detector, Path(detector.runtime.path), origin)
        self._publish_model(extra)

    def _on_update_done(
        self, job: Job, ok: bool, result: dict[str, Any] | None, error: str | None
    ) -> None:
        if job.command_id is None:
            return
        reply = self.commands.complete(
            "model/update", job.command_id, ok=ok, result=result, error=error
        )
        self.publisher.publish(self.topics.reply("model/update"), reply, qos=1)

    def request_update(self, cmd: Any) -> None:
        if self.updater is None:
            raise CommandError("no registry is configured (config section 'registry')")
        name = cmd.name or self.config.registry.model if self.config.registry else cmd.name
        channel = cmd.channel or (
            self.config.registry.channel if self.config.registry else "stable"
        )
        from agent.registry.updater import Job

        self.updater.request(
            Job(name, cmd.version or "latest", channel, cmd.allow_downgrade, cmd.id)
        )

    def rollback_model(self) -> dict[str, Any]:
        """Back to the previous verified version, at once (it passed its checks before)."""
        if self.updater is None or self.pipeline is None or self.config.registry is None:
            raise CommandError("no registry is configured (config section 'registry')")
        store, name = self.updater.store, self.config.registry.model
        previous = store.previous(name)
        if previous is None:
            raise CommandError(f"no previous version of {name} to roll back to")
        folder = store.version_dir(name, previous)
        model = store.model_file(name, previous)
        detector = Detector.load(
            model, card=folder / "card.yaml", threads=self.config.model.threads
        )
        from_version = store.current(name)
        self.pipeline.swap(detector)
        store.rollback(name)
        self._set_model_info(detector, model, "store")
        self._publish_model({"rolled_back_from": from_version})
        log.warning("model %s rolled back from %s to %s", name, from_version, previous)
        return {"name": name, "version": previous, "rolled_back_from": from_version}

    # --- metrics and discovery ---

    def metrics(self) -> dict[str, Any]:
        assert self.pipeline is not None
        stats = self.pipeline.stats.snapshot()
        source = self.source.status if self.source is not None else None
        return {
            **stats,
            "ts": round(time.time(), 3),
            "dropped_frames": source.dropped if source else 0,
            "source_state": source.state if source else None,
            "outbox_depth": self.outbox.depth,
            "outbox_dropped": self.outbox.dropped,
            "reconnects": self.publisher.reconnects,
            "commands_rejected": self.commands.rejected,
            "rss_mb": self.usage.rss_mb(),
            "cpu_percent": self.usage.cpu_percent(),
            "uptime_s": self.usage.uptime_s(),
            **({"split": self.split.metrics()} if self.split is not None else {}),
        }

    def _discovery(self) -> None:
        ha = self.config.homeassistant
        if ha is None or not ha.enabled or self.detector is None:
            return
        labels = ha.labels or self.config.detection.labels or self.detector.card.labels
        for topic, payload in discovery_messages(
            self.topics, ha.discovery_prefix, labels, self.detector.card.name
        ):
            self.publisher.publish(topic, payload, qos=1, retain=True)
        log.info("Home Assistant discovery published for %s", ", ".join(labels))

    # --- lifecycle ---

    def start(self) -> None:
        c = self.config
        self.detector = self._load_detector()
        card = self.detector.card
        log.info(
            "model %s %s (%s) loaded from %s",
            card.name,
            card.version,
            card.family,
            self.detector.runtime.path,
        )
        for note in card.assumed:
            log.info("model card assumed: %s", note)
        self.publisher.subscribe(f"{self.topics.base}/cmd/#")
        self.publisher.subscribe(f"{c.mqtt.topic_prefix}/all/cmd/#")
        if c.homeassistant is not None and c.homeassistant.enabled:
            self.publisher.subscribe(f"{c.homeassistant.discovery_prefix}/status")
        if self.outbox.depth:
            log.info(
                "outbox holds %d undelivered messages from before; sending them first",
                self.outbox.depth,
            )
        if self.split is not None:
            self.split.attach()
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
        self.pipeline = Pipeline(
            self.source, self.detector, self._on_result, self._settings(), offload=self.split
        )
        self.source.start()
        self.pipeline.start()
        if self.updater is not None:
            self.updater.pipeline = self.pipeline
            self.updater.recent_frames = self._recent.frames if self._recent else list
            self.updater.start()

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self.notifier.stopping()
        self._stop.set()

    def _request_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True  # done on the control thread, not in the handler

    def reload(self) -> None:
        """SIGHUP: re-read the config file and apply what can change while running."""
        self.notifier.reloading()
        if self.config_path is None:
            log.info("SIGHUP: running on built-in defaults, nothing to reload")
        else:
            try:
                fresh = with_overlay(load_config(self.config_path))
            except ConfigError as exc:
                log.error(
                    "SIGHUP: the changed config is invalid, keeping the running one:\n%s", exc
                )
            else:
                live = {
                    "detection": fresh.detection.model_dump(),
                    "source": {"fps": fresh.source.fps},
                    "publish": fresh.publish.model_dump(),
                }
                restart_only = [
                    name
                    for name in ("device_id", "model", "mqtt", "store", "homeassistant", "split")
                    if getattr(fresh, name) != getattr(self.config, name)
                ]
                if fresh.source.model_dump(exclude={"fps"}) != self.config.source.model_dump(
                    exclude={"fps"}
                ):
                    restart_only.append("source")
                self.config = merged(self.config, live)
                if self.pipeline is not None:
                    self.pipeline.settings = self._settings()
                if self.source is not None:
                    self.source.set_fps(self.config.source.fps)
                self._last_signature = None
                log.info("SIGHUP: config reloaded from %s", self.config_path)
                if restart_only:
                    log.warning(
                        "SIGHUP: changes to %s take effect at the next restart",
                        ", ".join(restart_only),
                    )
        self.notifier.ready(self._status_line())

    def healthy(self) -> bool:
        """Fit for a watchdog ping: both pipeline stages alive, no inference and no camera read
        stuck for longer than ``service.stall_s``."""
        limit = self.config.service.stall_s
        if self.pipeline is None or not self.pipeline.alive or self.pipeline.stalled_for() > limit:
            return False
        return self.source is None or self.source.stalled_for() <= limit

    def _status_line(self) -> str:
        parts = []
        if self.detector is not None:
            parts.append(f"model {self.detector.card.name} {self.detector.card.version}")
        if self.pipeline is not None:
            stats = self.pipeline.stats.snapshot()
            parts.append(f"{stats['frames']} frames, {stats['fps']} fps")
        if self.source is not None and self.source.status.state != "connected":
            s = self.source.status
            parts.append(f"source {s.state}" + (f": {s.last_error}" if s.last_error else ""))
        parts.append("mqtt " + ("connected" if self.publisher.connected.is_set() else "connecting"))
        return ", ".join(parts)

    def _service_tick(self, now: float) -> None:
        """READY once the first frame is processed (or the camera is being retried: the agent is
        up and doing its job), then STATUS and watchdog pings while healthy."""
        assert self.pipeline is not None and self.source is not None
        if not self._ready and (
            self.pipeline.stats.frames > 0 or self.source.status.state == "retrying"
        ):
            self._ready = True
            self.notifier.ready(self._status_line())
            log.info("ready: %s", self._status_line())
        interval = self.notifier.watchdog_interval
        if interval is None or now < self._next_ping:
            return
        self._next_ping = now + interval
        if self.healthy():
            self.notifier.watchdog()
            self.notifier.status(self._status_line())
        else:
            log.error(
                "pipeline stalled (inference %.0f s, camera read %.0f s): no watchdog ping",
                self.pipeline.stalled_for(),
                self.source.stalled_for(),
            )

    def _handle_incoming(self, topic: str, payload: bytes) -> None:
        c = self.config
        if c.homeassistant is not None and topic == f"{c.homeassistant.discovery_prefix}/status":
            if payload.strip() == b"online":  # Home Assistant restarted: announce again
                self._discovery()
            return
        for prefix in (f"{self.topics.base}/cmd/", f"{c.mqtt.topic_prefix}/all/cmd/"):
            if topic.startswith(prefix):
                name = topic[len(prefix) :]
                if name.endswith("/reply") or name == "reply":
                    return  # our own replies (and other devices') come back on cmd/#
                name, reply = self.commands.handle(name, payload)
                if reply is not None:
                    self.publisher.publish(self.topics.reply(name), reply, qos=1)
                return

    def run(self) -> int:
        """Run until SIGTERM/SIGINT, a finite source is fully processed, or the broker refuses our
        credentials. Returns the process exit code."""
        if threading.current_thread() is threading.main_thread():  # else: embedded, e.g. tests
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
            signal.signal(signal.SIGHUP, self._request_reload)
        self.start()
        assert self.pipeline is not None
        was_connected = False
        self._next_metrics = time.monotonic() + self.config.publish.metrics_interval_s
        while not self._stop.is_set() and not self.pipeline.finished.is_set():
            if self.publisher.fatal:
                self.stop()
                return EXIT_CONFIG
            connected = self.publisher.connected.is_set()
            if connected and not was_connected:
                self._discovery()
                self._publish_model()
            was_connected = connected
            try:
                msg = self.publisher.incoming.get(timeout=0.2)
                self._handle_incoming(msg.topic, bytes(msg.payload))
            except Exception as exc:  # queue.Empty, or a bug: the control loop must go on
                if type(exc).__name__ != "Empty":
                    log.exception("handling an incoming message failed")
            now = time.monotonic()
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            self._service_tick(now)
            if now >= self._next_metrics:
                self._next_metrics = now + self.config.publish.metrics_interval_s
                self.publisher.publish(
                    self.topics.metrics, json.dumps(self.metrics()).encode(), qos=0
                )
        self.stop()
        return 0

    def stop(self) -> None:
        """Stop taking frames, deliver the queue (up to ``service.stop_flush_s``), say "stopped"."""
        self._stop.set()
        if self.updater is not None:
            self.updater.stop()
        if self.source is not None:
            self.source.stop()
        if self.pipeline is not None:
            self.pipeline.stop()
        self.publisher.close("stopped", timeout=self.config.service.stop_flush_s)
        if self.detector is not None:
            self.detector.close()
        self.notifier.close()
        left = self.outbox.depth
        log.info(
            "stopped after %d frames%s",
            self.pipeline.stats.frames if self.pipeline else 0,
            f"; {left} messages stay in the outbox for the next start" if left else "",
        )
