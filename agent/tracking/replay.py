"""``edge-agent events --replay VIDEO``: the agent's whole path run offline on a recording (the
camera's fps cap, its motion gate, the model, filters, tracker, zones and events), with the
recording's own clock, so a user can tune thresholds, masks and zones on a file and see the
events the agent would have sent."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from agent.config import CameraConfig, Config
from agent.detection import DetectorSettings
from agent.errors import ConfigError, SourceError
from agent.motion import MotionGate, MotionSettings
from agent.serving import RuntimeSpec
from agent.tracking.camera_events import CameraEvents
from agent.tracking.events import EventMessage


@dataclass
class ReplaySummary:
    frames: int = 0  # frames taken at the camera's fps cap
    inferences: int = 0  # of them, the model ran on (the motion gate kept the rest)
    seconds: float = 0.0  # length of the recording replayed


def _camera(config: Config, name: str | None) -> tuple[str, CameraConfig]:
    cameras = config.camera_configs()
    if name is None:
        if len(cameras) > 1:
            raise ConfigError(
                f"the config has several cameras: give --camera, one of {', '.join(cameras)}"
            )
        name = next(iter(cameras))
    if name not in cameras:
        raise ConfigError(f"no camera {name!r} in the config; cameras: {', '.join(cameras)}")
    return name, cameras[name]


def replay(
    video: Path, config: Config, camera: str | None = None, summary: ReplaySummary | None = None
) -> Iterator[EventMessage]:
    """The event messages the agent would publish for ``video`` (in order), as the camera
    ``camera`` of ``config`` sees it; events still open at the end are ended there."""
    name, cam = _camera(config, camera)
    summary = summary if summary is not None else ReplaySummary()
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SourceError(f"not a video: cannot open {video}")
    rate = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
    step = 1.0 / cam.source.fps if cam.source.fps > 0 else 0.0
    c = config
    detector = RuntimeSpec.from_config(c.model, c.store.path).load(c.model.path, card=c.model.card)
    settings = DetectorSettings(
        c.detection.score_threshold, c.detection.iou_threshold, tuple(c.detection.labels)
    )
    gate = MotionGate(MotionSettings(**cam.motion.model_dump()), cam.masks)
    events = CameraEvents(name, cam, c.events, list(c.detection.labels or detector.card.labels))
    index, next_due, last_run, ts = 0, 0.0, -float("inf"), 0.0
    try:
        while True:
            ok, read = cap.read()
            if not ok:
                break
            image: npt.NDArray[np.uint8] = np.asarray(read, np.uint8)
            ts = index / rate  # the recording's clock, from 0
            index += 1
            if ts + 1e-9 < next_due:
                continue  # above the fps cap
            next_due = ts + step
            summary.frames += 1
            if cam.motion.enabled:
                motion = gate.check(image, ts)
                if not motion.moving and ts - last_run < cam.motion.recheck_s:
                    continue
            last_run = ts
            summary.inferences += 1
            detections, _ = detector.detect(image, settings)
            yield from events.process(detections, ts, image).messages
        yield from events.close(ts).messages
    finally:
        summary.seconds = index / rate
        cap.release()
        detector.close()
