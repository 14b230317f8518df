"""The ``snapshot`` command's side: keeps each camera's latest processed frame and publishes it
annotated, as a JPEG within the configured size, on the camera's ``C/snapshot`` (``B/snapshot``
for a lone source)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from agent.detection.draw import annotate, jpeg_within
from agent.errors import EdgeAgentError
from agent.pipeline import Result

if TYPE_CHECKING:
    from agent.cameras import Camera


class SnapshotError(EdgeAgentError):
    """No snapshot can be taken (yet)."""


class _Publish(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any: ...


class _Cameras(Protocol):
    def get(self, name: str | None) -> Camera: ...


class Snapshots:
    """Each camera's latest result, published on request."""

    def __init__(
        self, publisher: _Publish, cameras: _Cameras, max_bytes: Callable[[], int]
    ) -> None:
        self.publisher = publisher
        self.cameras = cameras
        self._max_bytes = max_bytes  # read at each snapshot: config/set may change it
        self._latest: dict[str, Result] = {}

    def keep(self, result: Result) -> None:
        self._latest[result.camera] = result

    def take(self, camera: str | None = None) -> dict[str, Any]:
        """Publish ``camera``'s latest frame (None: the only camera's) with its boxes drawn;
        returns what was sent. UnknownCameraError for a name the agent does not have."""
        cam = self.cameras.get(camera)
        latest = self._latest.get(cam.name)
        if latest is None:
            raise SnapshotError(f"no frame of camera {cam.name!r} has been processed yet")
        jpeg = jpeg_within(annotate(latest.frame.image, latest.detections), self._max_bytes())
        topic = cam.snapshot_topic
        self.publisher.publish(topic, jpeg, qos=1)
        h, w = latest.frame.image.shape[:2]
        return {
            "camera": cam.name,
            "topic": topic,
            "bytes": len(jpeg),
            "frame": {"id": latest.frame.id, "width": w, "height": h},
            "objects": len(latest.detections),
        }
