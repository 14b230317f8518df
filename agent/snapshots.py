"""The ``snapshot`` command's side: keeps the latest processed frame and publishes it annotated,
as a JPEG within the configured size, on ``B/snapshot``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from agent.detection.draw import annotate, jpeg_within
from agent.errors import EdgeAgentError
from agent.pipeline import Result


class SnapshotError(EdgeAgentError):
    """No snapshot can be taken (yet)."""


class _Publish(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any: ...


class Snapshots:
    """The latest result, published on request."""

    def __init__(self, publisher: _Publish, topic: str, max_bytes: Callable[[], int]) -> None:
        self.publisher = publisher
        self.topic = topic
        self._max_bytes = max_bytes  # read at each snapshot: config/set may change it
        self._latest: Result | None = None

    def keep(self, result: Result) -> None:
        self._latest = result

    def take(self) -> dict[str, Any]:
        """Publish the latest frame with its boxes drawn; returns what was sent."""
        latest = self._latest
        if latest is None:
            raise SnapshotError("no frame has been processed yet")
        jpeg = jpeg_within(annotate(latest.frame.image, latest.detections), self._max_bytes())
        self.publisher.publish(self.topic, jpeg, qos=1)
        h, w = latest.frame.image.shape[:2]
        return {
            "topic": self.topic,
            "bytes": len(jpeg),
            "frame": {"id": latest.frame.id, "width": w, "height": h},
            "objects": len(latest.detections),
        }
