"""Each camera's latest frame for the local page: kept by reference on the pipeline's thread (no
copy, no drawing, no encoding there), with the boxes and tracks of the latest model run, drawn
and JPEG-encoded on a web thread only when someone asks, once per frame however many watch."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from agent.config import CameraConfig, Mask
from agent.detection.draw import annotate
from agent.pipeline import Result
from agent.sources import Frame
from agent.tracking.types import TrackedObject

JPEG_QUALITY = 80
_ZONE = (255, 160, 0)  # BGR: blue-ish, apart from the boxes' green
_CONFIRMED = (0, 220, 255)  # yellow: a track that is an event
_TENTATIVE = (200, 200, 200)


@dataclass(frozen=True)
class _Latest:
    result: Result
    tracks: tuple[TrackedObject, ...]
    seq: int


@dataclass(frozen=True)
class Encoded:
    """A drawn frame as JPEG; ``seq`` counts the camera's kept frames from 1."""

    seq: int
    jpeg: bytes
    ts: float


def short_id(track_id: str) -> str:
    """The random tail of a track (event) id, what the page shows: ``main-1764-a1b2c3`` ->
    ``a1b2c3``."""
    return track_id.rsplit("-", 1)[-1]


def _points(polygon: Mask, w: int, h: int) -> np.ndarray:
    return np.array([[round(x * w), round(y * h)] for x, y in polygon], np.int32)


def draw(
    image: np.ndarray,
    result: Result,
    tracks: Sequence[TrackedObject],
    camera: CameraConfig | None,
) -> np.ndarray:
    """The frame as the page shows it: masks shaded, zones outlined with their names, the
    detections' boxes and labels (``detect --draw``'s drawing) and each track's id."""
    h, w = image.shape[:2]
    canvas = annotate(image, result.detections)
    if camera is not None and camera.masks:
        shade = canvas.copy()
        for polygon in camera.masks:
            cv2.fillPoly(shade, [_points(polygon, w, h)], (40, 40, 40))
        canvas = cv2.addWeighted(shade, 0.6, canvas, 0.4, 0)
    if camera is not None:
        for name, zone in camera.zones.items():
            pts = _points(zone.polygon, w, h)
            cv2.polylines(canvas, [pts], True, _ZONE, 2, cv2.LINE_AA)
            x, y = pts.min(axis=0)
            cv2.putText(canvas, name, (int(x) + 4, int(y) + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        _ZONE, 1, cv2.LINE_AA)
    for track in tracks:
        if track.missed:  # not seen in this frame: its box would be a guess
            continue
        x1, _, _, y2 = track.box
        colour = _CONFIRMED if track.confirmed else _TENTATIVE
        cv2.putText(canvas, f"#{short_id(track.id)}", (int(x1 * w) + 2, int(y2 * h) - 4),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return canvas


class LiveFrames:
    """The latest result of every camera. ``keep`` (the pipeline's thread) stores references
    and wakes the watchers; it never waits for an encode, which runs under another lock."""

    def __init__(
        self, cameras: Sequence[str], geometry: Callable[[str], CameraConfig | None]
    ) -> None:
        self.cameras = tuple(cameras)
        self._geometry = geometry  # read at each drawing: zones and masks change live
        self._cond = threading.Condition()
        self._latest: dict[str, _Latest] = {}
        self._encode_lock = {name: threading.Lock() for name in self.cameras}
        self._encoded: dict[str, Encoded] = {}
        #: frames drawn and encoded so far (0 while nobody looks: the cost is the watchers')
        self.encodes = 0

    def keep(self, result: Result, tracks: Sequence[TrackedObject] = ()) -> None:
        with self._cond:
            before = self._latest.get(result.camera)
            seq = before.seq + 1 if before is not None else 1
            self._latest[result.camera] = _Latest(result, tuple(tracks), seq)
            self._cond.notify_all()

    def keep_still(self, camera: str, frame: Frame) -> None:
        """A frame the motion gate kept from the model: shown with the latest run's boxes
        (nothing moved, so they still stand), so the live view never freezes on a still
        scene."""
        with self._cond:
            before = self._latest.get(camera)
            if before is None:
                return  # no model run yet: nothing to draw on it
            result = dataclasses.replace(before.result, frame=frame)
            self._latest[camera] = _Latest(result, before.tracks, before.seq + 1)
            self._cond.notify_all()

    def seq(self, camera: str) -> int:
        latest = self._latest.get(camera)
        return latest.seq if latest is not None else 0

    def wait_newer(self, camera: str, seq: int, timeout: float) -> int:
        """The camera's frame count once it passes ``seq`` (or after ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq(camera) > seq, timeout)
        return self.seq(camera)

    def wake(self) -> None:
        """Every watcher looks up now (the server stops)."""
        with self._cond:
            self._cond.notify_all()

    def jpeg(self, camera: str) -> Encoded | None:
        """The camera's latest frame drawn and encoded (None before its first frame); encoded
        once per frame, whoever asks."""
        latest = self._latest.get(camera)
        if latest is None:
            return None
        with self._encode_lock[camera]:
            done = self._encoded.get(camera)
            if done is not None and done.seq >= latest.seq:
                return done
            latest = self._latest[camera]  # the newest now, after waiting for the lock
            image = draw(latest.result.frame.image, latest.result, latest.tracks,
                         self._geometry(camera))
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                return done
            done = Encoded(latest.seq, buf.tobytes(), latest.result.frame.ts)
            self._encoded[camera] = done
            self.encodes += 1
            return done
