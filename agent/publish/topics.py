"""The MQTT topic tree of one device (DESIGN.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass


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

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def reply(self, name: str) -> str:
        return f"{self.base}/cmd/{name}/reply"

    @property
    def broadcast_commands(self) -> str:
        return f"{self.prefix}/all/cmd/#"
