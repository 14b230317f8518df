"""The detection result type shared by decoders, the pipeline and the publisher."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One object; ``box`` is ``(x1, y1, x2, y2)`` normalised to 0..1 of the original frame."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(self.score, 4),
            "box": [round(v, 4) for v in self.box],
        }


@dataclass
class Candidates:
    """Decoder output before NMS: boxes ``[N, 4]`` as x1, y1, x2, y2 normalised to the model
    input (0..1, before undoing the letterbox), scores ``[N]``, class ids ``[N]``."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    @classmethod
    def empty(cls) -> Candidates:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, mask: np.ndarray) -> Candidates:
        return Candidates(self.boxes[mask], self.scores[mask], self.class_ids[mask])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0
