"""Home Assistant MQTT discovery: retained configs for a binary sensor and a count sensor per
watched label (per camera and label with ``cameras:``), fps sensors (per camera) and a status
sensor, all under one device, availability read from the retained ``B/status``: the detection
entities are available while the agent is online and their camera connected, the fps sensors
while the agent is online."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from agent import __version__
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


def _label_entities(
    label: str, stem: str, name_prefix: str, state_topic: str, availability: dict[str, object]
) -> list[_Entity]:
    """The occupancy binary sensor and the count sensor of one label on one detections topic."""
    count = _count_template(label)
    return [
        (
            "binary_sensor",
            f"{stem}_detected",
            {
                "name": f"{name_prefix}{label} detected",
                "state_topic": state_topic,
                "value_template": f"{{{{ 'ON' if ({count[3:-3]}) > 0 else 'OFF' }}}}",
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
                "name": f"{name_prefix}{label} count",
                "state_topic": state_topic,
                "value_template": count,
                "state_class": "measurement",
                "icon": "mdi:counter",
                **availability,
            },
        ),
    ]


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


def _one_camera_entities(topics: Topics, labels: dict[str, str]) -> list[_Entity]:
    """A lone ``source:``: the device's own topics, ids without a camera (as before cameras)."""
    availability = _availability(CAMERA_ONLINE, topics.status)
    entities: list[_Entity] = []
    for label, slug in labels.items():
        entities += _label_entities(label, slug, "", topics.detections, availability)
    fps = "{{ value_json.fps }}"
    entities.append(_fps_entity("fps", "inference fps", topics.metrics, fps, topics.status))
    return entities


def _per_camera_entities(
    topics: Topics, labels: dict[str, str], cameras: Sequence[str]
) -> list[_Entity]:
    """``cameras:``: per camera its labels on ``B/<camera>/detections`` and its fps, names
    prefixed by the camera, object ids by its slug."""
    entities: list[_Entity] = []
    stems: set[str] = set()
    for camera, camera_slug in _distinct_slugs(cameras).items():
        availability = _availability(camera_online(camera), topics.status)
        for label, label_slug in labels.items():
            stem = f"{camera_slug}_{label_slug}"
            while stem in stems:  # camera "a" label "b_c" and camera "a_b" label "c"
                stem = f"{stem}_{_short_hash(camera + chr(0) + label)}"
            stems.add(stem)
            detections = topics.camera_detections(camera)
            entities += _label_entities(label, stem, f"{camera} ", detections, availability)
        fps = "{{ value_json.cameras[" + json.dumps(camera) + "].fps }}"
        entities.append(
            _fps_entity(
                f"{camera_slug}_fps", f"{camera} inference fps", topics.metrics, fps, topics.status
            )
        )
    return entities


def discovery_messages(
    topics: Topics,
    discovery_prefix: str,
    labels: Sequence[str],
    model_name: str,
    cameras: Sequence[str] | None = None,
) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for every entity of this device. ``cameras``: the names of a
    ``cameras:`` config; None for a lone ``source:``."""
    node = topics.device_id
    device = {
        "identifiers": [f"edge-agent-{node}"],
        "name": f"edge-agent {node}",
        "manufacturer": "edge-agent",
        "model": model_name,
        "sw_version": __version__,
    }
    label_slugs = _distinct_slugs(labels)
    entities = (
        _one_camera_entities(topics, label_slugs)
        if cameras is None
        else _per_camera_entities(topics, label_slugs, cameras)
    )
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
        topic = f"{discovery_prefix}/{component}/edge_agent_{_node_id(node)}/{object_id}/config"
        out.append((topic, json.dumps(config, separators=(",", ":")).encode()))
    return out
