"""Home Assistant MQTT discovery: retained configs for a binary sensor and a count sensor per
watched label, fps and status sensors, one device, availability read from the retained
``B/status``: the detection entities are available while the agent is online and its camera
connected, the fps sensor while the agent is online."""

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


def discovery_messages(
    topics: Topics, discovery_prefix: str, labels: Sequence[str], model_name: str
) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for every entity of this device."""
    node = topics.device_id
    device = {
        "identifiers": [f"edge-agent-{node}"],
        "name": f"edge-agent {node}",
        "manufacturer": "edge-agent",
        "model": model_name,
        "sw_version": __version__,
    }
    availability = _availability(CAMERA_ONLINE, topics.status)
    entities: list[tuple[str, str, dict[str, object]]] = []
    slugs: set[str] = set()
    for label in dict.fromkeys(labels):  # each label once, in order
        slug = re.sub(r"[^a-z0-9]", "_", label.lower())
        if slug in slugs:  # "Person" and "person", "traffic light" and "traffic_light"
            slug = f"{slug}_{_short_hash(label)}"
        slugs.add(slug)
        count = _count_template(label)
        entities.append(
            (
                "binary_sensor",
                f"{slug}_detected",
                {
                    "name": f"{label} detected",
                    "state_topic": topics.detections,
                    "value_template": f"{{{{ 'ON' if ({count[3:-3]}) > 0 else 'OFF' }}}}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "occupancy",
                    **availability,
                },
            )
        )
        entities.append(
            (
                "sensor",
                f"{slug}_count",
                {
                    "name": f"{label} count",
                    "state_topic": topics.detections,
                    "value_template": count,
                    "state_class": "measurement",
                    "icon": "mdi:counter",
                    **availability,
                },
            )
        )
    entities.append(
        (
            "sensor",
            "fps",
            {
                "name": "inference fps",
                "state_topic": topics.metrics,
                "value_template": "{{ value_json.fps }}",
                "unit_of_measurement": "fps",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                # The agent's own figure: 0 while the camera is away, shown all the same.
                **_availability(AGENT_ONLINE, topics.status),
            },
        )
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
