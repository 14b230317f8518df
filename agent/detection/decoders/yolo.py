"""Ultralytics YOLO outputs: ``[1, 4+nc, N]`` (v8/v11) or ``[1, N, 5+nc]`` (v5, with objectness).

Boxes are centre x, centre y, width, height in model-input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.detection.card import ModelCard
from agent.detection.types import Candidates
from agent.errors import DecodeError


def yolo_layout(shape: tuple[int, ...], num_classes: int, version: str = "auto") -> str:
    """Which YOLO output layout ``shape`` is: ``"v8"`` or ``"v5"``."""
    if len(shape) != 3 or shape[0] != 1:
        raise DecodeError(f"yolo output must be [1, C, N] or [1, N, C], got {list(shape)}")
    _, a, b = shape
    if version == "v8" or (version == "auto" and a == 4 + num_classes):
        if a != 4 + num_classes:
            raise DecodeError(f"yolo v8 output {list(shape)} does not fit {num_classes} classes")
        return "v8"
    if version == "v5" or (version == "auto" and b == 5 + num_classes):
        if b != 5 + num_classes:
            raise DecodeError(f"yolo v5 output {list(shape)} does not fit {num_classes} classes")
        return "v5"
    raise DecodeError(
        f"yolo output {list(shape)} fits neither [1, 4+{num_classes}, N] "
        f"nor [1, N, 5+{num_classes}]"
    )


def decode_yolo(
    outputs: Sequence[np.ndarray], card: ModelCard, score_threshold: float
) -> Candidates:
    if len(outputs) != 1:
        raise DecodeError(f"yolo models have one output, this one has {len(outputs)}")
    out = outputs[0]
    nc = len(card.labels)
    if yolo_layout(out.shape, nc, card.yolo_version) == "v8":
        # [4+nc, N]: each class's scores are one contiguous row. The best score of each box
        # first (a fast reduction), the threshold, then the best class of the few boxes left
        # (an argmax across rows is slow on all 8400).
        table = out[0]
        class_scores = table[4:]
        scores = class_scores[0] if nc == 1 else class_scores.max(axis=0)
        keep = np.flatnonzero(scores >= score_threshold)
        if not len(keep):
            return Candidates.empty()
        class_ids = class_scores[:, keep].argmax(axis=0)
        scores = scores[keep]
        xywh = table[:4, keep].T
    else:
        rows = out[0]  # [N, 5+nc]
        v5_scores = rows[:, 5:] * rows[:, 4:5]
        class_ids = v5_scores.argmax(axis=1)
        scores = v5_scores[np.arange(len(class_ids)), class_ids]
        keep = np.flatnonzero(scores >= score_threshold)
        if not len(keep):
            return Candidates.empty()
        class_ids, scores = class_ids[keep], scores[keep]
        xywh = rows[keep, :4]
    w, h = float(card.input.width), float(card.input.height)
    normalized = card.yolo_boxes == "normalized" or (
        card.yolo_boxes == "auto" and float(np.abs(xywh).max()) <= 1.5
    )
    if normalized:
        w = h = 1.0
    boxes = np.empty_like(xywh)
    boxes[:, 0] = (xywh[:, 0] - xywh[:, 2] / 2) / w
    boxes[:, 1] = (xywh[:, 1] - xywh[:, 3] / 2) / h
    boxes[:, 2] = (xywh[:, 0] + xywh[:, 2] / 2) / w
    boxes[:, 3] = (xywh[:, 1] + xywh[:, 3] / 2) / h
    return Candidates(
        boxes.astype(np.float32, copy=False),
        scores.astype(np.float32, copy=False),
        class_ids.astype(np.int64, copy=False),
    )
