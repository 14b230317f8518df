"""Boxes and labels drawn on a frame, for `detect --draw` and MQTT snapshots, and a grid of
frame fractions to read zone and mask coordinates from (`detect --draw --grid`)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from agent.detection.types import Detection


def annotate(image: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    canvas = image.copy()
    h, w = canvas.shape[:2]
    for d in detections:
        x1, y1 = int(d.box[0] * w), int(d.box[1] * h)
        x2, y2 = int(d.box[2] * w), int(d.box[3] * h)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 200, 0), 2)
        cv2.putText(
            canvas,
            f"{d.label} {d.score:.2f}",
            (x1, max(12, y1 - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (0, 200, 0),
            1,
            cv2.LINE_AA,
        )
    return canvas


def jpeg_within(image: np.ndarray, max_bytes: int) -> bytes:
    """JPEG of ``image``, with quality and then size lowered until it fits ``max_bytes``."""
    current = image
    while True:
        for quality in (85, 70, 50):
            ok, buf = cv2.imencode(".jpg", current, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(buf) <= max_bytes:
                return buf.tobytes()
        if min(current.shape[:2]) <= 32:
            raise ValueError(f"cannot fit a JPEG snapshot into {max_bytes} bytes")
        current = cv2.resize(current, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)


def draw_grid(image: np.ndarray, step: float = 0.1) -> np.ndarray:
    """A copy of ``image`` with lines every ``step`` of its width and height, labelled with
    their fraction (the coordinates of zones and masks)."""
    canvas = image.copy()
    h, w = canvas.shape[:2]
    count = round(1 / step)
    colour, font = (0, 255, 255), cv2.FONT_HERSHEY_SIMPLEX
    for i in range(1, count):
        f = i * step
        x, y = int(f * w), int(f * h)
        cv2.line(canvas, (x, 0), (x, h - 1), colour, 1)
        cv2.line(canvas, (0, y), (w - 1, y), colour, 1)
        cv2.putText(canvas, f"{f:.1f}", (x + 2, 12), font, 0.35, colour, 1)
        cv2.putText(canvas, f"{f:.1f}", (2, y - 2), font, 0.35, colour, 1)
    return canvas
