"""Wiring: builds the model slot, cameras, outbox, MQTT connection, pipeline, updater and
command handlers from the config, runs the control loop (commands, metrics, discovery), and stops
everything in reverse order."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.cameras import Cameras
from agent.commands import CommandProcessor, CommandTargets
from agent.config import Config, load_config
from agent.damaged import damaged_files
from agent.detection import DetectorSettings
from agent.errors import EXIT_CONFIG, EXIT_FAILURE, ConfigError
from agent.health import Heartbeats, ProcessUsage
from agent.live_config import LiveConfig
from agent.overlay import with_overlay
from agent.pipeline import Pipeline, Result
from agent.publish import MqttPublisher
from agent.publish.event_topics import EventPublisher
from agent.publish.outbox import Outbox
from agent.publish.payloads import detections_message
from agent.registry.trial_frames import RecentFrames
from agent.reporting import Discovery, model_brief, model_message, status_extra, status_line
from agent.service import Notifier, ServiceLoop
from agent.serving import ModelSlot, RuntimeSpec, ServingInfo
from agent.snapshots import Snapshots
from agent.sources import SourceStatus

if TYPE_CHECKING:
    from agent.registry.updater import Job, Updater, UpdateState
    from agent.split.head import SplitHead
    from agent.tracking.store import EventStore
    from agent.web.frames import LiveFrames
    from agent.web.metrics import PromMetrics
    from agent.web.server import WebServer

log = logging.getLogger("agent.app")


class Agent:
    """The daemon: its cameras, one model slot they share, one MQTT connection with its
    outbox."""

    def __init__(self, config: Config, config_path: str | Path | None = None) -> None:
        self.live = LiveConfig(with_overlay(config))
        self.live.subscribe(self._on_config_change)
        self.config_path = config_path
        self.notifier = Notifier()
        self._reload_requested = False
        self._next_metrics = 0.0
        self._stop = threading.Event()
        # The one owner of the model in service; every load uses the config's runtime options.
        self.slot = ModelSlot(RuntimeSpec.from_config(self.config.model, self.config.store.path))
        self.pipeline: Pipeline | None = None
        self.usage = ProcessUsage()
        # A heartbeat per thread; the service loop pings the watchdog only while all are well.
        self.health = Heartbeats(stall_s=self.config.service.stall_s)
        self.service = ServiceLoop(
            self.notifier,
            self.health,
            self._status_line,
            is_ready=self._is_ready,
            on_change=lambda stuck: self.publisher.publish_status("online"),
        )
        self.outbox = Outbox(self.config.outbox_path, self.config.mqtt.outbox.max_messages)
        self.publisher = MqttPublisher(
            self.config.mqtt,
            self.config.device_id,
            outbox=self.outbox,
            status_extra=self._status_extra,
            health=self.health,
        )
        self.topics = self.publisher.topics
        # Sources are opened here and started with the pipeline.
        self.cameras = Cameras(self.config, self.topics.base, on_status=self._on_source_status)
        self.snapshots = Snapshots(
            self.publisher, self.cameras, lambda: self.config.publish.snapshot_max_bytes
        )
        self.event_store: EventStore | None = None
        if self.config.events.enabled:
            from agent.tracking.store import EventStore  # the tracking stack, when on

            # Opened before the first status: a damaged store set aside shows in "damaged".
            self.event_store = EventStore(
                self.config.store.path,
                keep=self.config.events.keep,
                max_bytes=int(self.config.events.max_disk_mb * 2**20),
            )
        self.events = EventPublisher(
            self.publisher,
            self.topics,
            self.event_store,
            lambda: self.config.publish.snapshot_max_bytes,
        )
        self.discovery = Discovery(self.publisher, self.topics, self.slot, lambda: self.config)
        # Real frames for a new model's trial, scaled down; only where updates can come from.
        self._recent = (
            RecentFrames(self.config.registry.trial_frames) if self.config.registry else None
        )
        self.split: SplitHead | None = None
        if self.config.split.role == "head":
            # Imported here: only a split head needs onnx and the split machinery.
            from agent.split.head import SplitHead

            self.split = SplitHead(self.config.split, self.publisher, spec=self.slot.spec)
        self.updater: Updater | None = None
        if self.config.registry is not None:
            # Imported here: a device without a registry never loads the update machinery.
            from agent.registry.updater import Updater

            self.updater = Updater(
                self.config.registry,
                self.config.store.path,
                self.slot,
                configured=(self.config.model.path, self.config.model.card),
                watched_labels=lambda: self.config.detection.labels,
                recent_frames=self._recent.frames if self._recent else list,
                frame_stats=lambda: self.pipeline.stats.snapshot() if self.pipeline else {},
                on_change=self._on_update_change,
                on_done=self._on_update_done,
            )
        self.commands = CommandProcessor(
            CommandTargets(
                model=self.slot,
                usage=self.usage,
                settings=self.live,
                snapshots=self.snapshots,
                cameras=self.cameras,
                updates=self.updater,
            )
        )
        self.slot.subscribe(self._on_model_change)
        self.web: WebServer | None = None
        self.live_frames: LiveFrames | None = None
        self.prometheus: PromMetrics | None = None
        if self.config.web is not None:
            self._make_web()

    def _make_web(self) -> None:
        """The local page (imported here: a device without ``web:`` never loads it), bound now
        so a port in use stops the start before the model loads; it serves from ``start``."""
        from agent.config import web_token
        from agent.web.frames import LiveFrames
        from agent.web.metrics import PromMetrics
        from agent.web.routes import WebSources
        from agent.web.server import WebServer

        assert self.config.web is not None
        self.live_frames = LiveFrames(
            [camera.name for camera in self.cameras],
            lambda name: self.config.camera_configs().get(name),
        )
        self.prometheus = PromMetrics(self.metrics)
        sources = WebSources(
            status=lambda: json.loads(self.publisher.status_payload("online")),
            metrics=self.metrics,
            model=lambda: json.loads(
                model_message(self.slot, self.updater.state if self.updater else None)
            ),
            mqtt_connected=self.publisher.connected.is_set,
            frames=self.live_frames,
            events=self.event_store,
            prometheus=self.prometheus.exposition,
        )
        self.web = WebServer(self.config.web, sources, web_token(self.config.web))

    @property
    def config(self) -> Config:
        """The config in force (the file's, the overlay's and live changes)."""
        return self.live.config

    # --- status and results ---

    def _status_extra(self) -> dict[str, object]:
        extra = status_extra(self.slot, self.cameras)
        extra["stuck"] = self.service.stuck  # threads without a heartbeat (the watchdog stops)
        extra["damaged"] = damaged_files()  # state files set aside at start
        return extra

    def _on_source_status(self, status: SourceStatus) -> None:
        # Runs on the source's thread; paho's publish is thread-safe and does not block.
        if not self._stop.is_set():
            self.publisher.publish_status("online")

    def _on_result(self, result: Result) -> None:
        self.snapshots.keep(result)
        if self._recent is not None:
            self._recent.add(result.frame.image)
        camera = self.cameras.get(result.camera)
        if camera.events is not None:
            frame_events = camera.events.process(
                result.detections, result.frame.ts, result.frame.image
            )
            if frame_events:
                self.events.publish(camera.topic_name, frame_events)
        if self.live_frames is not None:  # references only: the web thread draws and encodes
            self.live_frames.keep(result, camera.events.tracks if camera.events else ())
        if self.prometheus is not None:
            self.prometheus.observe(result)
        if not camera.on_change.due(result, self.config.publish):
            return
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
                camera.name,
            )

        self.publisher.send(camera.detections_topic, build, qos=self.config.mqtt.qos)

    # --- live changes (config/set, SIGHUP, a model swap) ---

    def _settings(self) -> DetectorSettings:
        d = self.config.detection
        return DetectorSettings(d.score_threshold, d.iou_threshold, tuple(d.labels))

    def _on_config_change(self, config: Config, patch: dict[str, Any]) -> None:
        if self.pipeline is not None:
            self.pipeline.settings = self._settings()
        self.cameras.apply(config)  # fps caps and motion gates (between two frames)
        self._next_metrics = 0.0  # a new metrics period counts from now
        self.discovery.publish(only_if_changed=True)  # HA's entities follow labels and zones

    def _on_model_change(self, info: ServingInfo) -> None:
        """The slot serves another model (start, update, rollback; any thread): every reader
        of the model in service says so at once, and the next detections message of each
        camera names it (on_change)."""
        self.notifier.status(self._status_line())
        for camera in self.cameras:
            camera.on_change.reset()
        if not self.publisher.connected.is_set():
            return  # all of it is published on connect
        self.publisher.publish_status("online")
        self._publish_model()
        self.discovery.publish(only_if_changed=True)

    def _publish_model(self, update: dict[str, Any] | None = None) -> None:
        state = self.updater.state if self.updater is not None else None
        body = model_message(self.slot, state, update)
        self.publisher.publish(self.topics.model, body, qos=1, retain=True)

    def _on_update_change(self, state: UpdateState, extra: dict[str, Any]) -> None:
        # The model in service itself is reported by the slot's listener when it changes.
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

    # --- metrics and discovery ---

    def metrics(self) -> dict[str, Any]:
        assert self.pipeline is not None
        stats = self.pipeline.stats.snapshot()
        cameras = self.cameras.metrics(self.pipeline.camera_stats)
        return {
            **stats,  # all cameras together
            "ts": round(time.time(), 3),
            "model": model_brief(self.slot),
            "dropped_frames": sum(c["dropped"] for c in cameras.values()),
            **(
                {"source_state": next(iter(cameras.values()))["source_state"]}
                if self.cameras.single
                else {}
            ),
            "cameras": cameras,
            "outbox_depth": self.outbox.depth,
            "outbox_dropped": self.outbox.dropped,
            "reconnects": self.publisher.reconnects,
            "commands_rejected": self.commands.rejected,
            "events_sent": self.events.sent,
            "rss_mb": self.usage.rss_mb(),
            "cpu_percent": self.usage.cpu_percent(),
            "uptime_s": self.usage.uptime_s(),
            **({"split": self.split.metrics()} if self.split is not None else {}),
        }

    # --- lifecycle ---

    def start(self) -> None:
        c = self.config
        if self.updater is not None:
            # Recovers an interrupted update, imports the configured model into the store, and
            # serves the model last committed there (through the slot).
            self.updater.load_serving()
        else:
            self.slot.serve(self.slot.load(c.model.path, card=c.model.card), origin="config")
        for note in self.slot.detector.card.assumed:
            log.info("model card assumed: %s", note)
        if c.events.enabled:
            self.cameras.start_events(c.events, list(c.detection.labels or self.slot.info.labels))
        self.publisher.subscribe(f"{self.topics.base}/cmd/#")
        self.publisher.subscribe(f"{c.mqtt.topic_prefix}/all/cmd/#")
        if c.homeassistant is not None and c.homeassistant.enabled:
            self.publisher.subscribe(f"{c.homeassistant.discovery_prefix}/status")
        leftovers = self.discovery.subscription()
        if leftovers is not None:  # this device's retained configs: to clear the stale ones
            self.publisher.subscribe(leftovers)
        if self.outbox.depth:
            log.info(
                "outbox holds %d undelivered messages from before; sending them first",
                self.outbox.depth,
            )
        if self.split is not None:
            self.split.attach()
        self.publisher.start()
        self.pipeline = Pipeline(
            self.cameras.feeds(), self.slot, self._on_result, self._settings(), offload=self.split
        )
        for camera in self.cameras:
            name = "source" if self.cameras.single else f"source {camera.name}"
            self.health.watch(name, camera.source.stalled_for)
        if self.live_frames is not None:  # still frames too: the live view never freezes
            self.pipeline.on_still = self.live_frames.keep_still
        pipeline = self.pipeline
        self.health.watch("pipeline", pipeline.stalled_for, alive=lambda: pipeline.alive)
        self.cameras.start()
        self.pipeline.start()
        if self.updater is not None:
            self.updater.start(self.health.register("updater"))
        if self.web is not None:
            self.web.start(self.health.register("web"))

    def _close_events(self) -> None:
        """Every open event ends (a clean stop), every count goes to 0: queued like any other
        message, delivered before "stopped" as far as the flush time allows."""
        now = time.time()
        for camera in self.cameras:
            if camera.events is None:
                continue
            try:
                closed = camera.events.close(now)
                if closed:
                    self.events.publish(camera.topic_name, closed)
            except Exception as exc:  # the stop goes on: status, flush, model, all of it
                log.warning("camera %s: the end of its open events was not queued: %s",
                            camera.name, exc)
        if self.event_store is not None:
            self.event_store.close()

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
                restart_only = self.live.reload(fresh)
                log.info("SIGHUP: config reloaded from %s", self.config_path)
                if restart_only:
                    log.warning(
                        "SIGHUP: changes to %s take effect at the next restart",
                        ", ".join(restart_only),
                    )
        self.notifier.ready(self._status_line())

    def healthy(self) -> bool:
        """Fit for a watchdog ping: no thread stuck (an inference, a camera read, the outbox
        drainer... busy for longer than ``service.stall_s``) and none dead."""
        return not self.health.stuck()

    def _is_ready(self) -> bool:
        # The first frame is processed, or a camera is being retried: up and doing its job.
        assert self.pipeline is not None
        return self.pipeline.stats.frames > 0 or self.cameras.any_retrying()

    def _status_line(self) -> str:
        stats = self.pipeline.stats.snapshot() if self.pipeline is not None else None
        return status_line(self.slot, stats, self.cameras, self.publisher.connected.is_set())

    def _service_tick(self, now: float) -> None:
        """READY once up, then STATUS and watchdog pings while every heartbeat is well."""
        self.service.tick(now)

    def _handle_incoming(self, topic: str, payload: bytes) -> None:
        c = self.config
        if c.homeassistant is not None and topic == f"{c.homeassistant.discovery_prefix}/status":
            if payload.strip() == b"online":  # Home Assistant restarted: announce again
                self.discovery.publish()
            return
        if self.discovery.seen(topic, payload):
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
                self.discovery.publish()
                self._publish_model()
                self.events.republish()
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
        crashed = self.pipeline.crashed
        self.stop()
        if crashed is not None:
            # Not the end of a finite source: exit as a failure so the service manager restarts.
            log.error("the pipeline stopped on an error (%s): exiting for a restart", crashed)
            return EXIT_FAILURE
        return 0

    def stop(self) -> None:
        """Stop taking frames, deliver the queue (up to ``service.stop_flush_s``), say "stopped"."""
        self._stop.set()
        if self.web is not None:
            self.web.stop()  # first: nobody reads the parts that stop next
        if self.updater is not None:
            self.updater.stop()
        self.cameras.stop()
        if self.pipeline is not None:
            self.pipeline.stop()
        self._close_events()
        self.publisher.close("stopped", timeout=self.config.service.stop_flush_s)
        self.slot.close()  # the model in service now, whichever that is
        self.notifier.close()
        left = self.outbox.depth
        log.info(
            "stopped after %d frames%s",
            self.pipeline.stats.frames if self.pipeline else 0,
            f"; {left} messages stay in the outbox for the next start" if left else "",
        )
