"""The motion gate: a cheap per-camera change check on a small grey copy of each frame, so the
model runs only where something moves (and, in the pipeline, once every ``recheck_s``).

The background is a running average of the small frames (``cv2.accumulateWeighted``), which
adapts with a time constant of ``ADAPT_S`` seconds: a lighting change (a cloud, lights switched
on) stops counting as motion within about a second or two, and a change over most of the frame
re-seeds the background at once. Measured on bikes.mp4 this is cheaper than OpenCV's MOG2 and
KNN subtractors (figures in README "Motion")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

#: width of the grey copy the check runs on (height keeps the frame's aspect)
WIDTH = 160
#: seconds for the background to take up ~63% of a lasting change (lighting, a parked car)
ADAPT_S = 1.0
#: share of the unmasked frame changed at once that counts as a lighting change: the
#: background is re-seeded from this frame (the frame itself still counts as moving)
RESEED_SHARE = 0.6

_KERNEL = np.ones((3, 3), np.uint8)

Point = tuple[float, float]
Polygon = Sequence[Point]


@dataclass(frozen=True)
class MotionSettings:
    """What the gate needs of ``motion:`` (threshold in grey levels, min_area a share of the
    frame)."""

    enabled: bool = True
    threshold: int = 25
    min_area: float = 0.002
    recheck_s: float = 10.0


@dataclass(frozen=True)
class Motion:
    """The gate's verdict on one frame: moving or not, and where (a box in frame fractions,
    ``(x1, y1, x2, y2)``, around every changed region at least ``min_area`` large)."""

    moving: bool
    box: tuple[float, float, float, float] | None = None
    area: float = 0.0  # share of the frame in the counted regions

    def to_dict(self) -> dict[str, object]:
        return {
            "moving": self.moving,
            "box": [round(v, 4) for v in self.box] if self.box else None,
            "area": round(self.area, 4),
        }


class MotionGate:
    """One camera's gate: call :meth:`check` with each frame in order. Not thread-safe (one
    camera's prepare stage owns it); settings may be replaced between frames."""

    def __init__(self, settings: MotionSettings, masks: Sequence[Polygon] = ()) -> None:
        self.settings = settings
        self._polygons = [list(p) for p in masks]
        self._background: npt.NDArray[np.float32] | None = None
        self._keep: npt.NDArray[np.uint8] | None = None  # 255 where not masked
        self._last_t: float | None = None

    @property
    def masks(self) -> list[list[Point]]:
        return self._polygons

    @masks.setter
    def masks(self, polygons: Sequence[Polygon]) -> None:
        self._polygons = [list(p) for p in polygons]
        self._keep = None  # built again at the next frame's size

    def _small(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        h, w = image.shape[:2]
        size = (min(WIDTH, w), max(1, round(h * min(WIDTH, w) / w)))
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        return np.asarray(cv2.GaussianBlur(small, (3, 3), 0), dtype=np.uint8)

    def _keep_mask(self, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
        if self._keep is None or self._keep.shape != shape[:2]:
            h, w = shape[:2]
            keep = np.full((h, w), 255, np.uint8)
            for polygon in self._polygons:
                pts = np.array([[x * w, y * h] for x, y in polygon], np.float32)
                cv2.fillPoly(keep, [np.round(pts).astype(np.int32)], 0)
            self._keep = keep
        return self._keep

    def reset(self) -> None:
        """Forget the background (a new scene: the next frame seeds it)."""
        self._background = None
        self._last_t = None

    def check(self, image: npt.NDArray[np.uint8], t: float) -> Motion:
        """The verdict on ``image`` captured at ``t`` (seconds, any monotonic clock: the
        background adapts by elapsed time, not by frame count). The first frame seeds the
        background and is not moving."""
        small = self._small(image)
        keep = self._keep_mask(small.shape)
        if self._background is None or self._background.shape != small.shape:
            self._background = small.astype(np.float32)
            self._last_t = t
            return Motion(False)
        dt = min(max(t - (self._last_t if self._last_t is not None else t), 0.0), 10.0)
        self._last_t = t
        diff = cv2.absdiff(small, cv2.convertScaleAbs(self._background))
        _, over = cv2.threshold(diff, self.settings.threshold, 255, cv2.THRESH_BINARY)
        changed = np.asarray(cv2.bitwise_and(over, keep), dtype=np.uint8)
        # Adapt after the comparison: what changed is judged against the past background.
        alpha = 1.0 - math.exp(-dt / ADAPT_S)
        cv2.accumulateWeighted(small, self._background, alpha)
        unmasked = max(1, cv2.countNonZero(keep))
        if cv2.countNonZero(changed) > RESEED_SHARE * unmasked:
            self._background = small.astype(np.float32)
        return self._regions(changed)

    def _regions(self, changed: npt.NDArray[np.uint8]) -> Motion:
        h, w = changed.shape
        # Joins the parts of one moving thing (a body and its legs) into one region.
        changed = np.asarray(cv2.dilate(changed, _KERNEL), dtype=np.uint8)
        contours, _ = cv2.findContours(changed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        floor = self.settings.min_area * w * h
        x1, y1, x2, y2, area = w, h, 0, 0, 0.0
        for contour in contours:
            a = cv2.contourArea(contour)
            if a < floor:
                continue
            bx, by, bw, bh = cv2.boundingRect(contour)
            x1, y1 = min(x1, bx), min(y1, by)
            x2, y2 = max(x2, bx + bw), max(y2, by + bh)
            area += a
        if area == 0.0:
            return Motion(False)
        return Motion(True, (x1 / w, y1 / h, x2 / w, y2 / h), min(1.0, area / (w * h)))
