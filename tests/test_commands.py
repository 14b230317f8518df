"""MQTT commands (DESIGN.md section 5): each command's happy path against the agent as a real
process and a real mosquitto, bad input that changes nothing, repeated ids, a flood of random
payloads, and property tests of CommandProcessor on its own."""

from __future__ import annotations

import json
import queue
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.commands import (
    COMMANDS,
    MAX_PAYLOAD_BYTES,
    CommandError,
    CommandProcessor,
    CommandTargets,
)
from agent.config import Config
from agent.overlay import merged
from agent.serving import ServingInfo
from tests.conftest import MEDIA, Subscriber

PREFIX = "edge-agent"


def agent_config(port: int, assets: Path, device: str, **publish: Any) -> dict[str, Any]:
    return {
        "device_id": device,
        "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 10, "loop": True},
        "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5},
        "publish": {"snapshot_max_bytes": 10_000, **publish},
    }


class Device:
    """Talks to one agent over MQTT: commands out, everything under ``B/#`` in."""

    def __init__(self, sub: Subscriber, device: str) -> None:
        self.sub = sub
        self.base = f"{PREFIX}/{device}"
        self._n = 0

    def next_message(
        self, match: Callable[[str, bytes], bool], timeout: float = 20.0
    ) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                topic, payload, retain = self.sub.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            self.sub.seen.append((topic, payload, retain))
            if match(topic, payload):
                return topic, payload
        raise AssertionError(f"no matching message within {timeout} s")

    def drain(self) -> None:
        while True:
            try:
                self.sub.messages.get_nowait()
            except queue.Empty:
                return

    def collect(self, seconds: float) -> list[tuple[str, bytes]]:
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload, _ = self.sub.messages.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            out.append((topic, payload))
        return out

    def detections(self, seconds: float) -> list[dict[str, Any]]:
        topic = f"{self.base}/detections"
        return [json.loads(p) for t, p in self.collect(seconds) if t == topic]

    def send_raw(self, name: str, payload: bytes, topic: str | None = None) -> None:
        info = self.sub.client.publish(topic or f"{self.base}/cmd/{name}", payload, qos=1)
        info.wait_for_publish(5)

    def reply_raw(self, name: str, cmd_id: str | None, timeout: float = 20.0) -> bytes:
        topic = f"{self.base}/cmd/{name}/reply"

        def match(t: str, p: bytes) -> bool:
            if t != topic:
                return False
            try:  # what others sent to this topic need not be a reply
                body = json.loads(p)
            except ValueError:
                return False
            return isinstance(body, dict) and body.get("id") == cmd_id and "ok" in body

        return self.next_message(match, timeout)[1]

    def request_raw(
        self, name: str, body: dict[str, Any] | bytes, cmd_id: str | None = None, **kw: Any
    ) -> bytes:
        if isinstance(body, dict):
            cmd_id = body.get("id") if isinstance(body.get("id"), str) else None
            payload = json.dumps(body).encode()
        else:
            payload = body
        self.send_raw(name, payload, **kw)
        return self.reply_raw(name, cmd_id)

    def request(self, name: str, body: dict[str, Any] | bytes, **kw: Any) -> dict[str, Any]:
        return json.loads(self.request_raw(name, body, **kw))  # type: ignore[no-any-return]

    def new_id(self, what: str) -> str:
        self._n += 1
        return f"test-{what}-{self._n:06d}-{time.monotonic_ns()}"

    def config_set(self, **sections: Any) -> dict[str, Any]:
        reply = self.request("config/set", {"id": self.new_id("config"), **sections})
        assert reply["ok"], reply
        return reply["result"]  # type: ignore[no-any-return]

    def current_config(self) -> dict[str, Any]:
        """The live settings, read through a config/set that changes nothing that matters."""
        return self.config_set(publish={"heartbeat_s": 60})

    def ping(self, timeout: float = 20.0, **kw: Any) -> dict[str, Any]:
        cmd_id = self.new_id("ping")
        self.send_raw("ping", json.dumps({"id": cmd_id}).encode(), **kw)
        return json.loads(self.reply_raw("ping", cmd_id, timeout))  # type: ignore[no-any-return]


@pytest.fixture
def device(broker, subscriber, write_config, run_agent, assets):
    """(Device, agent process, config path) for a fresh agent ``cam-cmd``."""
    sub = subscriber(f"{PREFIX}/cam-cmd/#")
    config = write_config(agent_config(broker.port, assets, "cam-cmd"))
    agent = run_agent(config)
    dev = Device(sub, "cam-cmd")
    dev.next_message(lambda t, p: t == f"{dev.base}/detections", timeout=30)
    return dev, agent, config


def overlay_file(config: Path) -> Path:
    store = yaml.safe_load(config.read_text())["store"]["path"]
    return Path(store) / "config.overlay.yaml"


# --- 1. happy paths -------------------------------------------------------------------------


def test_ping_snapshot_model_commands_and_broadcast(device):
    dev, agent, _ = device
    reply = dev.ping()
    assert reply["ok"] is True and "error" not in reply
    assert reply["result"]["agent_version"]
    assert reply["result"]["uptime_s"] >= 0

    # The broadcast topic reaches every device; each answers on its own reply topic.
    reply = dev.ping(topic=f"{PREFIX}/all/cmd/ping")
    assert reply["ok"] is True

    snap_id = dev.new_id("snapshot")
    dev.send_raw("snapshot", json.dumps({"id": snap_id}).encode())
    _, jpeg = dev.next_message(lambda t, p: t == f"{dev.base}/snapshot")
    reply = json.loads(dev.reply_raw("snapshot", snap_id))
    assert reply["ok"] is True, reply
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.ndim == 3
    assert len(jpeg) <= 10_000  # publish.snapshot_max_bytes
    assert reply["result"]["bytes"] == len(jpeg)
    assert reply["result"]["topic"] == f"{dev.base}/snapshot"
    assert (reply["result"]["frame"]["width"], reply["result"]["frame"]["height"]) == (176, 144)

    # No registry in this config: both refuse, saying why.
    for name in ("model/update", "model/rollback"):
        reply = dev.request(name, {"id": dev.new_id("model")})
        assert reply["ok"] is False
        assert "registry" in reply["error"] or "not available" in reply["error"], reply
    assert agent.proc.poll() is None


def test_config_set_takes_effect_and_survives_a_restart(device, run_agent):
    dev, agent, config = device
    dev.drain()
    before = dev.detections(1.5)
    assert len(before) >= 9, len(before)  # source.fps 10, every_frame
    scores = sorted(o["score"] for m in before for o in m["objects"] if o["label"] == "face")
    assert scores

    # The median face score: about half the faces go, the rest stay.
    threshold = round(scores[len(scores) // 2], 4)
    result = dev.config_set(detection={"score_threshold": threshold})
    assert result["detection"]["score_threshold"] == threshold
    dev.collect(0.5)  # a frame already in the pipeline may carry the old setting
    msgs = dev.detections(1.0)
    assert msgs and all(o["score"] >= threshold for m in msgs for o in m["objects"])

    result = dev.config_set(detection={"labels": ["nothing"]})
    assert result["detection"]["labels"] == ["nothing"]
    assert result["detection"]["score_threshold"] == threshold  # the earlier change stays
    dev.collect(0.3)
    msgs = dev.detections(1.0)
    assert msgs and all(m["objects"] == [] for m in msgs)

    result = dev.config_set(source={"fps": 3})
    assert result["source"]["fps"] == 3
    dev.collect(0.3)
    slow = dev.detections(2.0)
    assert 2 <= len(slow) <= 9, len(slow)  # ~6 at 3 fps, ~20 at 10 fps

    result = dev.config_set(publish={"mode": "on_change", "heartbeat_s": 60})
    assert result["publish"]["detections"] == "on_change"  # "mode": its former name
    # Nothing is detected any more (labels: nothing): after the first message, only heartbeats.
    dev.collect(0.3)
    assert len(dev.detections(2.0)) <= 1  # (that first one, when it comes late)

    overlay = yaml.safe_load(overlay_file(config).read_text())
    assert overlay == {
        "detection": {"score_threshold": threshold, "labels": ["nothing"]},
        "source": {"fps": 3},
        "publish": {"detections": "on_change", "heartbeat_s": 60},  # saved by its new name
    }

    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    dev.drain()
    restarted = run_agent(config)
    first = json.loads(dev.next_message(lambda t, p: t == f"{dev.base}/detections", 30)[1])
    assert first["objects"] == []
    live = dev.current_config()
    assert live["detection"]["score_threshold"] == threshold
    assert live["detection"]["labels"] == ["nothing"]
    assert live["source"]["fps"] == 3
    assert live["publish"]["detections"] == "on_change"
    assert len(dev.detections(1.5)) <= 1  # on_change: at most the one after the config/set
    assert restarted.proc.poll() is None


# --- 2. bad input ---------------------------------------------------------------------------


def _j(body: Any) -> bytes:
    return json.dumps(body).encode()


BAD_INPUT: list[tuple[str, bytes, str | None, str]] = [
    # (command, payload, id expected in the reply, part of the error)
    ("config/set", b'{"id": "m1", "detection": {', None, "not JSON"),
    ("config/set", b"\xff\xfe\x00garbage", None, "not JSON"),
    ("config/set", b"", None, "not JSON"),
    ("config/set", _j([{"id": "a1", "detection": {"score_threshold": 0.1}}]), None, "JSON object"),
    ("ping", _j("ping"), None, "JSON object"),
    ("config/set", _j({"detection": {"score_threshold": 0.1}}), None, "id"),
    ("config/set", _j({"id": 7, "detection": {"score_threshold": 0.1}}), None, "id"),
    ("config/set", _j({"id": "", "detection": {"score_threshold": 0.1}}), None, "id"),
    ("config/set", _j({"id": "x" * 129, "detection": {"score_threshold": 0.1}}), None, "id"),
    (
        "config/set",
        _j({"id": "w1", "detection": {"score_threshold": "high"}}),
        "w1",
        "score_threshold",
    ),
    (
        "config/set",
        _j({"id": "w2", "detection": {"score_threshold": "0.1"}}),
        "w2",
        "score_threshold",
    ),
    (
        "config/set",
        _j({"id": "w3", "detection": {"score_threshold": True}}),
        "w3",
        "score_threshold",
    ),
    ("config/set", _j({"id": "w4", "detection": {"labels": "nothing"}}), "w4", "labels"),
    ("config/set", _j({"id": "w5", "detection": {"labels": [1, 2]}}), "w5", "labels"),
    ("config/set", _j({"id": "w6", "detection": ["score_threshold", 0.1]}), "w6", "detection"),
    ("config/set", _j({"id": "w7", "publish": {"mode": "sometimes"}}), "w7", "mode"),
    ("config/set", _j({"id": "r1", "detection": {"score_threshold": 2}}), "r1", "score_threshold"),
    ("config/set", _j({"id": "r2", "detection": {"iou_threshold": -0.5}}), "r2", "iou_threshold"),
    ("config/set", _j({"id": "r3", "source": {"fps": -1}}), "r3", "fps"),
    ("config/set", _j({"id": "r4", "publish": {"heartbeat_s": 0}}), "r4", "heartbeat_s"),
    ("config/set", b'{"id": "n1", "detection": {"score_threshold": NaN}}', None, "NaN"),
    ("config/set", b'{"id": "n2", "source": {"fps": Infinity}}', None, "Infinity"),
    ("config/set", b'{"id": "n3", "source": {"fps": 1e999}}', None, "out of range"),
    ("config/set", _j({"id": "k1", "detection": {"foo": 1}}), "k1", "unknown key"),
    ("config/set", _j({"id": "k2", "mqtt": {"host": "evil.example"}}), "k2", "unknown key"),
    ("config/set", _j({"id": "k3", "source": {"uri": "rtsp://evil/"}}), "k3", "unknown key"),
    ("config/set", _j({"id": "k4", "store": {"path": "/"}}), "k4", "unknown key"),
    ("config/set", _j({"id": "e1"}), "e1", "nothing to change"),
    ("config/set", _j({"id": "e2", "detection": {}}), "e2", "nothing to change"),
    ("config/set", _j({"id": "e3", "source": {"fps": None}}), "e3", "fps"),
    ("ping", _j({"id": "p1", "extra": 1}), "p1", "unknown key"),
    ("model/update", _j({"id": "mu1", "allow_downgrade": "yes"}), "mu1", "allow_downgrade"),
    ("reboot", _j({"id": "u1"}), "u1", "unknown command"),
    (
        "config/set/now",
        _j({"id": "u2", "detection": {"score_threshold": 0.1}}),
        "u2",
        "unknown command",
    ),
    ("config", _j({"id": "u3"}), "u3", "unknown command"),
    (
        "config/set",
        b'{"id": "d1", "detection": {"labels": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}",
        None,
        "nested too deeply",
    ),
    (
        "config/set",
        _j({"id": "big1", "detection": {"labels": ["x" * (MAX_PAYLOAD_BYTES + 10)]}}),
        None,
        "exceeds",
    ),
]


def test_bad_input_gets_an_error_reply_and_changes_nothing(device):
    dev, agent, config = device
    initial = dev.current_config()
    overlay_before = overlay_file(config).read_text()
    for name, payload, cmd_id, error in BAD_INPUT:
        dev.send_raw(name, payload)
        reply = json.loads(dev.reply_raw(name, cmd_id))
        assert reply["ok"] is False, (name, payload[:80], reply)
        assert error in reply["error"], (name, payload[:80], reply)
        assert set(reply) == {"id", "ok", "error"}, reply
    assert dev.current_config() == initial
    assert overlay_file(config).read_text() == overlay_before
    dev.drain()
    msgs = dev.detections(1.5)
    assert len(msgs) >= 6
    assert any(o["label"] == "face" for m in msgs for o in m["objects"])  # labels untouched
    assert agent.proc.poll() is None
    assert "handling an incoming message failed" not in agent.output()


# --- 3. repeated ids ------------------------------------------------------------------------


def test_a_repeated_id_gets_the_first_reply_and_runs_once(device):
    dev, _, config = device
    first = dev.request_raw("config/set", {"id": "dup-1", "detection": {"score_threshold": 0.6}})
    again = dev.request_raw("config/set", {"id": "dup-1", "detection": {"score_threshold": 0.8}})
    assert json.loads(first)["ok"] is True
    assert again == first
    assert dev.current_config()["detection"]["score_threshold"] == 0.6
    assert yaml.safe_load(overlay_file(config).read_text())["detection"]["score_threshold"] == 0.6

    # A ping that ran twice would tell a later uptime and time stamp.
    one = dev.request_raw("ping", {"id": "dup-ping"})
    time.sleep(0.2)
    two = dev.request_raw("ping", {"id": "dup-ping"})
    three = dev.request_raw("ping", {"id": "dup-ping"}, topic=f"{PREFIX}/all/cmd/ping")
    assert one == two == three

    # An error from a handler is remembered too: a retry with the same id does not run again.
    m1 = dev.request_raw("model/update", {"id": "dup-model"})
    assert dev.request_raw("model/update", {"id": "dup-model", "name": "other"}) == m1


# --- 4. random payloads ---------------------------------------------------------------------

# Topic names: no wildcards, no NUL, no control characters (the broker drops the publisher).
_topic_text = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cs", "Cn"), exclude_characters="+#"
    ),
    max_size=24,
)
_name_parts = st.sampled_from(
    ["ping", "config", "set", "snapshot", "model", "update", "rollback", "reply", "", "..", "x"]
)
_known_names = st.sampled_from(sorted(COMMANDS))
command_names = st.one_of(
    _known_names,
    _known_names,  # twice: real names more often, so more payloads reach the handlers
    _topic_text,
    st.lists(st.one_of(_name_parts, _topic_text), min_size=1, max_size=4).map("/".join),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and Infinity too: json.dumps writes them, the agent must refuse them
    st.text(max_size=16),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
numbers = st.one_of(
    st.floats(), st.integers(-3, 3), st.sampled_from([0, 0.5, 1, 1.0001, "0.5", True]), json_values
)
command_ids = st.one_of(
    st.text(min_size=1, max_size=20),
    st.just(""),
    st.text(min_size=129, max_size=130),
    json_scalars,
)
detection_patches = st.fixed_dictionaries(
    {},
    optional={
        "score_threshold": numbers,
        "iou_threshold": numbers,
        "labels": st.one_of(st.lists(st.text(max_size=8), max_size=3), json_values),
        "foo": json_values,
    },
)
source_patches = st.fixed_dictionaries(
    {}, optional={"fps": numbers, "uri": st.text(max_size=8), "loop": json_values}
)
publish_patches = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.one_of(st.sampled_from(["every_frame", "on_change", "sometimes"]), json_values),
        "heartbeat_s": numbers,
        "metrics_interval_s": numbers,
        "snapshot_max_bytes": numbers,
    },
)
# Valid commands (ping, snapshot: an id alone; config/set: with the settings).
valid_bodies = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=20)},
    optional={
        "detection": st.fixed_dictionaries(
            {},
            optional={
                "score_threshold": st.one_of(st.none(), st.floats(0, 1)),
                "iou_threshold": st.floats(0, 1),
                "labels": st.lists(st.text(max_size=8), max_size=3),
            },
        ),
        "source": st.fixed_dictionaries({}, optional={"fps": st.floats(0, 100)}),
        "publish": st.fixed_dictionaries(
            {},
            optional={
                "mode": st.sampled_from(["every_frame", "on_change"]),
                "detections": st.sampled_from(["every_frame", "on_change", "off"]),
                "heartbeat_s": st.floats(0.1, 100),
            },
        ),
    },
)
command_bodies = st.one_of(
    valid_bodies,
    st.fixed_dictionaries(
        {},
        optional={
            "id": command_ids,
            "detection": st.one_of(detection_patches, json_values),
            "source": st.one_of(source_patches, json_values),
            "publish": st.one_of(publish_patches, json_values),
            "mqtt": json_values,
            "name": json_values,
            "version": json_values,
            "allow_downgrade": json_values,
        },
    ),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)
_valid_payloads = valid_bodies.map(lambda v: json.dumps(v).encode())
_shaped_payloads = command_bodies.map(lambda v: json.dumps(v).encode())
payloads = st.one_of(
    # Branches are drawn alike: repeats weigh the ones that get past the JSON parser.
    _valid_payloads,
    _valid_payloads,
    _valid_payloads,
    _shaped_payloads,
    _shaped_payloads,
    st.binary(max_size=200),
    st.text(max_size=60).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(command_bodies, st.integers(0, 80)).map(lambda t: json.dumps(t[0]).encode()[: t[1]]),
    st.sampled_from(
        [
            b"[" * 40_000 + b"]" * 20_000,
            b'{"id": "deep", "x": ' + b"[" * 30_000,
            b'{"id": "big", "pad": "' + b"x" * (MAX_PAYLOAD_BYTES + 1) + b'"}',
            b'{"id": "nan", "detection": {"score_threshold": NaN}}',
            b"\x00" * 100,
        ]
    ),
)

# (command name, payload, 0 = to the broadcast topic): half of them valid commands.
fuzz_messages = st.one_of(
    st.tuples(command_names, payloads, st.integers(0, 9)),
    st.tuples(_known_names, _valid_payloads, st.integers(0, 9)),
)


def _strict_json(data: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"reply holds {name}, which is not JSON")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def _is_reply(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and {"id", "ok"} <= set(body) <= {"id", "ok", "result", "error"}
        and isinstance(body["ok"], bool)
        and (body["id"] is None or isinstance(body["id"], str))
        and ("result" in body) == body["ok"]
        and ("error" in body) != body["ok"]
    )


def test_a_flood_of_random_payloads_leaves_the_agent_working(
    broker, subscriber, write_config, run_agent, assets
):
    base = f"{PREFIX}/cam-fuzz"
    sub = subscriber(f"{base}/#")
    replies_sub = subscriber(f"{base}/cmd/#")
    config = write_config(agent_config(broker.port, assets, "cam-fuzz"))
    agent = run_agent(config)
    dev = Device(sub, "cam-fuzz")
    dev.next_message(lambda t, p: t == f"{base}/detections", timeout=30)

    # Hypothesis draws the messages (batches of 20 per example: much faster than one each), then
    # they go out as fast as a client sends, in bursts the agent's incoming queue (1,000) holds.
    sent: list[tuple[str, bytes]] = []

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(fuzz_messages, min_size=20, max_size=20))
    def draw(batch: list[tuple[str, bytes, int]]) -> None:
        for name, payload, broadcast in batch:
            topic = f"{PREFIX}/all/cmd/{name}" if broadcast == 0 else f"{base}/cmd/{name}"
            sent.append((topic, payload))

    draw()
    assert len(sent) >= 1000

    fuzzer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzzer-{time.monotonic_ns()}")
    fuzzer.connect("127.0.0.1", broker.port)
    fuzzer.loop_start()
    try:
        for i in range(0, len(sent), 250):
            for topic, payload in sent[i : i + 250]:
                fuzzer.publish(topic, payload, qos=0)
            time.sleep(0.1)
        fuzzer.publish(f"{base}/cmd/reply", b"end", qos=1).wait_for_publish(10)
    finally:
        fuzzer.disconnect()
        fuzzer.loop_stop()

    # Every command the agent took gets one well-formed reply (its own replies, and names that
    # end in /reply, are not commands). The replies subscriber also sees what the fuzzer sent.
    expected = sum(
        1
        for topic, _ in sent
        if not topic.endswith("/reply") and topic.split("/cmd/", 1)[1] != "reply"
    )
    echoes = Counter(
        (t, p) for t, p in sent if t.startswith(f"{base}/cmd/") and t.endswith("/reply")
    )
    echoes[(f"{base}/cmd/reply", b"end")] += 1
    replies: list[bytes] = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 1.5 and len(replies) < expected:
        try:
            topic, payload, _ = replies_sub.messages.get(timeout=0.1)
        except queue.Empty:
            continue
        quiet_since = time.monotonic()
        if not topic.endswith("/reply"):
            continue
        if echoes[(topic, payload)]:
            echoes[(topic, payload)] -= 1
            continue
        replies.append(payload)
    assert len(replies) >= 0.9 * expected, (len(replies), expected)
    bodies = [_strict_json(p) for p in replies]
    assert all(_is_reply(b) for b in bodies), [b for b in bodies if not _is_reply(b)][:3]
    assert not [b for b in bodies if "internal error" in b.get("error", "")]

    # Alive, answering, and (once valid random settings are undone) detecting faces again.
    assert agent.proc.poll() is None, agent.output()[-3000:]
    assert dev.ping()["ok"] is True
    dev.config_set(
        detection={"score_threshold": None, "iou_threshold": None, "labels": []},
        source={"fps": 10},
        publish={"mode": "every_frame", "heartbeat_s": 60, "metrics_interval_s": 30},
    )
    dev.collect(0.3)
    msgs = dev.detections(1.5)
    assert len(msgs) >= 6
    assert any(o["label"] == "face" for m in msgs for o in m["objects"])
    assert "handling an incoming message failed" not in agent.output()

    # Whatever valid random settings were persisted, the agent starts again with them.
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    dev.drain()
    again = run_agent(config)
    dev.next_message(lambda t, p: t == f"{base}/detections", timeout=30)  # subscribed by now
    assert dev.ping()["ok"] is True
    assert again.proc.poll() is None


# --- CommandProcessor on its own ------------------------------------------------------------


class FakeAgent:
    """What the command handlers act on (CommandTargets), with the real config validation;
    counts the calls that reach each target."""

    def __init__(self) -> None:
        self.config = Config(device_id="unit")
        self.calls: Counter[str] = Counter()
        agent = self

        class Model:
            @property
            def info(self) -> ServingInfo:
                return ServingInfo(
                    "face", "1.0.0", ("face",), "0" * 64, "tflite", "anchors", "config", "m.tflite"
                )

        class Usage:
            def uptime_s(self) -> float:
                agent.calls["ping"] += 1
                return float(agent.calls["ping"])

        class Settings:
            def apply(self, patch: dict[str, Any]) -> dict[str, Any]:
                agent.calls["config/set"] += 1
                agent.config = merged(agent.config, patch)
                return {
                    "detection": agent.config.detection.model_dump(),
                    "fps": agent.config.source.fps,
                }

        class Snaps:
            def take(self, camera: str | None = None) -> dict[str, Any]:
                agent.calls["snapshot"] += 1
                raise CommandError("no frame has been processed yet")

        class OneCamera:
            single = True
            names: ClassVar[list[str]] = ["main"]

        # No registry: model/update and model/rollback are refused before reaching anything.
        self.targets = CommandTargets(
            model=Model(),
            usage=Usage(),
            settings=Settings(),
            snapshots=Snaps(),
            cameras=OneCamera(),
            updates=None,
        )


def _valid_command_body(payload: bytes) -> bool:
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and isinstance(body.get("id"), str) and 0 < len(body["id"]) <= 128


def check_handle(name: str, payload: bytes) -> None:
    agent = FakeAgent()
    processor = CommandProcessor(agent.targets)
    got_name, reply = processor.handle(name, payload)
    assert got_name == name
    assert reply is not None  # only a deferred model/update replies later, and this one refuses
    body = _strict_json(reply)
    assert _is_reply(body), body
    if name not in COMMANDS or not _valid_command_body(payload):
        assert body["ok"] is False
        assert sum(agent.calls.values()) == 0
    if body["ok"]:
        assert sum(agent.calls.values()) == 1
        assert body["id"] == json.loads(payload)["id"]
    assert processor.handled + processor.rejected <= 1


def check_shaped(name: str, body: dict[str, Any]) -> None:
    agent = FakeAgent()
    before = agent.config.model_dump()
    _, reply = CommandProcessor(agent.targets).handle(name, json.dumps(body).encode())
    assert reply is not None
    out = _strict_json(reply)
    assert _is_reply(out), out
    allowed = {"id"} | {
        "config/set": {"detection", "source", "publish", "motion", "camera"},
        "model/update": {"name", "version", "channel", "allow_downgrade", "replace"},
    }.get(name, set())
    if not set(body) <= allowed:
        assert out["ok"] is False
        assert "unknown key" in out["error"] or "not valid JSON" in out["error"], out
    if name == "config/set" and not out["ok"]:
        assert agent.config.model_dump() == before  # a refused change changes nothing
    if out["ok"]:
        assert name in ("ping", "config/set")
        for section in ("detection", "source", "publish"):
            for key, value in (body.get(section) or {}).items():
                # "mode" is the former name of publish.detections, which wins when both are given
                if (section, key) == ("publish", "mode") and "detections" in body[section]:
                    continue
                attr = "detections" if (section, key) == ("publish", "mode") else key
                live = getattr(getattr(agent.config, section), attr)
                assert live == value and type(value) is not bool, (section, key, value)


# Ten cases per example: the same coverage as one each, in a third of the time.
@settings(max_examples=120, deadline=None, database=None)
@given(st.lists(st.tuples(command_names, payloads), min_size=5, max_size=10))
def test_handle_never_raises_and_always_replies_with_json(cases: list[tuple[str, bytes]]):
    for name, payload in cases:
        check_handle(name, payload)


@settings(max_examples=80, deadline=None, database=None)
@given(
    st.lists(st.tuples(st.sampled_from(sorted(COMMANDS)), command_bodies), min_size=5, max_size=10)
)
def test_commands_shaped_like_the_schemas_are_accepted_only_when_valid(
    cases: list[tuple[str, dict[str, Any]]],
):
    for name, body in cases:
        check_shaped(name, body)


@settings(max_examples=200, deadline=None, database=None)
@given(
    script=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["ping", "config/set"])),
        min_size=1,
        max_size=30,
    ),
    threshold=st.floats(0, 1),
)
def test_a_repeated_id_replays_the_first_reply(script: list[tuple[str, str]], threshold: float):
    agent = FakeAgent()
    processor = CommandProcessor(agent.targets)
    first: dict[tuple[str, str], bytes] = {}
    last_name: dict[str, str] = {}
    runs = 0
    for cmd_id, name in script:
        body: dict[str, Any] = {"id": cmd_id}
        if name == "config/set":
            body["detection"] = {"score_threshold": threshold}
            threshold = (threshold + 0.1) % 1
        _, reply = processor.handle(name, json.dumps(body).encode())
        if last_name.get(cmd_id) == name:
            assert reply == first[(cmd_id, name)]  # replayed, not run
        else:
            runs += 1
            first[(cmd_id, name)] = reply
        last_name[cmd_id] = name
    assert sum(agent.calls.values()) == runs
