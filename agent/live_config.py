"""The config in force while running: the file's, with the persisted overlay, changed by
``config/set`` (validated as a whole, then saved in the overlay) and by SIGHUP; the parts that
follow a setting (pipeline thresholds, source fps, Home Assistant discovery) subscribe to it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from agent.config import Config
from agent.overlay import deep_merge, merged, read_overlay, write_overlay

log = logging.getLogger("agent.live_config")

# The sections that change while running; anything else takes effect at the next restart.
LIVE_SECTIONS = ("detection", "source", "publish")
RESTART_SECTIONS = ("device_id", "model", "mqtt", "store", "homeassistant", "split")

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
        c = self._config
        return {
            "detection": c.detection.model_dump(),
            "source": {"fps": c.source.fps},
            "publish": c.publish.model_dump(),
        }

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
        if fresh.source.model_dump(exclude={"fps"}) != self._config.source.model_dump(
            exclude={"fps"}
        ):
            restart_only.append("source")
        live = {
            "detection": fresh.detection.model_dump(),
            "source": {"fps": fresh.source.fps},
            "publish": fresh.publish.model_dump(),
        }
        self._set(merged(self._config, live), live)
        return restart_only

    def _set(self, new: Config, patch: dict[str, Any]) -> None:
        self._config = new
        for listener in list(self._listeners):
            listener(new, patch)
