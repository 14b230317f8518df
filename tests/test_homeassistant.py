"""Home Assistant MQTT discovery: the configs hold what HA requires, their topics match HA's
discovery pattern, ids are unique, the templates render on real payloads (the retained counts of
events, or the per-frame detections with events off), zones and snapshot images; end to end,
retained configs at connect and again when Home Assistant announces itself online or the
cameras, zones or events change."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import __version__
from agent.config import Config
from agent.detection import Detector
from agent.publish.homeassistant import discovery_messages, is_own_config, own_configs_filter
from agent.publish.payloads import detections_message, status_message
from agent.publish.topics import Topics
from agent.reporting import Discovery
from agent.serving import ModelSlot, RuntimeSpec
from tests.conftest import MEDIA, Subscriber

# homeassistant/components/mqtt/discovery.py (TOPIC_MATCHER), anchored at our prefix.
HA_TOPIC = re.compile(
    r"^homeassistant/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?"
    r"(?P<object_id>[a-zA-Z0-9_-]+)/config$"
)
# homeassistant/core.py VALID_ENTITY_ID (what cv.entity_id accepts).
HA_ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")
COMMON = {"name", "state_topic", "unique_id", "device", "value_template", "default_entity_id"}
REQUIRED = {
    "binary_sensor": COMMON | {"payload_on", "payload_off", "availability"},
    "sensor": COMMON,
    # homeassistant/components/mqtt/image.py: image_topic (raw bytes) with its content_type
    "image": {"name", "image_topic", "content_type", "unique_id", "device", "default_entity_id"},
}


def read_topic(config: dict[str, Any]) -> str:
    """The topic an entity shows: an image's ``image_topic``, the others' ``state_topic``."""
    return config["image_topic"] if "image_topic" in config else config["state_topic"]


def valid_subscribe_topic(topic: str) -> bool:
    """homeassistant/components/mqtt/util.py valid_topic and valid_subscribe_topic."""
    raw = topic.encode("utf-8")
    if not raw or len(raw) > 65535:
        return False
    for char in topic:
        if char <= "\u001f" or "\u007f" <= char <= "\u009f":
            return False
        if "\ufdd0" <= char <= "\ufdef" or (ord(char) & 0xFFFF) in (0xFFFE, 0xFFFF):
            return False
    levels = topic.split("/")
    if any("+" in level and level != "+" for level in levels):
        return False
    return "#" not in topic or (topic.count("#") == 1 and levels[-1] == "#")


TOPICS = Topics("edge-agent", "cam-ha")


def configs(
    labels: list[str], topics: Topics = TOPICS, **options: Any
) -> dict[str, dict[str, Any]]:
    out = {}
    for topic, payload in discovery_messages(
        topics, "homeassistant", labels, "face-short-range", **options
    ):
        assert topic not in out, f"two configs on {topic}"
        out[topic] = json.loads(payload)
    return out


def by_object(found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {HA_TOPIC.match(t)["object_id"]: c for t, c in found.items()}  # type: ignore[index]


def test_discovery_configs_hold_what_home_assistant_requires():
    found = configs(["person", "car"])
    assert len(found) == 3 * 2 + 2  # binary, count sensor and snapshot per label, fps, status
    components = set()
    for topic, config in found.items():
        m = HA_TOPIC.match(topic)
        assert m, topic
        component = m["component"]
        components.add(component)
        assert m["node_id"] == "edge_agent_cam-ha"
        assert REQUIRED[component] <= set(config), (topic, REQUIRED[component] - set(config))
        device = config["device"]
        assert device["identifiers"] and all(isinstance(i, str) for i in device["identifiers"])
        assert device["name"] and device["manufacturer"] and device["sw_version"]
        assert read_topic(config).startswith(f"{TOPICS.base}/")
        for entry in config.get("availability", []):
            assert entry["topic"] == TOPICS.status
            assert entry["value_template"]
    assert components == {"binary_sensor", "sensor", "image"}
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    # object_id is deprecated since HA 2025.10 and ignored from 2026.4: default_entity_id, as
    # the entity ids HA made of the old object_id (edge_agent_cam-ha_... slugified).
    assert not any("object_id" in c for c in found.values())
    for topic, config in found.items():
        assert config["default_entity_id"].split(".")[0] == HA_TOPIC.match(topic)["component"]  # type: ignore[index]
        assert HA_ENTITY_ID.match(config["default_entity_id"]), config["default_entity_id"]
    assert by_object(found)["person_detected"]["default_entity_id"] == (
        "binary_sensor.edge_agent_cam_ha_person_detected"
    )
    # One device for all entities.
    assert len({json.dumps(c["device"], sort_keys=True) for c in found.values()}) == 1

    entities = by_object(found)
    person = entities["person_detected"]
    assert (person["payload_on"], person["payload_off"]) == ("ON", "OFF")
    assert person["state_topic"] == "edge-agent/cam-ha/objects/person"
    assert entities["car_count"]["state_topic"] == "edge-agent/cam-ha/objects/car"
    assert entities["car_snapshot"]["image_topic"] == "edge-agent/cam-ha/objects/car/snapshot"
    assert entities["fps"]["state_topic"] == TOPICS.metrics
    assert entities["status"]["state_topic"] == TOPICS.status
    assert "availability" not in entities["status"]  # it shows "offline" itself


# Device ids may hold anything but / + # (a host name such as "cam.lan"); labels anything at all.
device_ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/+#", exclude_categories=("Cs",)),
    min_size=1,
    max_size=20,
)
labels = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)


@settings(max_examples=300, deadline=None, database=None)
@given(device_id=device_ids, label_list=st.lists(labels, max_size=8))
def test_topics_match_home_assistants_pattern_and_ids_are_unique(
    device_id: str, label_list: list[str]
):
    found = configs(label_list, Topics("edge-agent", device_id))
    for topic, config in found.items():
        assert HA_TOPIC.match(topic), topic
        assert read_topic(config).startswith(f"edge-agent/{device_id}/")
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    entity_ids = [c["default_entity_id"] for c in found.values()]
    assert len(set(entity_ids)) == len(entity_ids)
    assert all(HA_ENTITY_ID.match(e) for e in entity_ids), entity_ids
    assert len(found) == 3 * len(set(label_list)) + 2


@pytest.mark.parametrize("prefix", ["homeassistant", "site/ha"])
def test_own_configs_are_every_config_of_this_device_and_no_other(prefix: str):
    mine = [t for t, _ in discovery_messages(Topics("edge-agent", "cam.lan"), prefix, ["person"],
                                             "m", ["door"], zones={"door": {"path": []}})]  # fmt: skip
    assert own_configs_filter(prefix, "cam.lan").count("+") == 2
    assert mine and all(is_own_config(t, prefix, "cam.lan") for t in mine)
    other = discovery_messages(Topics("edge-agent", "cam_lan"), prefix, ["person"], "m")
    assert not any(is_own_config(t, prefix, "cam.lan") for t, _ in other)  # look-alike node
    assert not is_own_config(f"{prefix}/status", prefix, "cam.lan")
    assert not is_own_config(mine[0].replace("/config", "/state"), prefix, "cam.lan")
    assert not is_own_config("elsewhere/" + mine[0], prefix, "cam.lan")


def test_look_alike_labels_and_device_ids_get_distinct_topics():
    found = configs(["person", "Person", "traffic light", "traffic_light", "person"])
    assert len(found) == 3 * 4 + 2
    a = {HA_TOPIC.match(t)["node_id"] for t in configs(["x"], Topics("p", "cam.1"))}  # type: ignore[index]
    b = {HA_TOPIC.match(t)["node_id"] for t in configs(["x"], Topics("p", "cam_1"))}  # type: ignore[index]
    assert a.isdisjoint(b)
    # Ids that were valid already keep their form (entities HA knows keep their topics).
    assert "homeassistant/binary_sensor/edge_agent_cam-ha/person_detected/config" in found


# --- the templates, rendered as Home Assistant renders them ---------------------------------


def render(template: str, payload: bytes) -> str:
    """As Home Assistant renders a value template (mqtt/models.py,
    async_render_with_possible_json_value): ``value`` the payload as text, ``value_json`` too
    where it parses as JSON; in its sandbox."""
    sandbox = pytest.importorskip("jinja2.sandbox")
    env = sandbox.ImmutableSandboxedEnvironment()
    variables: dict[str, Any] = {"value": payload.decode()}
    with contextlib.suppress(ValueError):
        variables["value_json"] = json.loads(payload)
    return env.from_string(template).render(**variables).strip()


def detections(*labels: str) -> bytes:
    objects = [
        {"label": label, "class_id": i, "score": 0.9, "box": [0.1, 0.1, 0.5, 0.5]}
        for i, label in enumerate(labels)
    ]
    return detections_message(7, 42, 640, 480, time.time(), ("m", "1"), (5.0, 9.0), objects)


def retained_count(n: int) -> bytes:
    """``C/objects/<label>`` and ``C/zones/<zone>/<label>``: a plain integer as text."""
    return str(n).encode()


def test_counts_and_occupancy_read_the_retained_integer():
    entities = by_object(configs(["person", "car"], zones={"main": {"gate": []}}))
    for name in ("person", "car", "gate_person", "gate_car"):
        count, binary = entities[f"{name}_count"], entities[f"{name}_detected"]
        assert count["state_topic"] == binary["state_topic"]
        for n in (0, 1, 2, 17):
            assert render(count["value_template"], retained_count(n)) == str(n)
            on = render(binary["value_template"], retained_count(n))
            assert on == ("ON" if n else "OFF"), (name, n)
    assert entities["gate_car_count"]["state_topic"] == "edge-agent/cam-ha/zones/gate/car"
    # A per-frame detections payload is no longer what they read.
    assert entities["person_count"]["state_topic"] != TOPICS.detections


def test_events_disabled_count_the_per_frame_detections_as_before():
    entities = by_object(configs(["person", "car"], events=False))
    cases = [
        ((), {"person": 0, "car": 0}),
        (("person",), {"person": 1, "car": 0}),
        (("person", "car", "person", "dog"), {"person": 2, "car": 1}),
    ]
    for objects, counts in cases:
        payload = detections(*objects)
        for label, n in counts.items():
            assert render(entities[f"{label}_count"]["value_template"], payload) == str(n)
            on = render(entities[f"{label}_detected"]["value_template"], payload)
            assert on == ("ON" if n else "OFF")
    metrics = json.dumps({"fps": 9.5, "latency_ms_p50": 3.0}).encode()
    assert render(entities["fps"]["value_template"], metrics) == "9.5"
    assert entities["person_count"]["state_topic"] == TOPICS.detections
    # Without events there are no snapshots and no zone counts to show.
    with_zones = by_object(configs(["person", "car"], events=False, zones={"main": {"gate": []}}))
    assert set(with_zones) == {
        "person_detected",
        "person_count",
        "car_detected",
        "car_count",
        "fps",
        "status",
    }
    cams = configs_of(["person"], ["door"], events=False, zones={"door": {"gate": []}})
    assert set(by_object(cams)) == {
        "door_person_detected",
        "door_person_count",
        "door_fps",
        "status",
    }
    assert by_object(cams)["door_person_count"]["state_topic"] == f"{TOPICS.base}/door/detections"


@settings(max_examples=150, deadline=None, database=None)
@given(label=labels, others=st.lists(labels, max_size=3), n=st.integers(0, 3))
def test_templates_count_any_label(label: str, others: list[str], n: int):
    entity = by_object(configs([label], events=False))
    count = next(c for o, c in entity.items() if o.endswith("_count"))
    binary = next(c for o, c in entity.items() if o.endswith("_detected"))
    others = [o for o in others if o != label]
    payload = detections(*([label] * n), *others)
    assert render(count["value_template"], payload) == str(n)
    assert render(binary["value_template"], payload) == ("ON" if n else "OFF")
    events = by_object(configs([label]))
    count = next(c for o, c in events.items() if o.endswith("_count"))
    binary = next(c for o, c in events.items() if o.endswith("_detected"))
    assert render(count["value_template"], retained_count(n)) == str(n)
    assert render(binary["value_template"], retained_count(n)) == ("ON" if n else "OFF")


def available(config: dict[str, Any], retained: dict[str, bytes]) -> bool:
    """Whether Home Assistant shows the entity, given the last payload on each topic: HA keys
    the availability entries by topic (mqtt/entity.py, _availability_setup_from_config: a later
    entry on the same topic replaces an earlier one) and combines them by availability_mode."""
    entries = {a["topic"]: a for a in config.get("availability", [])}
    assert len(entries) == len(config.get("availability", [])), "two entries on one topic"
    results = []
    for topic, entry in entries.items():
        value = render(entry["value_template"], retained[topic])
        # Per-entry payloads default to "online" / "offline" in Home Assistant.
        assert value in (
            entry.get("payload_available", "online"),
            entry.get("payload_not_available", "offline"),
        ), value
        results.append(value == entry.get("payload_available", "online"))
    mode = config.get("availability_mode", "latest")
    return all(results) if mode == "all" else any(results)


def camera(state: str) -> dict[str, object]:
    return {"state": state, "failures": 0 if state == "connected" else 3, "last_error": None}


def test_availability_maps_online_to_online_and_offline_or_stopped_to_offline():
    entities = by_object(configs(["person"], zones={"main": {"gate": []}}))
    for name in (
        "person_detected",
        "person_count",
        "person_snapshot",
        "gate_person_detected",
        "gate_person_count",
        "fps",
    ):
        config = entities[name]
        online = status_message("online", model={"name": "m"}, source=camera("connected"))
        assert available(config, {TOPICS.status: online})
        assert not available(config, {TOPICS.status: status_message("offline")})
        assert not available(config, {TOPICS.status: status_message("stopped")})


def test_a_camera_that_is_away_makes_its_entities_unavailable():
    entities = by_object(configs(["person"], zones={"main": {"gate": []}}))
    for state in ("starting", "retrying", "ended", "stopped"):
        away = {TOPICS.status: status_message("online", source=camera(state))}
        for name in ("person", "gate_person"):
            assert not available(entities[f"{name}_detected"], away), state
            assert not available(entities[f"{name}_count"], away), state
        assert not available(entities["person_snapshot"], away), state
        # The agent is there and says it processes nothing: its fps stays on show.
        assert available(entities["fps"], away), state
    # A status without a camera (a split tail) is the agent's state alone.
    assert available(entities["person_detected"], {TOPICS.status: status_message("online")})


# --- a lone source: what it published before cameras ----------------------------------------

AVAILABLE = {"payload_available": "online", "payload_not_available": "offline"}
DEVICE = {
    "identifiers": ["edge-agent-cam-ha"],
    "name": "edge-agent cam-ha",
    "manufacturer": "edge-agent",
    "model": "face-short-range",
    "sw_version": __version__,
}


LONE_AVAILABILITY = {
    "availability": [
        {
            "topic": "edge-agent/cam-ha/status",
            "value_template": "{{ 'online' if value_json.state == 'online' and "
            "(value_json.source is not defined or value_json.source.state == 'connected') "
            "else 'offline' }}",
            **AVAILABLE,
        }
    ],
    "availability_mode": "all",
}
FPS = {
    "name": "inference fps",
    "state_topic": "edge-agent/cam-ha/metrics",
    "value_template": "{{ value_json.fps }}",
    "unit_of_measurement": "fps",
    "state_class": "measurement",
    "entity_category": "diagnostic",
    "availability": [
        {
            "topic": "edge-agent/cam-ha/status",
            "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
            **AVAILABLE,
        }
    ],
    "availability_mode": "all",
    "unique_id": "edge_agent_cam-ha_fps",
    "default_entity_id": "sensor.edge_agent_cam_ha_fps",
    "device": DEVICE,
}
NODE = "homeassistant/{}/edge_agent_cam-ha/{}/config"


def compact(config: dict[str, Any]) -> bytes:
    return json.dumps(config, separators=(",", ":")).encode()


def test_events_disabled_a_lone_source_keeps_its_discovery_configs_byte_for_byte():
    messages = discovery_messages(
        TOPICS, "homeassistant", ["person"], "face-short-range", events=False
    )
    assert messages == discovery_messages(
        TOPICS, "homeassistant", ["person"], "face-short-range", cameras=None, events=False
    )
    assert [t for t, _ in messages] == [
        NODE.format("binary_sensor", "person_detected"),
        NODE.format("sensor", "person_count"),
        NODE.format("sensor", "fps"),
        NODE.format("sensor", "status"),
    ]
    binary = {
        "name": "person detected",
        "state_topic": "edge-agent/cam-ha/detections",
        "value_template": "{{ 'ON' if (value_json.objects | selectattr('label', 'equalto', "
        "\"person\") | list | length) > 0 else 'OFF' }}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "occupancy",
        **LONE_AVAILABILITY,
        "unique_id": "edge_agent_cam-ha_person_detected",
        "default_entity_id": "binary_sensor.edge_agent_cam_ha_person_detected",
        "device": DEVICE,
    }
    assert messages[0][1] == compact(binary)
    assert messages[2][1] == compact(FPS)
    # A camera of a cameras: config that happens to be called "main" has its own topics.
    main = configs_of(["person"], ["main"], events=False)
    main_person = by_object(main)["main_person_detected"]
    assert main_person["state_topic"] == f"{TOPICS.base}/main/detections"


def test_with_events_a_lone_sources_entities_keep_their_ids_and_read_the_retained_counts():
    # On purpose, against the configs before events: the binary and count sensors read
    # B/objects/<label> (state_topic, value_template); their discovery topics, unique_id and
    # default_entity_id stay, so Home Assistant keeps the entities and their history. New: the
    # label's snapshot image and the zones' sensors.
    messages = discovery_messages(
        TOPICS, "homeassistant", ["person"], "face-short-range", zones={"main": {"gate": []}}
    )
    assert [t for t, _ in messages] == [
        NODE.format("binary_sensor", "person_detected"),
        NODE.format("sensor", "person_count"),
        NODE.format("image", "person_snapshot"),
        NODE.format("binary_sensor", "gate_person_detected"),
        NODE.format("sensor", "gate_person_count"),
        NODE.format("sensor", "fps"),
        NODE.format("sensor", "status"),
    ]
    binary = {
        "name": "person detected",
        "state_topic": "edge-agent/cam-ha/objects/person",
        "value_template": "{{ 'ON' if (value | int) > 0 else 'OFF' }}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "occupancy",
        **LONE_AVAILABILITY,
        "unique_id": "edge_agent_cam-ha_person_detected",
        "default_entity_id": "binary_sensor.edge_agent_cam_ha_person_detected",
        "device": DEVICE,
    }
    count = {
        "name": "person count",
        "state_topic": "edge-agent/cam-ha/objects/person",
        "value_template": "{{ value | int }}",
        "state_class": "measurement",
        "icon": "mdi:counter",
        **LONE_AVAILABILITY,
        "unique_id": "edge_agent_cam-ha_person_count",
        "default_entity_id": "sensor.edge_agent_cam_ha_person_count",
        "device": DEVICE,
    }
    image = {
        "name": "person snapshot",
        "image_topic": "edge-agent/cam-ha/objects/person/snapshot",
        "content_type": "image/jpeg",
        **LONE_AVAILABILITY,
        "unique_id": "edge_agent_cam-ha_person_snapshot",
        "default_entity_id": "image.edge_agent_cam_ha_person_snapshot",
        "device": DEVICE,
    }
    zone = {
        "name": "gate person detected",
        "state_topic": "edge-agent/cam-ha/zones/gate/person",
        "value_template": "{{ 'ON' if (value | int) > 0 else 'OFF' }}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "occupancy",
        **LONE_AVAILABILITY,
        "unique_id": "edge_agent_cam-ha_gate_person_detected",
        "default_entity_id": "binary_sensor.edge_agent_cam_ha_gate_person_detected",
        "device": DEVICE,
    }
    assert [p for _, p in messages[:4]] == [compact(c) for c in (binary, count, image, zone)]
    assert messages[5][1] == compact(FPS)
    # The default is events on (as in the config), and no zones without a zones argument.
    assert discovery_messages(TOPICS, "homeassistant", ["person"], "face-short-range") == [
        m for m in messages if "/gate_" not in m[0]
    ]


# --- several cameras ------------------------------------------------------------------------


def configs_of(
    labels: list[str], cameras: list[str], topics: Topics = TOPICS, **options: Any
) -> dict[str, dict[str, Any]]:
    out = {}
    for topic, payload in discovery_messages(
        topics, "homeassistant", labels, "face-short-range", cameras, **options
    ):
        assert topic not in out, f"two configs on {topic}"
        out[topic] = json.loads(payload)
    return out


def test_per_camera_entities_under_the_one_device():
    found = configs_of(["person", "car"], ["driveway", "door"])
    assert len(found) == 2 * (3 * 2 + 1) + 1  # per camera: 3 per label and fps; status once
    for topic, config in found.items():
        m = HA_TOPIC.match(topic)
        assert m and m["node_id"] == "edge_agent_cam-ha", topic
        assert REQUIRED[m["component"]] <= set(config), topic
        assert config["default_entity_id"].split(".")[0] == m["component"]
        assert HA_ENTITY_ID.match(config["default_entity_id"]), config["default_entity_id"]
    assert len({json.dumps(c["device"], sort_keys=True) for c in found.values()}) == 1
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)

    entities = by_object(found)
    assert set(entities) == {
        *(
            f"{cam}_{label}_{kind}"
            for cam in ("driveway", "door")
            for label in ("person", "car")
            for kind in ("detected", "count", "snapshot")
        ),
        "driveway_fps",
        "door_fps",
        "status",
    }
    person = entities["driveway_person_detected"]
    assert person["name"] == "driveway person detected"
    assert person["state_topic"] == f"{TOPICS.base}/driveway/objects/person"
    assert person["default_entity_id"] == "binary_sensor.edge_agent_cam_ha_driveway_person_detected"
    assert person["device_class"] == "occupancy"
    assert entities["door_car_count"]["name"] == "door car count"
    assert entities["door_car_count"]["state_topic"] == f"{TOPICS.base}/door/objects/car"
    image = entities["door_car_snapshot"]
    assert image["name"] == "door car snapshot"
    assert image["image_topic"] == f"{TOPICS.base}/door/objects/car/snapshot"
    assert image["content_type"] == "image/jpeg"
    assert image["default_entity_id"] == "image.edge_agent_cam_ha_door_car_snapshot"
    assert entities["door_fps"]["name"] == "door inference fps"
    assert entities["door_fps"]["state_topic"] == TOPICS.metrics
    assert entities["status"]["state_topic"] == TOPICS.status
    assert "availability" not in entities["status"]
    for config in found.values():
        assert all(a["topic"] == TOPICS.status for a in config.get("availability", []))


camera_names = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@settings(max_examples=200, deadline=None, database=None)
@given(
    device_id=device_ids,
    label_list=st.lists(labels, max_size=5),
    cameras=st.lists(camera_names, min_size=1, max_size=5, unique=True),
)
def test_per_camera_topics_match_home_assistants_pattern_and_ids_are_unique(
    device_id: str, label_list: list[str], cameras: list[str]
):
    topics = Topics("edge-agent", device_id)
    found = configs_of(label_list, cameras, topics)
    assert len(found) == len(cameras) * (3 * len(set(label_list)) + 1) + 1
    for topic, config in found.items():
        assert HA_TOPIC.match(topic), topic
        assert read_topic(config).startswith(f"edge-agent/{device_id}/")
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    entity_ids = [c["default_entity_id"] for c in found.values()]
    assert len(set(entity_ids)) == len(entity_ids)
    assert all(HA_ENTITY_ID.match(e) for e in entity_ids), entity_ids
    count_topics = {
        c["state_topic"] for c in found.values() if c["name"].endswith((" detected", " count"))
    }
    wanted = {topics.objects(label, c) for c in cameras for label in label_list}
    assert count_topics == wanted


def test_look_alike_cameras_and_camera_label_pairs_get_distinct_ids():
    found = configs_of(["person"], ["front-door", "front_door", "Front_Door"])
    assert len(found) == 3 * 4 + 1
    names = {c["name"] for c in found.values()}
    assert {"front-door person detected", "Front_Door inference fps"} <= names
    # camera "a" with label "b_c" and camera "a_b" with label "c" would slug alike
    found = configs_of(["b_c", "c"], ["a", "a_b"])
    assert len(found) == 2 * (3 * 2 + 1) + 1
    counts = ("a b_c count", "a_b c count")
    topics = {c["state_topic"] for c in found.values() if c["name"] in counts}
    assert topics == {f"{TOPICS.base}/a/objects/b_c", f"{TOPICS.base}/a_b/objects/c"}


def test_zone_entities_per_zone_and_label_with_distinct_ids():
    zones = {
        "driveway": {"gate": ["person"], "lawn": [], "Gate": ["dog", "dog"]},
        "door": {"porch": ["person", "car"]},
    }
    found = configs_of(["person", "car"], ["driveway", "door"], zones=zones)
    # per camera 3 per label and fps; per zone 2 per label (an empty list: every label); status
    assert len(found) == 2 * (3 * 2 + 1) + 2 * (1 + 2 + 1 + 2) + 1
    entities = by_object(found)
    gate = entities["driveway_gate_person_detected"]
    assert gate["name"] == "driveway gate person detected"
    assert gate["state_topic"] == f"{TOPICS.base}/driveway/zones/gate/person"
    assert gate["device_class"] == "occupancy"
    assert (
        gate["default_entity_id"] == "binary_sensor.edge_agent_cam_ha_driveway_gate_person_detected"
    )
    assert "driveway_gate_car_detected" not in entities  # the gate counts persons only
    lawn = {o: c for o, c in entities.items() if "_lawn_" in o}
    assert {c["state_topic"] for c in lawn.values()} == {
        f"{TOPICS.base}/driveway/zones/lawn/person",
        f"{TOPICS.base}/driveway/zones/lawn/car",
    }
    assert len(lawn) == 4
    porch = entities["door_porch_car_count"]
    assert (porch["name"], porch["state_topic"]) == (
        "door porch car count",
        f"{TOPICS.base}/door/zones/porch/car",
    )
    # "Gate" and "gate" slug alike: the second gets a hash, both are there; a zone's own label
    # (dog) counts even where it is not one of the watched labels.
    dogs = [c for c in found.values() if c["name"] == "driveway Gate dog count"]
    assert len(dogs) == 1 and dogs[0]["state_topic"] == f"{TOPICS.base}/driveway/zones/Gate/dog"
    for topic, config in found.items():
        m = HA_TOPIC.match(topic)
        assert m, topic
        assert REQUIRED[m["component"]] <= set(config), topic
    for key in ("unique_id", "default_entity_id"):
        ids = [c[key] for c in found.values()]
        assert len(set(ids)) == len(ids), key
    assert all(HA_ENTITY_ID.match(c["default_entity_id"]) for c in found.values())
    # A zone whose ids would be a label's: the label's entities keep theirs (their history).
    clash = by_object(configs_of(["c"], ["a", "a_b"], zones={"a": {"b": ["c"]}}))
    assert clash["a_b_c_detected"]["state_topic"] == f"{TOPICS.base}/a_b/objects/c"
    zone = [c for c in clash.values() if c["name"] == "a b c detected"]
    assert len(zone) == 1 and zone[0]["state_topic"] == f"{TOPICS.base}/a/zones/b/c"
    lone = by_object(configs(["gate person"], zones={"main": {"gate": ["person"]}}))
    assert lone["gate_person_detected"]["name"] == "gate person detected"
    assert lone["gate_person_detected"]["state_topic"] == f"{TOPICS.base}/objects/gate person"


def test_snapshot_images_are_mqtt_image_entities_on_the_retained_jpeg():
    entities = by_object(configs_of(["person"], ["driveway"]))
    image = entities["driveway_person_snapshot"]
    # mqtt/image.py: image_topic carries the raw bytes (no image_encoding: not base64),
    # content_type is what Home Assistant serves them as; url_topic excludes image_topic.
    assert image["image_topic"] == f"{TOPICS.base}/driveway/objects/person/snapshot"
    assert image["content_type"] == "image/jpeg"
    assert not {"url_topic", "image_encoding", "state_topic", "value_template"} & set(image)
    assert image["availability"] == entities["driveway_person_detected"]["availability"]
    assert image["default_entity_id"] == "image.edge_agent_cam_ha_driveway_person_snapshot"
    # Its topic is the snapshot the agent publishes for that label.
    assert image["image_topic"] == TOPICS.object_snapshot("person", "driveway")
    assert by_object(configs(["person"]))["person_snapshot"]["image_topic"] == (
        TOPICS.object_snapshot("person")
    )


@settings(max_examples=200, deadline=None, database=None)
@given(
    label_list=st.lists(labels, min_size=1, max_size=5),
    zone_labels=st.lists(labels, max_size=3),
    zone=camera_names,
)
def test_any_label_gives_topics_home_assistant_subscribes_to(
    label_list: list[str], zone_labels: list[str], zone: str
):
    # A label may hold "/", "+", "#" or control characters: each stays within its one level.
    zones = {"driveway": {zone: zone_labels}, "main": {zone: zone_labels}}
    for found in (
        configs_of(label_list, ["driveway"], zones=zones),
        configs(label_list, zones=zones),
    ):
        shown = [read_topic(c) for c in found.values()]
        assert all(valid_subscribe_topic(t) for t in shown), shown
        for config in found.values():
            if "/objects/" in read_topic(config):
                after = read_topic(config).split("/objects/", 1)[1].split("/")
                assert len(after) == (2 if "image_topic" in config else 1), read_topic(config)
            if "/zones/" in read_topic(config):
                assert len(read_topic(config).split("/zones/", 1)[1].split("/")) == 2
        ids = [c["unique_id"] for c in found.values()]
        assert len(set(ids)) == len(ids)
        entity_ids = [c["default_entity_id"] for c in found.values()]
        assert len(set(entity_ids)) == len(entity_ids)
        assert all(HA_ENTITY_ID.match(e) for e in entity_ids), entity_ids


def cameras_status(state: str = "online", **cameras: str) -> bytes:
    return status_message(state, cameras={name: camera(s) for name, s in cameras.items()})


def test_per_camera_templates_count_on_that_cameras_payload_and_read_its_fps():
    entities = by_object(configs_of(["person"], ["driveway", "front-door"]))
    for name in ("driveway_person", "front_door_person"):
        assert render(entities[f"{name}_count"]["value_template"], retained_count(2)) == "2"
        assert render(entities[f"{name}_detected"]["value_template"], retained_count(2)) == "ON"
        assert render(entities[f"{name}_detected"]["value_template"], retained_count(0)) == "OFF"
    assert entities["front_door_person_count"]["state_topic"] == (
        f"{TOPICS.base}/front-door/objects/person"
    )
    metrics = json.dumps(
        {
            "fps": 7.5,
            "cameras": {
                "driveway": {"fps": 5.0, "frames": 10, "inferences": 3},
                "front-door": {"fps": 2.5, "frames": 5, "inferences": 5},
            },
        }
    ).encode()
    assert render(entities["driveway_fps"]["value_template"], metrics) == "5.0"
    assert render(entities["front_door_fps"]["value_template"], metrics) == "2.5"


def test_events_disabled_per_camera_templates_count_on_that_cameras_detections():
    entities = by_object(configs_of(["person"], ["driveway", "front-door"], events=False))
    body = json.loads(detections("person", "car", "person"))
    payload = json.dumps({**body, "camera": "front-door"}).encode()
    assert render(entities["front_door_person_count"]["value_template"], payload) == "2"
    assert render(entities["front_door_person_detected"]["value_template"], payload) == "ON"
    empty = json.dumps({**json.loads(detections()), "camera": "driveway"}).encode()
    assert render(entities["driveway_person_detected"]["value_template"], empty) == "OFF"


def test_each_camera_is_available_while_the_agent_is_online_and_that_camera_connected():
    zones = {"driveway": {"gate": []}, "front-door": {"porch": ["person"]}}
    entities = by_object(configs_of(["person"], ["driveway", "front-door"], zones=zones))
    kinds = ("person_detected", "person_count", "person_snapshot")
    drive = [entities[f"driveway_{k}"] for k in (*kinds, "gate_person_count")]
    door = [entities[f"front_door_{k}"] for k in (*kinds, "porch_person_detected")]
    fps = [entities["driveway_fps"], entities["front_door_fps"]]
    for state in ("starting", "retrying", "ended", "stopped"):
        status = {TOPICS.status: cameras_status(driveway="connected", **{"front-door": state})}
        assert all(available(c, status) for c in drive), state
        assert not any(available(c, status) for c in door), state
        assert all(available(c, status) for c in fps), state  # the agent is there
    both = {TOPICS.status: cameras_status(driveway="connected", **{"front-door": "connected"})}
    assert all(available(c, both) for c in drive + door + fps)
    for state in ("offline", "stopped"):
        down = {TOPICS.status: cameras_status(state, driveway="connected")}
        assert not any(available(c, down) for c in drive + door + fps), state
    # A status that does not list a camera (or no cameras map at all) does not vouch for it.
    unlisted = {TOPICS.status: cameras_status(driveway="connected")}
    assert not any(available(c, unlisted) for c in door)
    assert not any(available(c, {TOPICS.status: status_message("online")}) for c in drive + door)
    assert available(fps[0], {TOPICS.status: status_message("online")})


# --- end to end -----------------------------------------------------------------------------


def agent_config(port: int, assets: Path, **ha: Any) -> dict[str, Any]:
    return {
        "device_id": "cam-ha",
        "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 10, "loop": True},
        "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5},
        "homeassistant": ha,
    }


def collect(
    sub: Subscriber,
    prefix: str,
    count: int,
    timeout: float = 20.0,
    removed: set[str] | None = None,
    removals: int = 0,
) -> dict[str, Any]:
    """The next ``count`` configs under ``prefix``: topic -> (payload, retained); an empty
    payload (an entity removed) is one too, (None, retained), unless ``removed`` takes those
    topics (until it holds ``removals``)."""
    got: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while (len(got) < count or len(removed or ()) < removals) and time.monotonic() < deadline:
        try:
            topic, payload, retain = sub.messages.get(timeout=0.1)
        except queue.Empty:
            continue
        if not (topic.startswith(prefix) and topic.endswith("/config")):
            continue
        if not payload and removed is not None:
            removed.add(topic)
        else:
            got[topic] = (json.loads(payload) if payload else None, retain)
    return got


def test_agent_publishes_retained_discovery_and_again_when_home_assistant_comes_online(
    broker, subscriber, write_config, run_agent, assets
):
    expected = {
        t: json.loads(p)
        for t, p in discovery_messages(
            TOPICS, "homeassistant", ["face", "person"], "face-short-range"
        )
    }
    live = subscriber("homeassistant/#")
    status = subscriber(f"{TOPICS.base}/status")
    agent = run_agent(write_config(agent_config(broker.port, assets, labels=["face", "person"])))

    first = collect(live, "homeassistant/", len(expected))
    assert {t: c for t, (c, _) in first.items()} == expected

    # Retained: a Home Assistant that connects later reads them all at once.
    late = subscriber("homeassistant/+/edge_agent_cam-ha/+/config")
    stored = collect(late, "homeassistant/", len(expected))
    assert {t: c for t, (c, _) in stored.items()} == expected
    assert all(retained for _, retained in stored.values())

    # Home Assistant restarted: it says "online" on homeassistant/status; the agent re-announces.
    live.client.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
    again = collect(live, "homeassistant/", len(expected))
    assert {t: c for t, (c, _) in again.items()} == expected
    # Anything else on that topic is no reason to announce again.
    live.client.publish("homeassistant/status", b"offline", qos=1).wait_for_publish(5)
    assert collect(live, "homeassistant/", 1, timeout=1.0) == {}

    # The availability maps the status the agent really publishes.
    face = expected["homeassistant/binary_sensor/edge_agent_cam-ha/face_detected/config"]
    online = status.wait_for(
        "/status", lambda s: s["state"] == "online" and s["source"]["state"] == "connected"
    )
    assert available(face, {TOPICS.status: json.dumps(online).encode()})
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    stopped = status.wait_for("/status", lambda s: s["state"] == "stopped")
    assert not available(face, {TOPICS.status: json.dumps(stopped).encode()})


def test_entities_are_unavailable_while_the_camera_is_away(
    broker, subscriber, write_config, run_agent, assets, tmp_path
):
    # The camera: a looping file that goes away and comes back (the source retries it).
    cam = tmp_path / "cam.mp4"
    shutil.copy(MEDIA / "carphone_pristine.mp4", cam)
    config = agent_config(broker.port, assets, labels=["face"])
    config["source"].update(uri=str(cam), backoff_initial_s=0.2, backoff_max_s=0.5)
    live = subscriber("homeassistant/#")
    status = subscriber(f"{TOPICS.base}/status")
    run_agent(write_config(config))
    found = {t: c for t, (c, _) in collect(live, "homeassistant/", 3 + 2).items()}
    entities = by_object(found)
    face, count, fps = entities["face_detected"], entities["face_count"], entities["fps"]
    image = entities["face_snapshot"]

    def retained(state: str) -> dict[str, bytes]:
        s = status.wait_for("/status", lambda s: s.get("source", {}).get("state") == state, 30)
        assert s["state"] == "online"
        return {TOPICS.status: json.dumps(s).encode()}

    here = retained("connected")
    assert available(face, here) and available(count, here) and available(fps, here)
    assert available(image, here)
    cam.unlink()
    away = retained("retrying")
    assert not available(face, away) and not available(count, away)
    assert not available(image, away)
    assert available(fps, away)  # the agent itself is there
    shutil.copy(MEDIA / "carphone_pristine.mp4", tmp_path / "back.mp4")
    (tmp_path / "back.mp4").replace(cam)
    back = retained("connected")
    assert available(face, back) and available(count, back)


def test_discovery_labels_default_to_the_models_labels(
    broker, subscriber, write_config, run_agent, assets
):
    live = subscriber("homeassistant/#")
    run_agent(write_config(agent_config(broker.port, assets)))
    expected = dict(discovery_messages(TOPICS, "homeassistant", ["face"], "face-short-range"))
    got = collect(live, "homeassistant/", len(expected))
    assert set(got) == set(expected)


def test_discovery_announces_the_live_configs_cameras_and_again_when_they_change(
    broker, subscriber, assets
):
    slot = ModelSlot(RuntimeSpec(threads=1))
    slot.serve(Detector.load(assets / "face-short-range.tflite", threads=1), origin="config")

    def cameras(*names: str, zones: dict[str, Any] | None = None, events: bool = True) -> Config:
        uri = str(MEDIA / "carphone_pristine.mp4")
        return Config.model_validate(
            {
                "device_id": "cam-ha",
                "cameras": {
                    name: {"source": {"uri": uri}, "zones": (zones or {}).get(name, {})}
                    for name in names
                },
                "events": {"enabled": events},
                "homeassistant": {"labels": ["face"]},
            }
        )

    live = {"config": cameras("driveway", "door")}
    sink = subscriber("homeassistant/#")
    publisher = subscriber("nothing/here").client  # a real client publishing to the broker
    discovery = Discovery(publisher, TOPICS, slot, lambda: live["config"])

    def expected(names: list[str] | None, **options: Any) -> dict[str, Any]:
        messages = discovery_messages(
            TOPICS, "homeassistant", ["face"], "face-short-range", names, **options
        )
        return {t: json.loads(p) for t, p in messages}

    discovery.publish()
    want = expected(["driveway", "door"])
    got = collect(sink, "homeassistant/", len(want))
    assert {t: c for t, (c, _) in got.items()} == want
    assert "homeassistant/binary_sensor/edge_agent_cam-ha/door_face_detected/config" in want
    discovery.publish(only_if_changed=True)  # nothing changed
    assert collect(sink, "homeassistant/", 1, timeout=1.0) == {}

    live["config"] = cameras("driveway", "door", "garden")  # the cameras differ: announce
    discovery.publish(only_if_changed=True)
    want = expected(["driveway", "door", "garden"])
    got = collect(sink, "homeassistant/", len(want))
    assert {t: c for t, (c, _) in got.items()} == want

    # A zone added (SIGHUP, config/set): its entities are announced.
    square = [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]]
    gate = {"door": {"gate": {"polygon": square}}}
    live["config"] = cameras("driveway", "door", "garden", zones=gate)
    discovery.publish(only_if_changed=True)
    want = expected(["driveway", "door", "garden"], zones={"door": {"gate": []}})
    assert "homeassistant/sensor/edge_agent_cam-ha/door_gate_face_count/config" in want
    got = collect(sink, "homeassistant/", len(want))
    assert {t: c for t, (c, _) in got.items()} == want
    # The zone's labels changed: announced again, the zone's face entities removed.
    gate["door"]["gate"]["labels"] = ["person"]
    live["config"] = cameras("driveway", "door", "garden", zones=gate)
    discovery.publish(only_if_changed=True)
    want = expected(["driveway", "door", "garden"], zones={"door": {"gate": ["person"]}})
    gone: set[str] = set()
    got = collect(sink, "homeassistant/", len(want), removed=gone, removals=2)
    assert {t: c for t, (c, _) in got.items()} == want
    assert gone == {
        f"homeassistant/{c}/edge_agent_cam-ha/door_gate_face_{k}/config"
        for c, k in (("binary_sensor", "detected"), ("sensor", "count"))
    }
    # Events off: the detections-based sensors; the images and the zones' entities removed
    # (an empty retained config: Home Assistant deletes the entity).
    before = set(want)
    live["config"] = cameras("driveway", "door", "garden", zones=gate, events=False)
    discovery.publish(only_if_changed=True)
    want = expected(["driveway", "door", "garden"], events=False)
    assert not any("/image/" in t or "_gate_" in t for t in want)
    gone = set()
    got = collect(sink, "homeassistant/", len(want), removed=gone, removals=len(before - set(want)))
    assert {t: c for t, (c, _) in got.items()} == want
    assert gone == before - set(want)
    assert "homeassistant/sensor/edge_agent_cam-ha/door_gate_person_count/config" in gone
    assert "homeassistant/image/edge_agent_cam-ha/door_face_snapshot/config" in gone
    discovery.publish(only_if_changed=True)  # nothing changed
    assert collect(sink, "homeassistant/", 1, timeout=1.0) == {}

    # A lone source: the configs without cameras; the cameras' entities are removed.
    before = set(want)
    live["config"] = Config.model_validate(
        {"device_id": "cam-ha", "source": {"uri": "x.mp4"}, "homeassistant": {"labels": ["face"]}}
    )
    discovery.publish(only_if_changed=True)
    want = expected(None)
    gone = set()
    got = collect(sink, "homeassistant/", len(want), removed=gone, removals=len(before - set(want)))
    assert {t: c for t, (c, _) in got.items()} == want
    assert gone == before - set(want)
    assert "homeassistant/sensor/edge_agent_cam-ha/status/config" not in gone


def test_entities_of_a_config_changed_while_the_agent_was_stopped_are_removed_at_start(
    broker, subscriber, write_config, run_agent, assets
):
    """An earlier run announced a "person" label the config no longer has: that run is gone, so
    only the broker's retained configs remember it. The agent finds its own leftovers and
    removes them; another device's configs stay."""
    earlier = discovery_messages(TOPICS, "homeassistant", ["face", "person"], "face-short-range")
    now = dict(discovery_messages(TOPICS, "homeassistant", ["face"], "face-short-range"))
    stale = {t for t, _ in earlier} - set(now)
    assert stale and all("person" in t for t in stale)
    other = "homeassistant/binary_sensor/edge_agent_cam-other/person_detected/config"
    seed = subscriber("nothing/here").client
    for topic, payload in [*earlier, (other, b'{"name": "another device"}')]:
        seed.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)

    live = subscriber("homeassistant/#")
    collect(live, "homeassistant/", len(earlier) + 1)  # what the broker held before the start
    run_agent(write_config(agent_config(broker.port, assets, labels=["face"])))
    removed: set[str] = set()
    announced = collect(live, "homeassistant/", len(now), removed=removed, removals=len(stale))
    assert removed == stale
    assert {t: json.loads(p) for t, p in now.items()} == {t: c for t, (c, _) in announced.items()}

    # What a Home Assistant connecting now reads: this run's entities and the other device's.
    late = subscriber("homeassistant/#")
    held = collect(late, "homeassistant/", len(now) + 1, timeout=5.0)
    assert set(held) == set(now) | {other}
