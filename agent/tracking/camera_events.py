"""The whole path from one camera's detections to its events: filters (masks, min_score, areas)
-> tracker -> zones and the event builder. One per camera; called with each model run's
detections (frames the motion gate keeps from the model never come here, so they age no track)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.config import CameraConfig, EventsConfig
from agent.detection import Detection
from agent.tracking.events import EventBuilder, FrameEvents
from agent.tracking.filters import ObjectFilters
from agent.tracking.tracker import Tracker, TrackerSettings
from agent.tracking.types import TrackedObject
from agent.tracking.zones import Zones


class CameraEvents:
    """Filters, tracker and event builder of one camera."""

    def __init__(
        self,
        camera: str,
        config: CameraConfig,
        events: EventsConfig,
        labels: Sequence[str] = (),
    ) -> None:
        self.camera = camera
        self.filters = ObjectFilters(config.masks, config.objects)
        self.tracker = Tracker(
            TrackerSettings(
                max_missed=events.max_missed,
                stationary_s=events.stationary_s,
                # read at each frame: the filters change with the live config
                threshold=lambda label: self.filters.settings(label).threshold,
            ),
            id_prefix=camera,
        )
        self.builder = EventBuilder(
            camera, Zones(config.zones), events.update_interval_s, labels=labels
        )
        #: the live tracks after the latest model run (the local page draws their ids)
        self.tracks: tuple[TrackedObject, ...] = ()

    def process(
        self, detections: Sequence[Detection], ts: float, image: npt.NDArray[np.uint8] | None
    ) -> FrameEvents:
        """One model run: what it changed in events, counts and best snapshots."""
        tracks = self.tracker.update(self.filters.apply(detections), ts)
        self.tracks = tuple(tracks.active)
        return self.builder.update(tracks, ts, image)

    def close(self, ts: float) -> FrameEvents:
        """The agent stops: every open event ends, every count goes to 0."""
        return self.builder.close(ts)

    def apply(self, config: CameraConfig) -> None:
        """The live config changed: masks and object filters from the next frame on."""
        self.filters = ObjectFilters(config.masks, config.objects)
