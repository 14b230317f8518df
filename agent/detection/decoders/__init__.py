"""One decoder per model family: pure functions from output arrays to candidate boxes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from agent.detection.card import ModelCard
from agent.detection.decoders.anchors import decode_anchors, generate_anchors
from agent.detection.decoders.ssd import decode_ssd
from agent.detection.decoders.yolo import decode_yolo
from agent.detection.types import Candidates

Decoder = Callable[[Sequence[np.ndarray], ModelCard, float, Sequence[str]], Candidates]


def _yolo(
    outputs: Sequence[np.ndarray], card: ModelCard, threshold: float, names: Sequence[str]
) -> Candidates:
    return decode_yolo(outputs, card, threshold)


DECODERS: dict[str, Decoder] = {"yolo": _yolo, "ssd": decode_ssd, "anchors": decode_anchors}

__all__ = ["DECODERS", "Decoder", "decode_anchors", "decode_ssd", "decode_yolo", "generate_anchors"]
