"""Class-aware non-maximum suppression, done by OpenCV."""

from __future__ import annotations

import cv2
import numpy as np

from agent.detection.types import Candidates


def nms(candidates: Candidates, iou_threshold: float) -> Candidates:
    """Keep the best box of each overlapping group of the same class."""
    if len(candidates) == 0:
        return candidates
    b = candidates.boxes
    # OpenCV wants x, y, w, h; the scale is irrelevant to IoU, so normalised boxes are fine.
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.astype(np.float64).tolist(),
        candidates.scores.astype(np.float64).tolist(),
        candidates.class_ids.astype(np.int32).tolist(),
        # The decoder already applied the score threshold (inclusive); OpenCV's is exclusive.
        0.0,
        iou_threshold,
    )
    index = np.asarray(keep, np.int64).reshape(-1)
    # Highest score first, so consumers can take the top-k.
    index = index[np.argsort(-candidates.scores[index], kind="stable")]
    return Candidates(b[index], candidates.scores[index], candidates.class_ids[index])
