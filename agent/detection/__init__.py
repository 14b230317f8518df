"""Detection: model cards, preprocessing, per-family decoders, NMS and the Detector."""

from agent.detection.card import ModelCard, load_card, resolve_card
from agent.detection.detector import Detector, DetectorSettings, StageTimes
from agent.detection.types import Candidates, Detection

__all__ = [
    "Candidates",
    "Detection",
    "Detector",
    "DetectorSettings",
    "ModelCard",
    "StageTimes",
    "load_card",
    "resolve_card",
]
