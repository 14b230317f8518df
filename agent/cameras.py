"""The agent's cameras: each one's source, motion gate, topic base and publishing filter, built
from the config (a lone ``source:`` is the camera ``main`` with the device's own topics), and
what status, metrics and live config changes need to know about them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.config import CameraConfig, Config, PublishConfig
from agent.errors import UnknownCameraError
from agent.motion import MotionGate, MotionSettings
from agent.pipeline import Result, Stats
from agent.scheduler import Feed
from agent.sources import FrameSource, open_source
from agent.sources.base import StatusCallback

if TYPE_CHECKING:
    from agent.config import EventsConfig
    from agent.tracking.camera_events import CameraEvents


@dataclass
class OnChange:
    """``publish.detections``: with ``on_change`` a camera's result is published when the labels
    or their counts change, or after ``heartbeat_s`` without a message; ``every_frame`` always;
    ``off`` never."""

    signature: tuple[tuple[str, int], ...] | None = None
    last: float = 0.0

    def due(self, result: Result, publish: PublishConfig) -> bool:
        now = time.monotonic()
        if publish.detections == "off":
            return False
        if publish.detections == "every_frame":
            self.last = now
            return True
        signature = tuple(sorted(Counter(d.label for d in result.detections).items()))
        if signature != self.signature or now - self.last >= publish.heartbeat_s:
            self.signature = signature
            self.last = now
            return True
        return False

    def reset(self) -> None:
        self.signature = None


@dataclass(eq=False)
class Camera:
    name: str
    #: ``C``: the base of this camera's topics (``B`` for a lone source, else ``B/<name>``)
    base: str
    source: FrameSource
    gate: MotionGate
    feed: Feed
    #: ``None`` for a lone source (``C = B``), else the name: what the topic helpers take
    topic_name: str | None = None
    on_change: OnChange = field(default_factory=OnChange)
    #: filters, tracker and event builder (None: events are off)
    events: CameraEvents | None = None

    @property
    def detections_topic(self) -> str:
        return f"{self.base}/detections"

    @property
    def snapshot_topic(self) -> str:
        return f"{self.base}/snapshot"

    def apply(self, config: CameraConfig) -> None:
        """Take the settings that change while running: the fps cap and the motion gate
        (the gate's between two frames of the prepare stage)."""
        self.source.set_fps(config.source.fps)
        self.gate.settings = MotionSettings(**config.motion.model_dump())
        self.gate.masks = config.masks
        self.on_change.reset()
        if self.events is not None:
            self.events.apply(config)


def _open(config: CameraConfig, on_status: StatusCallback | None) -> FrameSource:
    s = config.source
    return open_source(
        s.uri,
        fps=s.fps,
        loop=s.loop,
        realtime=s.realtime,
        backoff_initial_s=s.backoff_initial_s,
        backoff_max_s=s.backoff_max_s,
        on_status=on_status,
    )


class Cameras:
    """Every camera of the config, in its order."""

    def __init__(self, config: Config, base: str, on_status: StatusCallback | None = None) -> None:
        self.single = config.single_camera
        self._cameras: dict[str, Camera] = {}
        for name, camera_config in config.camera_configs().items():
            source = _open(camera_config, on_status)
            motion = MotionSettings(**camera_config.motion.model_dump())
            gate = MotionGate(motion, camera_config.masks)
            self._cameras[name] = Camera(
                name,
                base if self.single else f"{base}/{name}",
                source,
                gate,
                Feed(name, source, gate),
                None if self.single else name,
            )
        self._configs = config.camera_configs()

    @property
    def names(self) -> list[str]:
        return list(self._cameras)

    def __iter__(self) -> Iterator[Camera]:
        return iter(self._cameras.values())

    def __len__(self) -> int:
        return len(self._cameras)

    def get(self, name: str | None) -> Camera:
        """The camera ``name``; None means the only one (UnknownCameraError with several)."""
        if name is None and self.single:
            return next(iter(self._cameras.values()))
        if name is None or name not in self._cameras:
            raise UnknownCameraError(name, self.names)
        return self._cameras[name]

    def start_events(self, events: EventsConfig, labels: list[str]) -> None:
        """Give each camera its filters, tracker and event builder (``labels``: those that get
        a count of 0 at once, clearing what a previous run left retained)."""
        from agent.tracking.camera_events import CameraEvents  # the tracking stack, when on

        for camera in self:
            camera.events = CameraEvents(camera.name, self._configs[camera.name], events, labels)

    def feeds(self) -> list[Feed]:
        return [c.feed for c in self]

    def start(self) -> None:
        for camera in self:
            camera.source.start()

    def stop(self) -> None:
        for camera in self:
            camera.source.stop()

    def apply(self, config: Config) -> None:
        configs = config.camera_configs()
        self._configs.update({n: c for n, c in configs.items() if n in self._configs})
        for camera in self:
            if camera.name in configs:  # a camera added or removed takes a restart
                camera.apply(configs[camera.name])

    def any_retrying(self) -> bool:
        return any(c.source.status.state == "retrying" for c in self)

    def status(self) -> dict[str, dict[str, object]]:
        """``B/status``'s ``cameras`` map: each source's state, failures and last error."""
        out: dict[str, dict[str, object]] = {}
        for camera in self:
            s = camera.source.status
            out[camera.name] = {
                "state": s.state,
                "failures": s.failures,
                "last_error": s.last_error,
            }
        return out

    def metrics(self, stats: dict[str, Stats]) -> dict[str, dict[str, Any]]:
        """``B/metrics``'s ``cameras`` map: per camera fps, frames, inferences, frames kept
        from the model by motion, frames dropped by the source (a newer one replaced them)."""
        out: dict[str, dict[str, Any]] = {}
        for camera in self:
            s = camera.source.status
            figures: dict[str, Any] = dict(stats[camera.name].snapshot())
            out[camera.name] = {**figures, "dropped": s.dropped, "source_state": s.state}
        return out
