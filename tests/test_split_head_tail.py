"""A split head and a tail agent in one process over a real mosquitto, with a small real
convolutional model: the head re-plans its cut from what it measures (a token-bucket link far
slower than the plan assumed), and bad or mismatched requests are refused without harm."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.config import Config, SplitConfig
from agent.detection import Detection, Detector, DetectorSettings
from agent.localbroker import LocalBroker
from agent.publish import MqttPublisher
from agent.serving import RuntimeSpec
from agent.split.head import SplitCounters, SplitHead
from agent.split.tail import TailAgent

onnx = pytest.importorskip("onnx")


def conv_yolo(path: Path, size: int = 96, seed: int = 0) -> Path:
    """Eight convolutions to a YOLOv8-shaped output [1, 6, N]: real layers to cut between, heavy
    enough (~0.5 G multiply-adds) that a peer 50x faster is worth a fast link."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)

    n = (size // 2) ** 2
    nodes = [
        helper.make_node(
            "Conv", ["images", "w0"], ["c0"], "conv0", strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c0"], ["r0"], "relu0"),
    ]
    inits = [weight("w0", (64, 3, 3, 3))]
    for i in range(1, 7):
        nodes += [
            helper.make_node("Conv", [f"r{i - 1}", f"w{i}"], [f"c{i}"], f"conv{i}", pads=[1] * 4),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], f"relu{i}"),
        ]
        inits.append(weight(f"w{i}", (64, 64, 3, 3)))
    nodes += [
        helper.make_node("Conv", ["r6", "wh", "bh"], ["ch"], "head"),
        helper.make_node("Reshape", ["ch", "shape"], ["output0"], "reshape"),
    ]
    inits += [
        weight("wh", (6, 64, 1, 1)),
        # Boxes around the middle, class a just above the 0.25 threshold: one detection.
        numpy_helper.from_array(np.array([48, 48, 24, 24, 0.26, 0.1], np.float32), "bh"),
        numpy_helper.from_array(np.array([1, 6, n], np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, n])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    card = {
        "name": "conv-yolo",
        "version": "1",
        "format": "onnx",
        "family": "yolo",
        "input": {"width": size, "height": size, "layout": "NCHW"},
        "labels": ["a", "b"],
        "thresholds": {"score": 0.25, "iou": 0.45},
    }
    path.with_suffix(".card.yaml").write_text(yaml.safe_dump(card))
    return path


@pytest.fixture
def tail(broker: LocalBroker, tmp_path: Path) -> Iterator[TailAgent]:
    model = conv_yolo(tmp_path / "conv.onnx")
    config = Config.model_validate(
        {
            "device_id": "gw-replan",
            "model": {"path": model, "threads": 1},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "split": {"role": "tail"},
        }
    )
    agent = TailAgent(config)
    thread = threading.Thread(target=agent.run_forever, daemon=True)
    thread.start()
    yield agent
    agent.request_stop()
    thread.join(10)


def head_publisher(broker: LocalBroker) -> MqttPublisher:
    mqtt = Config.model_validate({"mqtt": {"host": "127.0.0.1", "port": broker.port}}).mqtt
    return MqttPublisher(mqtt, "cam-replan")


def test_a_slow_link_moves_the_cut_home_and_probes_keep_measuring(
    broker: LocalBroker, tail: TailAgent
) -> None:
    publisher = head_publisher(broker)
    split = SplitConfig(
        role="head",
        peer="gw-replan",
        at="auto",
        codec="raw",
        bandwidth_mbps=1000,  # the plan assumes a fast link and a much faster peer...
        peer_speedup=50,
        rtt_ms=0,
        link_mbps=2,  # ...the link is 2 Mbit/s
        deadline_ms=5000,
        probe_s=0.2,
    )
    head = SplitHead(split, publisher, spec=RuntimeSpec(threads=1))
    head.attach()
    publisher.start()
    detector = Detector.load(tail.model.path, threads=1)
    frame = np.random.default_rng(1).integers(0, 255, (96, 96, 3), np.uint8)
    try:
        deadline = time.monotonic() + 60
        first_cut: str | None = None
        while time.monotonic() < deadline:
            tensor, transform = detector.preprocess(frame)
            head.run(detector, tensor, transform, DetectorSettings())
            if first_cut is None and head.cut is not None and head.counters.remote:
                first_cut = head.cut
            if head.counters.replans and head.cut == "output":
                break
            time.sleep(0.01)
        assert first_cut is not None and first_cut != "output", (
            f"the first plan should use the peer: {first_cut}, {head.metrics()}, {head._profile}"
        )
        assert head.cut == "output", head.metrics()
        measured = head.link.bandwidth.value
        assert measured is not None and measured < 20, measured  # far from the assumed 1000
        # All local now, but a frame goes to the peer every probe_s to measure the link again.
        remote = head.counters.remote
        until = time.monotonic() + 30
        while head.counters.remote == remote and time.monotonic() < until:
            tensor, transform = detector.preprocess(frame)
            head.run(detector, tensor, transform, DetectorSettings())
            time.sleep(0.05)
        assert head.counters.remote > remote
        assert head.metrics()["peer_state"] == "online"
    finally:
        detector.close()
        publisher.close()


def assert_same(split: list[Detection], local: list[Detection]) -> None:
    assert [d.label for d in split] == [d.label for d in local]
    for a, b in zip(split, local, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert a.box == pytest.approx(b.box, abs=1e-5)


def prepare(head: SplitHead, detector: Detector, frame: np.ndarray) -> None:
    """The first frame starts preparing the split model in the background and runs whole here;
    wait for the model and for the tail, then count from zero."""
    tensor, transform = detector.preprocess(frame)
    head.run(detector, tensor, transform, DetectorSettings())
    assert head.counters.local == 1 and head.counters.remote == 0
    assert head.prepared.wait(30)
    wait_online(head)
    head.counters = SplitCounters()


def wait_online(head: SplitHead) -> None:
    until = time.monotonic() + 20
    while not head.peer_usable() and time.monotonic() < until:
        time.sleep(0.05)
    assert head.peer_usable(), head.metrics()


def test_garbage_requests_are_dropped_and_the_tail_keeps_serving(
    broker: LocalBroker, tail: TailAgent
) -> None:
    publisher = head_publisher(broker)
    head = SplitHead(
        SplitConfig(role="head", peer="gw-replan", at="c4", codec="raw", deadline_ms=5000),
        publisher,
    )
    head.attach()
    publisher.start()
    detector = Detector.load(tail.model.path, threads=1)
    frame = np.random.default_rng(2).integers(0, 255, (96, 96, 3), np.uint8)
    try:
        prepare(head, detector, frame)
        for junk in (b"", b"EASP", b"not a payload at all", b"EASP\x01\xff\xff\xff\xff{"):
            publisher.publish(head.request_topic, junk, qos=1).wait_for_publish(5)
        tensor, transform = detector.preprocess(frame)
        split, _, _ = head.run(detector, tensor, transform, DetectorSettings())
        local, _ = detector.detect(frame)
        assert head.counters.remote == 1 and head.counters.local == 0, head.metrics()
        assert local
        assert_same(split, local)
        assert tail.failed >= 4 and tail.served == 1
    finally:
        detector.close()
        publisher.close()


def test_a_tail_with_another_model_refuses_and_the_head_runs_the_frame_itself(
    broker: LocalBroker, tail: TailAgent, tmp_path: Path
) -> None:
    # Same layers, other weights: the digest differs, so the tail must refuse to finish it.
    (tmp_path / "other").mkdir()
    other = conv_yolo(tmp_path / "other" / "conv.onnx", seed=1)
    publisher = head_publisher(broker)
    head = SplitHead(
        SplitConfig(
            role="head", peer="gw-replan", at="c4", codec="raw", deadline_ms=5000, retry_s=60
        ),
        publisher,
    )
    head.attach()
    publisher.start()
    detector = Detector.load(other, threads=1)
    frame = np.random.default_rng(3).integers(0, 255, (96, 96, 3), np.uint8)
    try:
        prepare(head, detector, frame)
        tensor, transform = detector.preprocess(frame)
        split, _, _ = head.run(detector, tensor, transform, DetectorSettings())
        local, _ = detector.detect(frame)
        assert local
        assert_same(split, local)
        assert head.counters.refused == 1 and head.counters.local == 1
        assert "model mismatch" in str(head.metrics()["last_problem"])
        # Set aside for retry_s: the next frame does not even ask.
        head.run(detector, tensor, transform, DetectorSettings())
        assert head.counters.refused == 1 and head.counters.local == 2
        assert tail.failed == 1
    finally:
        detector.close()
        publisher.close()
