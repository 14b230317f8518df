"""Home Assistant MQTT discovery: retained configs, all under one device, for a binary sensor
(occupancy) and a count sensor per watched label (per camera and label with ``cameras:``), fps
sensors (per camera) and a status sensor. With events (the default) the label sensors read the
retained counts ``C/objects/<label>``, each label has an image entity with the latest event's
snapshot ``C/objects/<label>/snapshot``, and each zone has the two sensors per label on
``C/zones/<zone>/<label>``; without events the label sensors count the per-frame detections.
Availability is read from the retained ``B/status``: the camera entities are available while the
agent is online and their camera connected, the fps sensors while the agent is online."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent import __version__
from agent.config import MAIN_CAMERA
from agent.publish.topics import Topics

# HA marks the entities unavailable for anything but "online" (also for our "stopped").
AGENT_ONLINE = "{{ 'online' if value_json.state == 'online' else 'offline' }}"
# A camera that is away (retrying, ended, not yet connected) has no detections to show: its
# entities are unavailable, not "clear". A status without a source (a split tail) is judged by
# the agent's state alone. One entry on one topic: Home Assistant keys availability entries by
# topic (mqtt/entity.py, _availability_setup_from_config), so two entries on B/status would
# leave only the last.
CAMERA_ONLINE = (
    "{{ 'online' if value_json.state == 'online' and (value_json.source is not defined "
    "or value_json.source.state == 'connected') else 'offline' }}"
)


def camera_online(camera: str) -> str:
    """The availability of one camera of a ``cameras:`` config, from the ``cameras`` map of
    ``B/status``: the agent online and that camera connected; a status that does not list the
    camera is no sign it is there."""
    cam = "value_json.cameras[" + json.dumps(camera) + "]"
    return (
        "{{ 'online' if value_json.state == 'online' and value_json.cameras is defined and "
        f"{cam} is defined and {cam}.state == 'connected' else 'offline' }}}}"
    )


def _count_template(label: str) -> str:
    return (
        "{{ value_json.objects | selectattr('label', 'equalto', "
        # ensure_ascii=False: Jinja reads "\\ud83d\\ude00" as two lone surrogates, not the emoji
        + json.dumps(label, ensure_ascii=False)
        + ") | list | length }}"
    )


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:6]


def _entity_slug(text: str) -> str:
    """The object part of an entity id as Home Assistant accepts it: ``[a-z0-9_]``, no leading,
    trailing or doubled ``_`` (HA slugifies the old ``object_id`` the same way)."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]", "_", text.lower())).strip("_") or "x"


def _availability(template: str, status_topic: str) -> dict[str, object]:
    return {
        "availability": [
            {
                "topic": status_topic,
                "value_template": template,
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ],
        "availability_mode": "all",
    }


def _node_id(device_id: str) -> str:
    """HA ignores discovery topics whose node_id or object_id is not ``[a-zA-Z0-9_-]+``
    (a host name such as ``cam.lan`` is a valid device_id); ids that had to change get a hash."""
    node = re.sub(r"[^a-zA-Z0-9_-]", "_", device_id)
    return node if node == device_id else f"{node}_{_short_hash(device_id)}"


def _node_level(device_id: str) -> str:
    return f"edge_agent_{_node_id(device_id)}"


def own_configs_filter(discovery_prefix: str, device_id: str) -> str:
    """The subscription that matches every discovery config this device may have announced
    (under any component and entity), and no other device's."""
    return f"{discovery_prefix}/+/{_node_level(device_id)}/+/config"


def is_own_config(topic: str, discovery_prefix: str, device_id: str) -> bool:
    """Whether ``topic`` is one of the topics ``own_configs_filter`` matches."""
    parts = topic.split("/")
    prefix = discovery_prefix.split("/")
    n = len(prefix)
    return (
        len(parts) == n + 4
        and parts[:n] == prefix
        and parts[n + 1] == _node_level(device_id)
        and parts[n + 3] == "config"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "_", text.lower())


def _distinct_slugs(names: Sequence[str]) -> dict[str, str]:
    """Each name once, in order, with a slug for object ids; look-alikes ("Person" and
    "person", "traffic light" and "traffic_light") get a hash."""
    out: dict[str, str] = {}
    for name in dict.fromkeys(names):
        slug = _slug(name)
        if slug in out.values():
            slug = f"{slug}_{_short_hash(name)}"
        out[name] = slug
    return out


_Entity = tuple[str, str, dict[str, object]]  # component, object id, config

#: a camera's zones: zone name -> the labels it counts (empty: every watched label)
Zones = Mapping[str, Sequence[str]]

# The retained counts C/objects/<label> and C/zones/<zone>/<label> are a plain integer.
_RETAINED_COUNT = "{{ value | int }}"
_RETAINED_OCCUPIED = "{{ 'ON' if (value | int) > 0 else 'OFF' }}"


def _occupancy_entities(
    name: str,
    stem: str,
    state_topic: str,
    count: str,
    occupied: str,
    availability: dict[str, object],
) -> list[_Entity]:
    """The occupancy binary sensor and the count sensor of ``name`` (a label, or a zone and a
    label) on one state topic, with the templates that read it."""
    return [
        (
            "binary_sensor",
            f"{stem}_detected",
            {
                "name": f"{name} detected",
                "state_topic": state_topic,
                "value_template": occupied,
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "occupancy",
                **availability,
            },
        ),
        (
            "sensor",
            f"{stem}_count",
            {
                "name": f"{name} count",
                "state_topic": state_topic,
                "value_template": count,
                "state_class": "measurement",
                "icon": "mdi:counter",
                **availability,
            },
        ),
    ]


def _snapshot_entity(
    name: str, stem: str, image_topic: str, availability: dict[str, object]
) -> _Entity:
    """Home Assistant's MQTT image (mqtt/image.py): the raw JPEG bytes on ``image_topic``."""
    return (
        "image",
        f"{stem}_snapshot",
        {
            "name": f"{name} snapshot",
            "image_topic": image_topic,
            "content_type": "image/jpeg",
            **availability,
        },
    )


def _fps_entity(object_id: str, name: str, state_topic: str, template: str, status: str) -> _Entity:
    return (
        "sensor",
        object_id,
        {
            "name": name,
            "state_topic": state_topic,
            "value_template": template,
            "unit_of_measurement": "fps",
            "state_class": "measurement",
            "entity_category": "diagnostic",
            # The agent's own figure: 0 while the camera is away, shown all the same.
            **_availability(AGENT_ONLINE, status),
        },
    )


class _Stems:
    """Object-id stems, each given once: one that is taken already ("a" + "b_c" and "a_b" +
    "c") gets a hash of what it names."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def take(self, stem: str, *names: str) -> str:
        while stem in self.taken:
            stem = f"{stem}_{_short_hash(chr(0).join(names))}"
        self.taken.add(stem)
        return stem


@dataclass(frozen=True)
class _Camera:
    """One camera's part of the entities: ``name`` None for a lone ``source:`` (the device's
    topics, names and ids without a camera)."""

    name: str | None
    slug: str
    zones: Zones

    @property
    def name_prefix(self) -> str:
        return "" if self.name is None else f"{self.name} "

    @property
    def id_prefix(self) -> str:
        return "" if self.name is None else f"{self.slug}_"


def _camera_entities(
    topics: Topics,
    labels: dict[str, str],
    camera: _Camera,
    stems: dict[str, str],
    zone_stems: _Stems,
    events: bool,
) -> list[_Entity]:
    """A camera's labels (and zones with events): from the retained counts and snapshots with
    events, else from the per-frame detections; available while its camera is there."""
    status = topics.status
    template = CAMERA_ONLINE if camera.name is None else camera_online(camera.name)
    availability = _availability(template, status)
    entities: list[_Entity] = []
    for label in labels:
        name = f"{camera.name_prefix}{label}"
        if events:
            counted = topics.objects(label, camera.name)
            entities += _occupancy_entities(
                name, stems[label], counted, _RETAINED_COUNT, _RETAINED_OCCUPIED, availability
            )
            snapshot = topics.object_snapshot(label, camera.name)
            entities.append(_snapshot_entity(name, stems[label], snapshot, availability))
        else:
            detections = (
                topics.detections if camera.name is None else topics.camera_detections(camera.name)
            )
            count = _count_template(label)
            occupied = f"{{{{ 'ON' if ({count[3:-3]}) > 0 else 'OFF' }}}}"
            entities += _occupancy_entities(
                name, stems[label], detections, count, occupied, availability
            )
    if not events:
        return entities
    for zone, zone_slug in _distinct_slugs(list(camera.zones)).items():
        for label, label_slug in _distinct_slugs(camera.zones[zone] or list(labels)).items():
            stem = zone_stems.take(
                f"{camera.id_prefix}{zone_slug}_{label_slug}", camera.name or "", zone, label
            )
            counted = topics.zone_objects(zone, label, camera.name)
            entities += _occupancy_entities(
                f"{camera.name_prefix}{zone} {label}",
                stem,
                counted,
                _RETAINED_COUNT,
                _RETAINED_OCCUPIED,
                availability,
            )
    return entities


def _all_entities(
    topics: Topics,
    labels: dict[str, str],
    cameras: Sequence[str] | None,
    zones: Mapping[str, Zones],
    events: bool,
) -> list[_Entity]:
    """Per camera its label (and zone) entities and its fps; a lone ``source:`` is one camera
    on the device's topics whose ids and names carry no camera."""
    if cameras is None:
        parts = [_Camera(None, "", zones.get(MAIN_CAMERA, {}))]
    else:
        parts = [_Camera(c, s, zones.get(c, {})) for c, s in _distinct_slugs(cameras).items()]
    # The labels' stems first, every camera's: a zone's entities never take the id a label's
    # entities had before zones (Home Assistant keeps an entity's history by its id).
    stems = _Stems()
    label_stems = [
        {
            label: stems.take(f"{part.id_prefix}{slug}", part.name or "", label)
            for label, slug in labels.items()
        }
        for part in parts
    ]
    entities: list[_Entity] = []
    for part, part_stems in zip(parts, label_stems, strict=True):
        entities += _camera_entities(topics, labels, part, part_stems, stems, events)
        if part.name is None:
            fps = "{{ value_json.fps }}"
            entities.append(_fps_entity("fps", "inference fps", topics.metrics, fps, topics.status))
        else:
            fps = "{{ value_json.cameras[" + json.dumps(part.name) + "].fps }}"
            entities.append(
                _fps_entity(
                    f"{part.slug}_fps",
                    f"{part.name} inference fps",
                    topics.metrics,
                    fps,
                    topics.status,
                )
            )
    return entities


def discovery_messages(
    topics: Topics,
    discovery_prefix: str,
    labels: Sequence[str],
    model_name: str,
    cameras: Sequence[str] | None = None,
    *,
    events: bool = True,
    zones: Mapping[str, Zones] | None = None,
) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for every entity of this device. ``cameras``: the names of a
    ``cameras:`` config; None for a lone ``source:``. ``events``: the label entities read the
    retained counts, with a snapshot image per label and the entities of ``zones`` (per camera
    name, a lone source's under ``main``); without, they count the per-frame detections."""
    node = topics.device_id
    device = {
        "identifiers": [f"edge-agent-{node}"],
        "name": f"edge-agent {node}",
        "manufacturer": "edge-agent",
        "model": model_name,
        "sw_version": __version__,
    }
    label_slugs = _distinct_slugs(labels)
    entities = _all_entities(topics, label_slugs, cameras, zones or {}, events)
    entities.append(
        (
            "sensor",
            "status",
            {
                # No availability here: this entity shows "offline" itself.
                "name": "agent status",
                "state_topic": topics.status,
                "value_template": "{{ value_json.state }}",
                "entity_category": "diagnostic",
                "icon": "mdi:cctv",
            },
        )
    )
    out = []
    entity_ids: set[str] = set()
    for component, object_id, config in entities:
        unique_id = f"edge_agent_{node}_{object_id}"
        config["unique_id"] = unique_id
        # default_entity_id (domain.object): HA 2025.10 deprecated object_id, 2026.4 ignores it.
        entity_id = f"{component}.{_entity_slug(unique_id)}"
        if entity_id in entity_ids:  # "a__b" and "a_b" slug alike
            entity_id = f"{entity_id}_{_short_hash(unique_id)}"
        entity_ids.add(entity_id)
        config["default_entity_id"] = entity_id
        config["device"] = device
        topic = f"{discovery_prefix}/{component}/{_node_level(node)}/{object_id}/config"
        out.append((topic, json.dumps(config, separators=(",", ":")).encode()))
    return out
