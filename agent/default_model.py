"""Which person model the built-in defaults serve. scripts/setup measures the INT8 model it makes
against the fp32 one (``agent.compress.int8_default``) and records its choice in
``models/default-model.json``; the fp32 model is served when that file is absent, names fp32, or
names a model (or card) that is not there. Reading the file needs nothing but the standard
library: the daemon imports this."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DECISION_FILE = "default-model.json"
FP32_MODEL = "person-yolov8s.onnx"
INT8_MODEL = "person-yolov8s-int8.onnx"


def decision_path(assets: Path) -> Path:
    return assets / DECISION_FILE


def read_decision(assets: Path) -> dict[str, Any] | None:
    """The recorded choice, or None when there is none (or it cannot be read: said once)."""
    path = decision_path(assets)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read it (%s); serving %s", path, exc, FP32_MODEL)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        log.warning('%s: expected {"model": FILE, ...}; serving %s', path, FP32_MODEL)
        return None
    return data


def default_model(assets: Path) -> Path:
    """The model file the defaults serve: the one ``default-model.json`` chose, when it and its
    card are beside it; else the fp32 person model."""
    fp32 = assets / FP32_MODEL
    decision = read_decision(assets)
    if decision is None:
        return fp32
    name = str(decision["model"])
    chosen = assets / name
    if Path(name).name != name:
        log.warning(
            "%s: model %r is not a file name; serving %s", decision_path(assets), name, fp32.name
        )
        return fp32
    card = chosen.with_name(chosen.stem + ".card.yaml")
    if not chosen.is_file() or not card.is_file():
        missing = chosen if not chosen.is_file() else card
        log.warning(
            "%s chose %s, but %s is missing; serving %s (scripts/setup makes it again)",
            decision_path(assets),
            name,
            missing.name,
            fp32.name,
        )
        return fp32
    return chosen


def describe_default(assets: Path) -> str:
    """One line: the model the defaults serve, and why (the demo prints it)."""
    model = default_model(assets)
    decision = read_decision(assets)
    if decision is None:
        return f"{model} (fp32): no {DECISION_FILE}; scripts/setup makes the INT8 model"
    kind = "INT8" if model.name != FP32_MODEL else "fp32"
    chose = str(decision["model"])
    reason = decision.get("reason") if model.name == chose else f"{chose} is not there"
    return f"{model} ({kind}): {reason}"
