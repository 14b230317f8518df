"""The motion gate on real video: a still scene keeps the model idle between rechecks, the street
video runs it, a lighting step stops counting within seconds, a mask hides what moves under it;
the `motion:` and `masks:` config keys are validated."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import parse_config
from agent.detection import Detector
from agent.errors import ConfigError
from agent.motion import Motion, MotionGate, MotionSettings
from agent.pipeline import Pipeline, Result
from agent.sources import open_source
from tests.conftest import MEDIA, MODELS

FPS = 25.0


def read_video(path: Path, count: int | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    while count is None or len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert frames, path
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def verdicts(gate: MotionGate, frames: list[np.ndarray], fps: float = FPS) -> list[Motion]:
    """The gate's verdict on each frame, at the video's own timing."""
    return [gate.check(frame, i / fps) for i, frame in enumerate(frames)]


def run_gated(
    video: Path, settings: MotionSettings, *, realtime: bool, seconds: float = 60.0
) -> tuple[list[Result], Pipeline]:
    """Every frame of ``video`` through a pipeline with the gate and the face model."""
    detector = Detector.load(MODELS / "face-short-range.tflite", threads=1)
    source = open_source(str(video), realtime=realtime)
    results: list[Result] = []
    pipeline = Pipeline(source, detector, results.append, gate=MotionGate(settings))
    source.start()
    pipeline.start()
    try:
        assert pipeline.finished.wait(seconds), "the pipeline did not finish the file"
    finally:
        pipeline.stop()
        source.stop()
        detector.close()
    return results, pipeline


@pytest.fixture(scope="module")
def bikes() -> list[np.ndarray]:
    return read_video(MEDIA / "bikes.mp4")


def test_a_still_video_runs_the_model_only_at_the_rechecks(tmp_path, bikes):
    still = write_video(tmp_path / "still.mp4", [bikes[0]] * 75)  # 3 s of one frame
    results, pipeline = run_gated(still, MotionSettings(recheck_s=1.0), realtime=True)
    stats = pipeline.stats
    assert stats.frames == 75
    # The first frame (nothing known yet) and one per recheck_s of the 3 s: nothing in between.
    assert 2 <= stats.inferences <= 4, stats.snapshot()
    assert stats.skipped_no_motion == stats.frames - stats.inferences
    ran_at = [r.frame.mono for r in results]
    # recheck_s counts from when the last frame went to the model, a little after its capture:
    # capture times may be up to one frame (40 ms at 25 fps) closer than recheck_s
    assert all(b - a >= 1.0 - 0.04 for a, b in itertools.pairwise(ran_at)), ran_at
    assert all(r.motion is not None and not r.motion.moving for r in results)
    snapshot = stats.snapshot()
    assert snapshot["inferences"] == stats.inferences
    assert snapshot["skipped_no_motion"] == stats.skipped_no_motion


def test_a_still_file_read_losslessly_skips_every_frame_after_the_first(tmp_path, bikes):
    still = write_video(tmp_path / "still.mp4", [bikes[0]] * 40)
    results, pipeline = run_gated(still, MotionSettings(recheck_s=600), realtime=False)
    assert [r.frame.id for r in results] == [0]
    assert pipeline.stats.skipped_no_motion == 39


def test_the_street_video_runs_the_model_on_its_moving_frames():
    results, pipeline = run_gated(
        MEDIA / "bikes.mp4", MotionSettings(recheck_s=600), realtime=False
    )
    stats = pipeline.stats
    assert stats.frames == 250
    assert stats.inferences >= 0.9 * stats.frames, stats.snapshot()
    moving = [r.motion for r in results[1:]]
    assert all(m is not None and m.moving and m.box is not None for m in moving)


def test_the_gate_off_runs_the_model_on_every_frame(tmp_path, bikes):
    still = write_video(tmp_path / "still.mp4", [bikes[0]] * 30)
    results, pipeline = run_gated(still, MotionSettings(enabled=False), realtime=False)
    assert len(results) == 30 and pipeline.stats.skipped_no_motion == 0
    assert all(r.motion is None for r in results)


def test_a_brightness_step_stops_counting_as_motion_within_seconds(tmp_path, bikes):
    step_at = 50  # 2 s in: the lights go on, the whole scene x1.5
    frames = [bikes[0]] * step_at + [cv2.convertScaleAbs(bikes[0], alpha=1.5)] * 200
    video = read_video(write_video(tmp_path / "step.mp4", frames))  # as decoded, not as made
    seen = verdicts(MotionGate(MotionSettings()), video)
    assert not any(m.moving for m in seen[:step_at])
    assert seen[step_at].moving  # the step itself is a change
    still_from = next(i for i in range(step_at, len(seen)) if not any(m.moving for m in seen[i:]))
    assert (still_from - step_at) / FPS <= 3.0, f"moving for {(still_from - step_at) / FPS} s"


def test_a_light_over_part_of_the_scene_stops_counting_within_seconds(tmp_path, bikes):
    # Half the scene x1.5: too little of the frame to re-seed at once, so the background's
    # adaptation must absorb it.
    lit = bikes[0].copy()
    half = lit.shape[1] // 2
    lit[:, :half] = cv2.convertScaleAbs(bikes[0][:, :half], alpha=1.5)
    video = read_video(write_video(tmp_path / "lamp.mp4", [bikes[0]] * 50 + [lit] * 150))
    seen = verdicts(MotionGate(MotionSettings()), video)
    assert seen[50].moving and seen[51].moving  # it counts for a moment
    last = max(i for i, m in enumerate(seen) if m.moving)
    assert (last - 50) / FPS <= 3.0, f"moving for {(last - 50) / FPS} s"


def test_a_slow_dimming_never_counts_as_motion(tmp_path, bikes):
    # A cloud: the scene loses a third of its light over 4 s.
    frames = [cv2.convertScaleAbs(bikes[0], alpha=1 - i / 300) for i in range(100)]
    seen = verdicts(MotionGate(MotionSettings()), read_video(write_video(tmp_path / "d.mp4", frames)))
    assert not any(m.moving for m in seen)


def moving_patch_video(tmp_path: Path, bikes: list[np.ndarray]) -> list[np.ndarray]:
    """The first street frame, still, with the real street's motion in its right third only."""
    w = bikes[0].shape[1]
    x0 = 2 * w // 3
    frames = []
    for frame in bikes[:100]:
        composed = bikes[0].copy()
        composed[:, x0:] = frame[:, x0:]
        frames.append(composed)
    return read_video(write_video(tmp_path / "patch.mp4", frames))


def test_motion_is_boxed_where_it_is(tmp_path, bikes):
    seen = verdicts(MotionGate(MotionSettings()), moving_patch_video(tmp_path, bikes))
    moving = [m for m in seen if m.moving]
    assert len(moving) >= 50
    for m in moving:
        assert m.box is not None and m.box[0] >= 0.6, m  # in the right third (a pixel of blur)
        assert 0 < m.area <= 0.34


def test_a_mask_over_the_moving_area_makes_the_scene_still(tmp_path, bikes):
    masks = [[(0.66, 0.0), (1.0, 0.0), (1.0, 1.0), (0.66, 1.0)]]
    seen = verdicts(MotionGate(MotionSettings(), masks), moving_patch_video(tmp_path, bikes))
    assert not any(m.moving for m in seen)


def test_min_area_and_threshold_decide_what_counts(tmp_path, bikes):
    video = moving_patch_video(tmp_path, bikes)
    everything = sum(m.moving for m in verdicts(MotionGate(MotionSettings()), video))
    big_only = MotionGate(MotionSettings(min_area=0.5))  # more than the right third can hold
    assert not any(m.moving for m in verdicts(big_only, video))
    deaf = MotionGate(MotionSettings(threshold=255))
    assert not any(m.moving for m in verdicts(deaf, video))
    assert everything > 0


def test_motion_config_defaults_and_values():
    config = parse_config("motion: {threshold: 40, recheck_s: 2}\nmasks: [[[0, 0], [1, 0], [1, 0.1]]]\n")
    assert config.motion.enabled and config.motion.threshold == 40
    assert config.motion.min_area == 0.002 and config.motion.recheck_s == 2
    assert config.masks == [[(0, 0), (1, 0), (1, 0.1)]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("motion: {threshold: 0}\n", "motion.threshold: Input should be greater than or equal to 1"),
        ("motion: {min_area: 2}\n", "motion.min_area: Input should be less than or equal to 1"),
        ("motion: {recheck_s: 0}\n", "motion.recheck_s: Input should be greater than 0"),
        ("motion: {enabel: true}\n", "motion.enabel: unknown key (did you mean motion.enabled?)"),
        ("masks: [[[0, 0], [1, 0]]]\n", "masks: Value error, mask 0 has 2 points"),
        ("masks: [[[0, 0], [1, 0], [1.5, 1]]]\n", "masks: Value error, mask 0: point [1.5, 1] is outside the frame"),
    ],
)
def test_bad_motion_config_is_refused_naming_the_key(text, message):
    with pytest.raises(ConfigError, match=re.escape(f"camera.yaml:2: {message}")):
        parse_config("\n" + text, "camera.yaml")



def test_an_agent_on_a_still_scene_reports_skipped_frames_and_rechecks_over_mqtt(
    tmp_path, bikes, broker, subscriber, write_config, run_agent, assets
):
    still = write_video(tmp_path / "still.mp4", [bikes[0]] * 50)
    sub = subscriber("edge-agent/cam-still/#")
    config = {
        "device_id": "cam-still",
        "source": {"uri": str(still), "fps": 10, "loop": True},
        "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5},
        "motion": {"recheck_s": 2},
        "publish": {"metrics_interval_s": 1},
    }
    run_agent(write_config(config))
    sub.wait_for("/status", lambda s: s["state"] == "online")
    metrics = sub.wait_for("/metrics", lambda m: m["frames"] >= 40, timeout=60)
    assert metrics["skipped_no_motion"] > 0
    assert metrics["inferences"] + metrics["skipped_no_motion"] == metrics["frames"]
    # One model run per recheck_s (and the first frame); the rest skipped.
    assert metrics["inferences"] <= metrics["frames"] / 4, metrics
    # The rechecks still publish: a detections message every recheck_s, not every frame.
    detections = [sub.wait_for("/detections", timeout=10) for _ in range(2)]
    assert detections[1]["frame"]["id"] - detections[0]["frame"]["id"] >= 10


def test_bench_static_measures_the_still_scene_with_the_gate_off_and_on():
    model = str(MODELS / "face-short-range.tflite")
    out = subprocess.run(
        [sys.executable, "-m", "agent", "bench", model, "--static", "--seconds", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["fps_cap"] == 5 and result["recheck_s"] == 10
    # Off: a model run per frame at the 5 fps cap; on: the still scene runs it at most once
    # (a recheck) in the 3 s, every other frame is the gate's.
    assert result["gate_off_inferences"] >= 10
    assert result["gate_on_inferences"] <= 1 and result["gate_on_frames"] >= 10
    assert result["gate_off_cpu_s"] > 0 and result["gate_on_cpu_s"] > 0
