"""Split inference between two real agent processes over a real mosquitto: the head runs the
person model's first layers, the tail the rest; the head falls back to running the whole model
when the tail dies, and goes back to splitting when the tail returns."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import cv2
import pytest

from agent.detection import Detector
from tests.conftest import MEDIA, iou

pytest.importorskip("onnx")

HEAD, TAIL = "cam-split", "gw-split"


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    (folder / "astronaut.png").write_bytes((MEDIA / "astronaut.png").read_bytes())
    return folder


@pytest.fixture(scope="module")
def mid_cut(assets: Path) -> str:
    from agent.split.partition import list_cuts

    inner = [
        c for c in list_cuts(assets / "person-yolov8s.onnx", max_tensors=1) if c.kind == "split"
    ]
    return inner[len(inner) // 2].id


@pytest.fixture(scope="module")
def expected(assets: Path) -> list[Any]:
    """What one agent running the whole model finds on the photo."""
    detector = Detector.load(assets / "person-yolov8s.onnx", threads=2)
    detections, _ = detector.detect(cv2.imread(str(MEDIA / "astronaut.png")))
    detector.close()
    assert detections
    return detections


def configs(
    port: int, assets: Path, folder: Path, cut: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    mqtt = {"host": "127.0.0.1", "port": port, "keepalive": 5}
    model = {"path": str(assets / "person-yolov8s.onnx"), "threads": 1}
    tail = {"device_id": TAIL, "model": model, "mqtt": mqtt, "split": {"role": "tail"}}
    head = {
        "device_id": HEAD,
        "source": {"uri": str(folder), "fps": 2, "loop": True},
        "model": model,
        "mqtt": mqtt,
        "publish": {"metrics_interval_s": 1},
        "split": {"role": "head", "peer": TAIL, "at": cut, "deadline_ms": 2500, "max_misses": 1},
    }
    return head, tail


def assert_same(objects: list[dict[str, Any]], expected: list[Any]) -> None:
    assert len(objects) == len(expected)
    for want in expected:
        best = max(objects, key=lambda o: iou(o["box"], want.box))
        assert best["label"] == want.label
        assert iou(best["box"], want.box) > 0.98
        assert abs(best["score"] - want.score) < 0.02


@pytest.mark.slow
def test_head_and_tail_agents_detect_like_one_and_survive_the_tail(
    broker, subscriber, write_config, run_agent, assets, photo_folder, mid_cut, expected, tmp_path
):
    head_cfg, tail_cfg = configs(broker.port, assets, photo_folder, mid_cut)
    sub = subscriber(f"edge-agent/{HEAD}/#", f"edge-agent/{TAIL}/status")
    tail_path = write_config({**tail_cfg, "store": {"path": str(tmp_path / "tail")}}, "tail.yaml")
    tail = run_agent(tail_path)
    sub.wait_for(f"{TAIL}/status", lambda s: s["state"] == "online", timeout=60)
    head = run_agent(write_config(head_cfg, "head.yaml"))

    # Split: the tail computes every frame and the head publishes what one agent would.
    split = sub.wait_for(
        "/metrics", lambda m: m["split"]["remote_frames"] >= 2 and m["split"]["cut"] == mid_cut, 90
    )
    assert split["split"]["peer_state"] == "online"
    assert_same(sub.wait_for("/detections")["objects"], expected)

    # The tail dies without a word (no "stopped" status). Either a request was in flight and
    # the head misses one deadline, or the broker saw the socket close and published the tail's
    # last will first: the head runs the whole model itself and keeps publishing.
    tail.signal(signal.SIGKILL)
    tail.wait(10)
    local = sub.wait_for(
        "/metrics",
        lambda m: (
            (m["split"]["late_frames"] >= 1 or m["split"]["peer_state"] == "offline")
            and m["split"]["local_frames"] >= split["split"]["local_frames"] + 2
        ),
        60,
    )
    assert local["split"]["mode"] == "local"
    assert_same(sub.wait_for("/detections")["objects"], expected)
    assert head.proc.poll() is None

    # The tail comes back: its retained status says online and the head splits again.
    run_agent(tail_path)
    back = sub.wait_for(
        "/metrics",
        lambda m: m["split"]["remote_frames"] > local["split"]["remote_frames"],
        90,
    )
    assert back["split"]["mode"] == "remote"
    assert_same(sub.wait_for("/detections")["objects"], expected)
    head.signal(signal.SIGTERM)
    assert head.wait(30) == 0
