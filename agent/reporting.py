"""What the agent says about itself, built from the model slot so that none of it can name a
stale model: the retained status's extra fields, systemd's STATUS= line, the retained ``B/model``
body and Home Assistant discovery (announced again when the model's name or labels change)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agent.publish.homeassistant import discovery_messages, is_own_config, own_configs_filter
from agent.publish.topics import Topics
from agent.serving import ModelSlot

if TYPE_CHECKING:
    from agent.cameras import Cameras
    from agent.config import Config
    from agent.registry.updater import UpdateState

log = logging.getLogger("agent.reporting")


# A camera's zones as announced: (zone, its labels) in order.
_ZoneLabels = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class _Announced:
    """What the discovery configs are made of: a change in any of it announces again."""

    model: str
    labels: tuple[str, ...]
    cameras: tuple[str, ...] | None  # None: a lone source:
    events: bool
    zones: tuple[tuple[str, _ZoneLabels], ...]  # per camera (a lone source's is "main")


class _Publish(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any: ...


def model_brief(slot: ModelSlot) -> dict[str, str] | None:
    """``{"name", "version"}`` of the model in service, None before one is loaded."""
    if not slot.loaded:
        return None
    info = slot.info
    return {"name": info.name, "version": info.version}


def status_extra(slot: ModelSlot, cameras: Cameras | None) -> dict[str, object]:
    """The fields the retained ``B/status`` carries besides its state: the model, and each
    camera's source (a lone source also under its old key ``source``)."""
    extra: dict[str, object] = {}
    model = model_brief(slot)
    if model is not None:
        extra["model"] = model
    if cameras is not None:
        states = cameras.status()
        if cameras.single:
            extra["source"] = next(iter(states.values()))
        extra["cameras"] = states
    return extra


def status_line(
    slot: ModelSlot,
    stats: dict[str, float] | None,
    cameras: Cameras | None,
    mqtt_connected: bool,
) -> str:
    """systemd's STATUS=: the model, frames and fps, cameras' problems, the MQTT state."""
    parts = []
    model = model_brief(slot)
    if model is not None:
        parts.append(f"model {model['name']} {model['version']}")
    if stats is not None:
        parts.append(f"{stats['frames']} frames, {stats['fps']} fps")
    for camera in cameras or ():
        s = camera.source.status
        if s.state != "connected":
            what = "source" if cameras is not None and cameras.single else f"camera {camera.name}"
            parts.append(f"{what} {s.state}" + (f": {s.last_error}" if s.last_error else ""))
    parts.append("mqtt " + ("connected" if mqtt_connected else "connecting"))
    return ", ".join(parts)


def model_message(
    slot: ModelSlot, update: UpdateState | None, extra: dict[str, Any] | None = None
) -> bytes:
    """The retained ``B/model`` body: the model in service, and the updater's state."""
    body: dict[str, Any] = slot.info.to_dict() if slot.loaded else {}
    if update is not None:
        body["update"] = {
            "state": update.state,
            "version": update.version,
            "error": update.error,
            **(extra or {}),
        }
        if update.history:
            body["last_update"] = update.history[-1]
    return json.dumps(body).encode()


class Discovery:
    """Home Assistant discovery for the model in service, the watched labels and the cameras."""

    def __init__(
        self, publisher: _Publish, topics: Topics, slot: ModelSlot, config: Callable[[], Config]
    ) -> None:
        self.publisher = publisher
        self.topics = topics
        self.slot = slot
        self._config = config  # the live config: labels can change over MQTT
        self.announced: _Announced | None = None
        self._configs: set[str] = set()  # the discovery topics announced last
        # Retained configs of this device the broker holds that were not announced by this run:
        # entities of a zone, a camera or a label removed from the config while the agent was
        # stopped. They are cleared once this run has announced what it wants.
        self._leftovers: set[str] = set()

    def subscription(self) -> str | None:
        """The topic filter of this device's retained configs (to find leftovers), or None when
        discovery is off."""
        ha = self._config().homeassistant
        if ha is None or not ha.enabled:
            return None
        return own_configs_filter(ha.discovery_prefix, self.topics.device_id)

    def seen(self, topic: str, payload: bytes) -> bool:
        """A message on ``subscription()``: a retained config this run did not announce is a
        leftover, removed as soon as this run's own are out. True if the topic was ours."""
        ha = self._config().homeassistant
        if ha is None or not is_own_config(topic, ha.discovery_prefix, self.topics.device_id):
            return False
        if not payload:  # removed (by us, or by hand)
            self._leftovers.discard(topic)
        elif topic not in self._configs:
            self._leftovers.add(topic)
            if self.announced is not None:  # this run's own are out: nothing else is wanted
                stale = sorted(self._leftovers)
                self._clear(stale)
                log.info("Home Assistant: removed %d entities of an earlier config", len(stale))
        return True

    def _clear(self, topics: Sequence[str]) -> None:
        # An empty retained config makes Home Assistant delete the entity and the broker forget it.
        for topic in topics:
            self.publisher.publish(topic, b"", qos=1, retain=True)
        self._leftovers.difference_update(topics)

    def wanted(self) -> _Announced | None:
        """The model's name, the labels, the cameras (None for a lone ``source:``), whether
        events are on and each camera's zones, to announce; None when discovery is off or no
        model serves."""
        c = self._config()
        ha = c.homeassistant
        if ha is None or not ha.enabled or not self.slot.loaded:
            return None
        info = self.slot.info
        labels: Sequence[str] = ha.labels or c.detection.labels or info.labels
        cameras = None if c.single_camera else tuple(c.camera_configs())
        zones = tuple(
            (name, tuple((zone, tuple(z.labels)) for zone, z in camera.zones.items()))
            for name, camera in c.camera_configs().items()
        )
        return _Announced(info.name, tuple(labels), cameras, c.events.enabled, zones)

    def publish(self, *, only_if_changed: bool = False) -> None:
        """Publish the retained configs (every connect, Home Assistant's restart), or only when
        the model's name, the labels, the cameras, their zones or whether events are on differ
        from what was announced last."""
        wanted = self.wanted()
        if wanted is None or (only_if_changed and wanted == self.announced):
            return
        ha = self._config().homeassistant
        assert ha is not None
        messages = discovery_messages(
            self.topics,
            ha.discovery_prefix,
            wanted.labels,
            wanted.model,
            wanted.cameras,
            events=wanted.events,
            zones={camera: dict(zones) for camera, zones in wanted.zones},
        )
        for topic, payload in messages:
            self.publisher.publish(topic, payload, qos=1, retain=True)
        # An entity announced before and not now (a zone or camera removed, events turned off),
        # or left on the broker by an earlier run's configuration: removed.
        wanted_topics = {topic for topic, _ in messages}
        gone = sorted((self._configs | self._leftovers) - wanted_topics)
        self._clear(gone)
        self._leftovers.clear()  # each one is now announced again or removed
        self._configs = wanted_topics
        self.announced = wanted
        zones = sum(len(z) for _, z in wanted.zones)
        log.info(
            "Home Assistant discovery published for %s%s%s (model %s, %s)%s",
            ", ".join(wanted.labels),
            f" on cameras {', '.join(wanted.cameras)}" if wanted.cameras is not None else "",
            f", {zones} zone{'s' * (zones != 1)}" if wanted.events and zones else "",
            wanted.model,
            "from events" if wanted.events else "from detections",
            f"; {len(gone)} entities removed" if gone else "",
        )
