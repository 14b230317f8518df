"""Class-aware non-maximum suppression, done by OpenCV."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from agent.detection.types import Candidates


def label_groups(labels: Sequence[str]) -> np.ndarray:
    """Class id -> the first class id with the same label: classes a card names alike (a fall
    detector's upright and fallen classes, both ``person``) are one class for suppression."""
    first: dict[str, int] = {}
    return np.asarray([first.setdefault(label, i) for i, label in enumerate(labels)], np.int64)


def nms(
    candidates: Candidates, iou_threshold: float, groups: np.ndarray | None = None
) -> Candidates:
    """Keep the best box of each overlapping group of the same class (of the same group, when
    ``groups`` maps class ids to groups: see ``label_groups``)."""
    if len(candidates) == 0:
        return candidates
    classes = candidates.class_ids.astype(np.int64)
    if groups is not None and len(groups):
        known = (classes >= 0) & (classes < len(groups))
        classes = np.where(known, groups[np.clip(classes, 0, len(groups) - 1)], classes)
    b = candidates.boxes
    # OpenCV wants x, y, w, h; the scale is irrelevant to IoU, so normalised boxes are fine.
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.astype(np.float64).tolist(),
        candidates.scores.astype(np.float64).tolist(),
        classes.astype(np.int32).tolist(),
        # The decoder already applied the score threshold (inclusive); OpenCV's is exclusive.
        0.0,
        iou_threshold,
    )
    index = np.asarray(keep, np.int64).reshape(-1)
    # Highest score first, so consumers can take the top-k.
    index = index[np.argsort(-candidates.scores[index], kind="stable")]
    return Candidates(b[index], candidates.scores[index], candidates.class_ids[index])
