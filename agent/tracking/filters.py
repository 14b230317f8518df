"""False-positive filters before tracking (Frigate's): masks, a per-label ``min_score`` and box
area limits, so a detection the user ruled out never starts a track."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import numpy.typing as npt

from agent.config import ObjectConfig
from agent.detection.types import Detection
from agent.tracking.types import anchor

Polygon = Sequence[Sequence[float]]  # [[x, y], ...], fractions of the frame
Contour = npt.NDArray[np.float32]

#: what a label not named in ``objects`` gets
DEFAULT_OBJECT = ObjectConfig()


def contour(polygon: Polygon) -> Contour:
    """A polygon in the shape ``cv2.pointPolygonTest`` takes, built once."""
    return np.asarray(polygon, dtype=np.float32).reshape(-1, 1, 2)


def inside(polygon: Contour, point: tuple[float, float]) -> bool:
    """The point is inside the polygon or on its edge."""
    return cv2.pointPolygonTest(polygon, point, False) >= 0


class ObjectFilters:
    """One camera's filters: ``apply`` keeps the detections that pass them all."""

    def __init__(self, masks: Sequence[Polygon], objects: Mapping[str, ObjectConfig]) -> None:
        self._masks = [contour(m) for m in masks]
        self._objects = dict(objects)

    def settings(self, label: str) -> ObjectConfig:
        """The label's filters and confirmation threshold (the defaults if it is not named)."""
        return self._objects.get(label, DEFAULT_OBJECT)

    def apply(self, detections: Sequence[Detection]) -> list[Detection]:
        return [d for d in detections if self.keeps(d)]

    def keeps(self, detection: Detection) -> bool:
        settings = self.settings(detection.label)
        if detection.score < settings.min_score:
            return False
        x1, y1, x2, y2 = detection.box
        area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        if not settings.min_area <= area <= settings.max_area:
            return False
        point = anchor(detection.box)
        return not any(inside(m, point) for m in self._masks)
