"""The config in force while running: the file's, with the persisted overlay, changed by
``config/set`` (validated as a whole, then saved in the overlay) and by SIGHUP; the parts that
follow a setting (pipeline thresholds, each camera's fps and motion gate, Home Assistant
discovery) subscribe to it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from agent.config import CameraConfig, Config
from agent.overlay import deep_merge, merged, read_overlay, write_overlay

log = logging.getLogger("agent.live_config")

# The sections that change while running (a source only its fps; with ``cameras:`` each
# camera's fps, motion and masks); anything else takes effect at the next restart.
LIVE_SECTIONS = ("detection", "source", "motion", "masks", "objects", "publish", "cameras")
RESTART_SECTIONS = (
    "device_id", "model", "mqtt", "store", "homeassistant", "split", "events", "web"
)


def _camera_live(cam: CameraConfig) -> dict[str, Any]:
    return {
        "source": {"fps": cam.source.fps},
        "motion": cam.motion.model_dump(),
        "masks": cam.masks,
        "objects": {label: o.model_dump() for label, o in cam.objects.items()},
    }


def live_settings(c: Config) -> dict[str, Any]:
    """The part of ``c`` that changes while running, as a patch."""
    out: dict[str, Any] = {
        "detection": c.detection.model_dump(),
        "publish": c.publish.model_dump(),
    }
    if c.single_camera:
        out.update(_camera_live(c.camera_configs()["main"]))
    else:
        out["cameras"] = {name: _camera_live(cam) for name, cam in c.cameras.items()}
    return out


def _fixed_part(c: Config) -> tuple[object, ...]:
    """What of the cameras only a restart changes: the names, all but fps of a source, the
    zones."""
    cameras = c.camera_configs()
    return tuple(
        (name, cam.source.model_dump(exclude={"fps"}), cam.model_dump()["zones"])
        for name, cam in cameras.items()
    )

# listener(new config, the patch that made it: {section: {key: value}})
ConfigListener = Callable[[Config, dict[str, Any]], None]


class LiveConfig:
    """Owns the running config; ``apply`` and ``reload`` change it and tell the listeners."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._listeners: list[ConfigListener] = []

    @property
    def config(self) -> Config:
        return self._config

    def subscribe(self, listener: ConfigListener) -> None:
        """``listener(config, patch)`` after every change (on the control thread)."""
        self._listeners.append(listener)

    def view(self) -> dict[str, Any]:
        """The settings that can change while running, as ``config/set`` reports them."""
        view = live_settings(self._config)
        for camera in [view, *view.get("cameras", {}).values()]:
            camera.pop("masks", None)  # long polygons; config/set does not change them
            camera.pop("objects", None)
        return view

    def apply(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Validate ``patch`` against the whole config (ConfigError, changing nothing), persist
        it in the overlay, apply it; returns the live settings."""
        new = merged(self._config, patch)
        overlay_path = self._config.overlay_path
        write_overlay(overlay_path, deep_merge(read_overlay(overlay_path), patch))
        self._set(new, patch)
        log.info("config changed over MQTT: %s", json.dumps(patch))
        return self.view()

    def reload(self, fresh: Config) -> list[str]:
        """Take the live sections of ``fresh`` (the re-read file with its overlay); returns the
        sections that differ but only take effect at the next restart."""
        restart_only = [
            name for name in RESTART_SECTIONS if getattr(fresh, name) != getattr(self._config, name)
        ]
        if _fixed_part(fresh) != _fixed_part(self._config):
            restart_only.append("cameras" if self._config.cameras or fresh.cameras else "source")
        live = live_settings(fresh)
        if fresh.single_camera != self._config.single_camera:
            for key in ("source", "motion", "masks", "objects", "cameras"):  # all of it waits
                live.pop(key, None)
        elif "cameras" in live:  # only the cameras running now; one added waits for the restart
            live["cameras"] = {
                name: cam for name, cam in live["cameras"].items() if name in self._config.cameras
            }
        self._set(merged(self._config, live), live)
        return restart_only

    def _set(self, new: Config, patch: dict[str, Any]) -> None:
        self._config = new
        for listener in list(self._listeners):
            listener(new, patch)
