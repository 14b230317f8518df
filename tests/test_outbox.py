"""Nothing is lost: the disk outbox on its own, and the agent across a broker outage, a broker
restart and a kill -9, against a real mosquitto."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.localbroker import LocalBroker, mosquitto_binary
from agent.publish.outbox import Outbox
from tests.conftest import MEDIA


def test_outbox_assigns_consecutive_seq_that_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    assert [box.put("t", lambda s: str(s).encode()) for _ in range(3)] == [1, 2, 3]
    box.ack([m.id for m in box.peek()[:2]])
    box.close()
    box = Outbox(path)
    assert box.depth == 1
    assert [(m.seq, m.payload) for m in box.peek()] == [(3, b"3")]
    assert box.put("t", lambda s: b"x") == 4
    box.close()


def test_outbox_keeps_order_and_acks_out_of_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for _ in range(5):
        box.put("t", lambda s: b"")
    first = box.peek(limit=5)
    box.ack([first[3].id, first[1].id])
    assert [m.seq for m in box.peek()] == [1, 3, 5]
    assert [m.seq for m in box.peek(after_id=first[2].id)] == [5]


def test_full_outbox_drops_the_oldest_counts_them_and_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_messages=100)
    payload = b"x" * 2000
    for _ in range(100):
        box.put("t", lambda s: payload)
    size_at_bound = sum(p.stat().st_size for p in tmp_path.iterdir())
    for _ in range(2000):
        box.put("t", lambda s: payload)
    assert box.depth == 100
    assert box.dropped == 2000
    assert [m.seq for m in box.peek(limit=1)] == [2001]
    assert box.last_seq == 2100
    # SQLite reuses the freed pages: 20x the messages, not 20x the disk.
    size_after = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert size_after < 3 * size_at_bound + 1_000_000


class DurableSubscriber:
    """A subscriber with a persistent session (clean_session=False, QoS 1), as a real consumer
    of detections would be, so the broker keeps its messages while it reconnects."""

    def __init__(self, port: int, topic: str) -> None:
        self.seqs: queue.Queue[int] = queue.Queue()
        self.received: list[int] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"durable-{os.getpid()}-{time.monotonic_ns()}",
            clean_session=False,
        )
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_message = lambda c, u, m: self.seqs.put(json.loads(m.payload)["seq"])
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def collect(self, until: Any, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(self.received):
            with contextlib.suppress(queue.Empty):
                self.received.append(self.seqs.get(timeout=0.2))
        return self.received

    def drain(self, quiet: float = 2.0) -> list[int]:
        while True:
            try:
                self.received.append(self.seqs.get(timeout=quiet))
            except queue.Empty:
                return self.received

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def durable_broker():
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    with LocalBroker(persistence=True) as b:
        yield b


def outage_config(port: int, assets: Path) -> dict[str, Any]:
    return {
        "device_id": "cam-outage",
        "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 10, "loop": True},
        "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5, "reconnect_max_s": 2},
    }


def assert_no_gaps(seqs: list[int]) -> None:
    unique = sorted(set(seqs))
    assert unique == list(range(unique[0], unique[-1] + 1)), "gap in seq"
    # In order: each seq first appears after its predecessor (QoS 1 may repeat, never reorder).
    first_seen = {}
    for i, s in enumerate(seqs):
        first_seen.setdefault(s, i)
    assert [first_seen[s] for s in unique] == sorted(first_seen[s] for s in unique)


def test_broker_stopped_for_20_s_loses_no_detection(
    durable_broker, write_config, run_agent, assets
):
    sub = DurableSubscriber(durable_broker.port, "edge-agent/cam-outage/detections")
    agent = run_agent(write_config(outage_config(durable_broker.port, assets)))
    before = sub.collect(lambda r: len(r) >= 5, timeout=60)
    assert len(before) >= 5
    durable_broker.stop()
    time.sleep(20)
    durable_broker.start()
    # Frames kept coming during the outage (~10 per second): wait for them and some new ones.
    target = before[-1] + 150
    sub.collect(lambda r: r and max(r) >= target, timeout=90)
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    seqs = sub.drain()
    sub.close()
    assert max(seqs) >= target, agent.output()
    assert_no_gaps(seqs)
    print(f"received {len(seqs)} messages, {len(seqs) - len(set(seqs))} duplicates")


def test_messages_queued_before_a_kill_9_arrive_after_restart(
    durable_broker, write_config, run_agent, assets
):
    sub = DurableSubscriber(durable_broker.port, "edge-agent/cam-outage/detections")
    config = write_config(outage_config(durable_broker.port, assets))
    first = run_agent(config)
    sub.collect(lambda r: len(r) >= 3, timeout=60)
    durable_broker.stop()
    time.sleep(4)  # ~40 detections go to the outbox
    first.signal(signal.SIGKILL)
    first.wait(10)
    last_delivered = max(sub.drain(quiet=0.5))
    durable_broker.start()
    second = run_agent(config)
    target = last_delivered + 60
    sub.collect(lambda r: r and max(r) >= target, timeout=90)
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
    seqs = sub.drain()
    sub.close()
    assert max(seqs) >= target, second.output()
    assert_no_gaps(seqs)
    assert "undelivered messages from before" in second.output()
