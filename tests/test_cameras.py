"""Several cameras in one agent (DESIGN.md sections 1, 5 and 7): the ``cameras:`` config, the
round-robin scheduler that shares the one model fairly, per-camera topics, status, metrics and
commands over a real mosquitto, a model swap for every camera between frames, and a lone
``source:`` that publishes what it did before."""

from __future__ import annotations

import itertools
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as cli_main
from agent.config import MAIN_CAMERA, parse_config
from agent.detection import Detector
from agent.errors import ConfigError
from agent.pipeline import Pipeline, Result
from agent.scheduler import Feed
from agent.serving import ModelSlot, RuntimeSpec
from agent.sources import open_source
from tests.conftest import MEDIA
from tests.test_commands import PREFIX, Device

CARPHONE = MEDIA / "carphone_pristine.mp4"
BIKES = MEDIA / "bikes.mp4"


# --- config ---------------------------------------------------------------------------------


def test_a_lone_source_is_the_camera_main() -> None:
    config = parse_config("source: {uri: /dev/video0, fps: 3}\n")
    assert config.single_camera
    cameras = config.camera_configs()
    assert list(cameras) == [MAIN_CAMERA]
    assert cameras[MAIN_CAMERA].source.uri == "/dev/video0"
    assert cameras[MAIN_CAMERA].source.fps == 3


def test_cameras_by_name_each_with_its_own_source_and_motion() -> None:
    config = parse_config(
        "cameras:\n"
        "  driveway: {source: {uri: rtsp://cam1.lan/s, fps: 5}, motion: {threshold: 30}}\n"
        "  door: {source: {uri: /dev/video0}, masks: [[[0, 0], [0.3, 0], [0.3, 0.2]]]}\n"
    )
    assert not config.single_camera
    cameras = config.camera_configs()
    assert list(cameras) == ["driveway", "door"]
    assert cameras["driveway"].motion.threshold == 30 and cameras["door"].motion.threshold == 25
    assert len(cameras["door"].masks) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "cameras:\n  a: {source: {fps: -1}}\n",
            "f.yaml:2: cameras.a.source.fps: Input should be greater than or equal to 0",
        ),
        (
            "cameras:\n  a: {motion: {treshold: 3}}\n",
            "cameras.a.motion.treshold: unknown key (did you mean cameras.a.motion.threshold?)",
        ),
        ("cameras:\n  a: {masks: [[[0, 0], [1, 1]]]}\n", "cameras.a.masks: Value error, mask 0"),
        ("cameras:\n  front door: {}\n", "camera name 'front door' is not topic-safe"),
        ("cameras:\n  a/b: {}\n", "camera name 'a/b' is not topic-safe"),
        ("cameras:\n  cmd: {}\n", "camera name 'cmd' is a topic of the device itself"),
        ("source: {fps: 2}\ncameras:\n  a: {}\n", "cameras: and a top-level source are exclusive"),
        ("masks: [[[0, 0], [1, 0], [1, 1]]]\ncameras:\n  a: {}\n", "top-level masks"),
    ],
)
def test_bad_camera_config_names_the_camera_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "f.yaml")
    assert expected in str(err.value)


def test_check_config_names_the_camera_of_a_bad_source(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "cameras:\n"
        "  good: {source: {uri: /dev/video0}}\n"
        "  yard: {source: {uri: 'rtps://cam.lan/stream'}}\n"
    )
    assert cli_main(["check-config", str(config)]) == 1  # as for a lone source: a problem
    err = capsys.readouterr().err
    assert "cameras.yard.source.uri" in err and "rtps://" in err


def test_relative_camera_files_are_beside_the_config(tmp_path: Path) -> None:
    from agent.config import load_config

    (tmp_path / "v.mp4").write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text("cameras:\n  a: {source: {uri: v.mp4}}\n")
    assert load_config(config).cameras["a"].source.uri == str(tmp_path / "v.mp4")


# --- the shared model: fairness and a swap for every camera ----------------------------------


def test_a_fast_camera_does_not_starve_a_slow_one(assets: Path, started: list[Any]) -> None:
    """25 fps and 2 fps cameras on one model that cannot keep up with both: each gets at least
    0.8 of its fair share (max-min: the slow one all its frames if that is under half)."""
    detector = Detector.load(assets / "person-yolov8s.onnx", threads=1)
    fast = open_source(str(BIKES), fps=0, loop=True)  # the file's own 25 fps
    slow = open_source(str(BIKES), fps=2, loop=True)
    results: list[Result] = []
    pipeline = Pipeline([Feed("fast", fast), Feed("slow", slow)], detector, results.append)
    started.extend([fast, slow, pipeline])
    fast.start()
    slow.start()
    time.sleep(1.0)  # both open
    pipeline.start()
    time.sleep(8.0)
    pipeline.stop()
    detector.close()
    offered = {"fast": fast.status.frames, "slow": slow.status.frames}
    got = {name: sum(r.camera == name for r in results) for name in offered}
    total = sum(got.values())
    assert got["fast"] + got["slow"] == len(results) > 4
    # max-min fair share: the slow camera all it offers, up to half; the fast one the rest
    slow_share = min(offered["slow"], total / 2)
    fast_share = min(offered["fast"], total - slow_share)
    assert got["slow"] >= 0.8 * slow_share, (got, offered)
    assert got["fast"] >= 0.8 * fast_share, (got, offered)
    stats = pipeline.camera_stats
    assert stats["slow"].inferences == got["slow"] and stats["fast"].inferences == got["fast"]
    assert pipeline.stats.inferences == total


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.serial
def test_a_model_swap_serves_every_camera_from_the_next_frame(
    assets: Path, started: list[Any]
) -> None:
    """Three cameras on the person model; a new model is put in service while they run: every
    camera's next results come from it, and none waits across the swap longer than its longest
    gap before the swap plus two model runs."""
    spec = RuntimeSpec(threads=1)
    slot = ModelSlot(spec)
    slot.serve(slot.load(assets / "person-yolov8s.onnx"), origin="config")
    # Loaded before the cameras start: what is timed is the swap, not the CPU a load takes.
    new = slot.load(assets / "person-yolov8s.onnx", card=assets / "person-fall-yolov8s.card.yaml")
    sources = [open_source(str(BIKES), fps=0, loop=True) for _ in range(3)]
    feeds = [Feed(name, s) for name, s in zip("abc", sources, strict=True)]
    results: list[Result] = []
    lock = threading.Lock()

    def keep(result: Result) -> None:
        with lock:
            results.append(result)

    pipeline = Pipeline(feeds, slot, keep)
    started.extend([*sources, pipeline])
    for source in sources:
        source.start()
    time.sleep(1.0)
    pipeline.start()

    def each_has(count: int, model: str) -> bool:
        with lock:
            return all(
                sum(r.camera == n and r.model_name == model for r in results) >= count
                for n in "abc"
            )

    _wait(lambda: each_has(4, "person"), 120)  # a usual gap to compare with, however slow
    swapped_at = time.time()
    old = slot.serve(new, origin="test")
    if old is not None:
        old.close()
    _wait(lambda: each_has(3, "person-fall"), 120)
    pipeline.stop()
    slot.close()
    with lock:
        done = list(results)
    before = [r for r in done if r.done_ts < swapped_at]
    after = [r for r in done if r.done_ts >= swapped_at]
    assert {r.model_name for r in before} == {"person"}
    cycle = statistics.median(b.done_ts - a.done_ts for a, b in itertools.pairwise(before))
    for name in "abc":
        mine_after = [r for r in after if r.camera == name]
        # the frame in flight at the swap may finish on the old model; every later one is new
        assert mine_after and all(r.model_name == "person-fall" for r in mine_after[1:]), name
        mine_before = [r.done_ts for r in before if r.camera == name]
        # against the longest gap it had before (a busy machine stretches some), plus two
        # model runs: a load or a warm-up on the pipeline's thread would cost far more
        longest = max(b - a for a, b in itertools.pairwise(mine_before))
        across = mine_after[0].done_ts - mine_before[-1]
        assert across <= longest + 2 * cycle, (name, across, longest, cycle)


# --- over MQTT: topics, status, metrics, commands ------------------------------------------


def cameras_config(port: int, assets: Path, videos: dict[str, Path]) -> dict[str, Any]:
    return {
        "device_id": "cams",
        "cameras": {
            name: {
                "source": {
                    "uri": str(video),
                    "fps": 5,
                    "loop": True,
                    "backoff_initial_s": 0.2,
                    "backoff_max_s": 1.0,
                },
                "motion": {"enabled": False},
            }
            for name, video in videos.items()
        },
        "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5},
        "publish": {"snapshot_max_bytes": 10_000, "metrics_interval_s": 1},
    }


def test_three_cameras_publish_apart_and_one_lost_leaves_the_others_publishing(
    broker, subscriber, write_config, run_agent, assets, tmp_path
):
    videos = {}
    for name in ("porch", "yard", "gate"):
        videos[name] = tmp_path / f"{name}.mp4"
        shutil.copy(CARPHONE, videos[name])
    sub = subscriber(f"{PREFIX}/cams/#")
    agent = run_agent(write_config(cameras_config(broker.port, assets, videos)))
    dev = Device(sub, "cams")
    base = dev.base
    status = sub.wait_for(
        "cams/status",
        lambda s: s["state"] == "online"
        and all(c["state"] == "connected" for c in s.get("cameras", {}).values()),
    )
    assert sorted(status["cameras"]) == ["gate", "porch", "yard"]
    assert "source" not in status  # the lone-source key; cameras: has the map only
    for name in videos:
        body = sub.wait_for(f"cams/{name}/detections", lambda b: bool(b["objects"]))
        assert body["camera"] == name
        assert {o["label"] for o in body["objects"]} == {"face"}
    metrics = sub.wait_for("cams/metrics", lambda m: m["cameras"]["gate"]["inferences"] > 0)
    for name in videos:
        figures = metrics["cameras"][name]
        assert {"fps", "frames", "inferences", "skipped_no_motion", "dropped"} <= set(figures)
    assert not any(t == f"{base}/detections" for t, _, _ in sub.seen)  # no device-wide stream

    # commands that concern a camera name it; a wrong name gets the list
    reply = dev.request("snapshot", {"id": dev.new_id("snap"), "camera": "yard"})
    assert reply["ok"], reply
    assert reply["result"]["topic"] == f"{base}/yard/snapshot"
    for body, error in [
        ({"camera": "garage"}, "no camera 'garage'; cameras: porch, yard, gate"),
        ({}, 'give "camera": one of porch, yard, gate'),
    ]:
        reply = dev.request("snapshot", {"id": dev.new_id("snap"), **body})
        assert not reply["ok"] and reply["error"] == error
    reply = dev.request("config/set", {"id": dev.new_id("c"), "source": {"fps": 1}})
    assert not reply["ok"] and "one of porch, yard, gate" in reply["error"]
    result = dev.config_set(camera="porch", source={"fps": 2}, motion={"threshold": 40})
    assert result["cameras"]["porch"]["source"]["fps"] == 2
    assert result["cameras"]["porch"]["motion"]["threshold"] == 40
    assert result["cameras"]["yard"]["source"]["fps"] == 5
    assert result["cameras"]["yard"]["motion"]["threshold"] == 25

    # the gate camera's file goes away: it is retried and reported, the others go on
    videos["gate"].unlink()
    status = sub.wait_for(
        "cams/status", lambda s: s["cameras"]["gate"]["state"] == "retrying", timeout=30
    )
    assert "no such file" in status["cameras"]["gate"]["last_error"]
    assert status["cameras"]["porch"]["state"] == "connected"
    for name in ("porch", "yard"):
        sub.wait_for(f"cams/{name}/detections")
    assert agent.proc.poll() is None


def test_a_lone_source_publishes_the_topics_and_keys_it_always_did(
    broker, subscriber, write_config, run_agent, assets
):
    sub = subscriber(f"{PREFIX}/solo/#")
    config = {
        "device_id": "solo",
        "source": {"uri": str(CARPHONE), "fps": 5, "loop": True},
        "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5},
        "publish": {"metrics_interval_s": 1},
    }
    run_agent(write_config(config))
    status = sub.wait_for(
        "solo/status", lambda s: s["state"] == "online" and s["source"]["state"] == "connected"
    )
    assert status["cameras"] == {MAIN_CAMERA: status["source"]}  # the old key stays, and the map
    for _ in range(3):
        body = sub.wait_for("solo/detections")
        # the keys of before, and "camera" (DESIGN.md section 5: "main" for a lone source)
        assert set(body) == {"seq", "ts", "frame", "model", "latency_ms", "objects", "camera"}
        assert body["camera"] == MAIN_CAMERA
    sub.wait_for("solo/metrics")
    topics = {t.removeprefix(f"{PREFIX}/solo/") for t, _, _ in sub.seen}
    # the topics of before, and the events' (C = B: events, objects/<label>[/snapshot])
    before = {"status", "detections", "model", "metrics"}
    assert {t for t in topics if t != "events" and not t.startswith("objects/")} <= before, topics
    snapshot_dev = Device(sub, "solo")
    reply = snapshot_dev.request("snapshot", {"id": snapshot_dev.new_id("s")})
    assert reply["ok"] and reply["result"]["topic"] == f"{PREFIX}/solo/snapshot", reply
    reply = snapshot_dev.request("snapshot", {"id": snapshot_dev.new_id("s"), "camera": "x"})
    assert reply["error"] == "no camera 'x'; cameras: main"


# --- the per-frame detections stream ---------------------------------------------------------


def _result(labels: list[str]) -> Result:
    import numpy as np

    from agent.detection import Detection, StageTimes
    from agent.sources import Frame

    frame = Frame(0, time.time(), np.zeros((4, 4, 3), np.uint8), "t", time.monotonic())
    detections = [Detection(label, 0, 0.9, (0.1, 0.1, 0.2, 0.2)) for label in labels]
    return Result(frame, detections, StageTimes(), "m", "1", time.time())


def test_the_detections_stream_is_on_change_by_default_and_can_be_every_frame_or_off() -> None:
    from agent.cameras import OnChange

    default = parse_config("").publish
    assert default.detections == "on_change"
    assert parse_config("publish: {mode: every_frame}\n").publish.detections == "every_frame"
    stream = OnChange()
    sent = [stream.due(_result(labels), default) for labels in (["a"], ["a"], ["a", "b"], [])]
    assert sent == [True, False, True, True]
    every = parse_config("publish: {detections: every_frame}\n").publish
    assert all(OnChange().due(_result(["a"]), every) for _ in range(3))
    off = parse_config("publish: {detections: off}\n").publish  # YAML's false, meant as "off"
    assert not any(OnChange().due(_result(labels), off) for labels in (["a"], ["b"]))
