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

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def reply(self, name: str) -> str:
        return f"{self.base}/cmd/{name}/reply"

    @property
    def broadcast_commands(self) -> str:
        return f"{self.prefix}/all/cmd/#"
