"""The MQTT topic tree of one device (DESIGN.md section 5)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# What cannot stand in one topic level: the separator, the wildcards, and what Home Assistant's
# valid_topic refuses (NUL and other control characters, Unicode non-characters).
_NOT_IN_A_LEVEL = re.compile(
    "[/+#\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff"
    + "".join(f"{chr(p)}{chr(p + 1)}" for p in range(0x1FFFE, 0x110000, 0x10000))
    + "]"
)


def topic_level(text: str) -> str:
    """A label (anything a model names) as one topic level: ``/``, ``+``, ``#`` and control
    characters become ``_`` ("traffic light" stays as it is)."""
    return _NOT_IN_A_LEVEL.sub("_", text) or "_"


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def detections(self) -> str:
        return f"{self.base}/detections"

    @property
    def model(self) -> str:
        return f"{self.base}/model"

    @property
    def metrics(self) -> str:
        return f"{self.base}/metrics"

    def camera(self, name: str) -> str:
        """``C = B/<camera>``: the topic base of one camera of a ``cameras:`` config (a lone
        ``source:`` keeps ``B``)."""
        return f"{self.base}/{name}"

    def camera_detections(self, name: str) -> str:
        return f"{self.camera(name)}/detections"

    def camera_base(self, camera: str | None) -> str:
        """``C``: ``B/<camera>``, or ``B`` itself for a lone ``source:`` (``camera`` None)."""
        return self.base if camera is None else self.camera(camera)

    def events(self, camera: str | None = None) -> str:
        """``C/events``: new / update / end of the camera's tracked objects."""
        return f"{self.camera_base(camera)}/events"

    def objects(self, label: str, camera: str | None = None) -> str:
        """``C/objects/<label>``: retained count of the label's tracked objects in view."""
        return f"{self.camera_base(camera)}/objects/{topic_level(label)}"

    def zone_objects(self, zone: str, label: str, camera: str | None = None) -> str:
        """``C/zones/<zone>/<label>``: retained count of them inside the zone."""
        return f"{self.camera_base(camera)}/zones/{topic_level(zone)}/{topic_level(label)}"

    def object_snapshot(self, label: str, camera: str | None = None) -> str:
        """``C/objects/<label>/snapshot``: retained JPEG of the latest event's best frame."""
        return f"{self.objects(label, camera)}/snapshot"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def reply(self, name: str) -> str:
        return f"{self.base}/cmd/{name}/reply"

    @property
    def broadcast_commands(self) -> str:
        return f"{self.prefix}/all/cmd/#"
