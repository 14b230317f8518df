"""Payload schemas of the messages the agent publishes; subscribers' scripts rely on these keys."""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent import __version__
from agent.config import MAIN_CAMERA


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrameInfo(_Payload):
    id: int
    width: int
    height: int


class ModelRef(_Payload):
    name: str
    version: str


class Latency(_Payload):
    """Milliseconds: ``inference`` the model's run; ``total`` from the frame's capture to its
    hand-off to MQTT (preprocessing, inference, decoding and every wait between them);
    ``queued`` the part of ``total`` the frame spent waiting for a stage to take it."""

    inference: float
    total: float
    queued: float


class ObjectPayload(_Payload):
    label: str
    class_id: int
    score: float = Field(ge=0, le=1)
    box: list[float] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in 0..1")


class DetectionsPayload(_Payload):
    seq: int
    camera: str
    ts: float
    frame: FrameInfo
    model: ModelRef
    latency_ms: Latency
    objects: list[ObjectPayload]


class StatusPayload(_Payload):
    model_config = ConfigDict(extra="allow")  # extended with source/model state; keys may grow
    state: Literal["online", "offline", "stopped"]
    agent_version: str
    ts: float


def status_message(state: str, **extra: object) -> bytes:
    body = {"state": state, "agent_version": __version__, "ts": round(time.time(), 3), **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def detections_message(
    seq: int,
    frame_id: int,
    width: int,
    height: int,
    ts: float,
    model: tuple[str, str],
    latency_ms: tuple[float, float] | tuple[float, float, float],
    objects: list[dict[str, object]],
    camera: str = MAIN_CAMERA,
) -> bytes:
    """``latency_ms``: ``(inference, total)`` or ``(inference, total, queued)``, as
    ``pipeline.Result.latency_ms()`` gives them; ``camera`` the camera's name (``main`` for a
    lone source)."""
    queued = latency_ms[2] if len(latency_ms) > 2 else 0.0
    body = {
        "seq": seq,
        "camera": camera,
        "ts": round(ts, 3),
        "frame": {"id": frame_id, "width": width, "height": height},
        "model": {"name": model[0], "version": model[1]},
        "latency_ms": {
            "inference": round(latency_ms[0], 2),
            "total": round(latency_ms[1], 2),
            "queued": round(queued, 2),
        },
        "objects": objects,
    }
    return json.dumps(body, separators=(",", ":")).encode()
