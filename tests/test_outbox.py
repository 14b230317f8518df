"""Nothing is lost: the disk outbox on its own, and the agent across a broker outage, a broker
restart and a kill -9, against a real mosquitto."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.publish.outbox import Outbox
from tests.conftest import MEDIA, Subscriber


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


# --- a full disk: reported, retried, nothing stored is lost; QoS 0 deleted only once written ---


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MB filesystem (tmpfs) to fill up, as an SD card fills."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small filesystem with")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem has not one byte left."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="No space left"):
        (folder / "probe").write_bytes(b"x")
    return filler


def test_a_full_disk_refuses_new_messages_keeps_the_stored_ones_and_recovers(
    small_disk: Path,
) -> None:
    box = Outbox(small_disk / "outbox.sqlite", retry_max_s=0.2)
    for _ in range(20):
        assert box.put("t", lambda s: b"x" * 500) is not None
    stored = box.peek(limit=100)
    filler = fill(small_disk)
    results = [box.put("t", lambda s: b"y" * 500) for _ in range(300)]
    assert None in results  # the disk is full: refused, not raised
    assert box.error is not None and "full" in box.error
    box.ack([m.id for m in stored[:10]])  # delivered meanwhile: kept to delete later
    time.sleep(0.3)
    box.retry()  # still full: still kept, no exception
    assert box.error is not None
    accepted = [r for r in results if r is not None]
    filler.unlink()
    time.sleep(0.3)  # past the backoff
    box.retry()
    assert box.error is None
    seq = box.put("t", lambda s: b"z")
    assert seq == 20 + len(accepted) + 1  # no seq was spent on a refused message
    left = box.peek(limit=1000)
    assert [m.seq for m in left] == list(range(11, seq + 1))
    assert box.depth == len(left)
    assert box.refused == results.count(None)
    box.close()


def outbox_error(status: dict[str, Any]) -> object:
    return status.get("outbox", {}).get("error")


def test_a_full_disk_is_reported_and_delivery_resumes_when_space_is_back(
    durable_broker, small_disk, write_config, run_agent, assets
):
    sub = DurableSubscriber(durable_broker.port, "edge-agent/cam-outage/detections")
    config = outage_config(durable_broker.port, assets)
    agent = run_agent(write_config({**config, "store": {"path": str(small_disk)}}))
    before = sub.collect(lambda r: len(r) >= 5, timeout=60)
    durable_broker.stop()
    time.sleep(3)  # ~30 detections queue up in the outbox
    filler = fill(small_disk)
    deadline = time.monotonic() + 30
    while "cannot be written" not in agent.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "cannot be written" in agent.output(), agent.output()
    durable_broker.start()
    # The drainer delivers what was queued although the disk cannot record the deliveries,
    # and the retained status says why nothing new is stored.
    status = Subscriber(durable_broker.port, ["edge-agent/cam-outage/status"])
    try:
        full = status.wait_for("/status", lambda s: "full" in str(outbox_error(s)))
        assert full["stuck"] == [], full
        queued_max = max(sub.collect(lambda r: False, timeout=5))
        assert agent.proc.poll() is None
        filler.unlink()
        status.wait_for(
            "/status", lambda s: s["state"] == "online" and outbox_error(s) is None, timeout=30
        )
        sub.collect(lambda r: max(r) >= queued_max + 20, timeout=60)
    finally:
        status.close()
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    seqs = sub.drain()
    sub.close()
    assert seqs[0] == before[0] and max(seqs) >= queued_max + 20, agent.output()
    assert_no_gaps(seqs)  # nothing queued was lost; refused ones never took a seq
    out = agent.output()
    # ERROR once, then quiet retries (the events store, on the same disk, says so on its own)
    outbox_lines = [line for line in out.splitlines() if "agent.outbox: outbox" in line]
    assert sum("cannot be written" in line for line in outbox_lines) == 1, out
    assert "writable again" in out


def test_qos0_messages_stay_queued_until_paho_has_written_them(broker, subscriber, tmp_path):
    """A broker that hangs (SIGSTOP) and then dies: paho accepted the QoS 0 messages it could
    not write and dropped them at the reconnect; the outbox still has them and sends them."""
    from agent.config import MqttConfig
    from agent.publish import MqttPublisher

    box = Outbox(tmp_path / "o.sqlite")
    mqtt_config = MqttConfig(host="127.0.0.1", port=broker.port, keepalive=120)
    publisher = MqttPublisher(mqtt_config, "qos0", outbox=box)
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGSTOP)  # reads nothing more: socket buffers fill
        padding = "p" * 100_000
        total = 400  # 40 MB: far more than the kernel buffers of one loopback connection
        for _ in range(total):
            publisher.send(
                "edge-agent/qos0/detections",
                lambda seq: json.dumps({"seq": seq, "pad": padding}).encode(),
                qos=0,
            )
        depth, still = box.depth, 0.0
        while still < 1.5:  # until the drainer and paho have done what they can
            time.sleep(0.5)
            still = still + 0.5 if box.depth == depth else 0.0
            depth = box.depth
        assert depth > 0, "every QoS 0 message was deleted although paho could not write it"
        os.kill(broker.process.pid, signal.SIGKILL)
        broker.process.wait()
        broker.stop()
        broker.start()
        sub = subscriber("edge-agent/qos0/detections")
        seqs: list[int] = []
        deadline = time.monotonic() + 60
        while (not seqs or seqs[-1] < total) and time.monotonic() < deadline:
            seqs.append(sub.wait_for("/detections", timeout=60)["seq"])
        # The first ones were written into the socket of the broker that died (QoS 0: at most
        # once); every one paho had not written arrives, in order, up to the last.
        assert seqs and seqs[-1] == total and len(seqs) >= depth
        assert seqs == list(range(seqs[0], total + 1))
        deadline = time.monotonic() + 10
        while box.depth and time.monotonic() < deadline:
            time.sleep(0.1)
        assert box.depth == 0
    finally:
        publisher.close(timeout=1)


def test_pahos_repeated_not_connected_line_is_debug_not_a_warning() -> None:
    """paho says "Client is not connected" on every loop turn after a disconnect, a clean stop
    included: it must not reach a user's log as a warning (the disconnect is reported once)."""
    import logging

    from agent.publish import mqtt as mqtt_module

    flt = mqtt_module._LostConnectionIsAWarning()
    repeat = logging.LogRecord(
        "agent.mqtt.paho", logging.ERROR, __file__, 1, "Client is not connected. Socket: None)", (), None
    )
    assert flt.filter(repeat) is False  # dropped unless paho's logger is at debug level
    assert repeat.levelno == logging.DEBUG
    lost = logging.LogRecord(
        "agent.mqtt.paho", logging.ERROR, __file__, 1, "failed to receive on socket: reset", (), None
    )
    assert flt.filter(lost) is True
    assert lost.levelno == logging.WARNING


def test_each_topic_counts_its_own_seq_and_a_new_one_goes_on_from_the_highest(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    assert [box.put("a", lambda s: b"") for _ in range(3)] == [1, 2, 3]
    assert [box.put("b", lambda s: b"") for _ in range(2)] == [4, 5]  # from the highest so far
    assert box.put("a", lambda s: b"") == 4  # "a" counts on its own: no gap for its subscriber
    assert box.last_seq == 5 and box.last_seq_of("a") == 4 and box.last_seq_of("c") is None
    box.close()
    again = Outbox(tmp_path / "o.sqlite")  # it survives a restart
    assert again.put("b", lambda s: b"") == 6 and again.put("a", lambda s: b"") == 5
    again.close()
