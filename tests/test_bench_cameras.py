"""`edge-agent bench --cameras N`: N cameras on one model, measured next to one camera, each run
in its own process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import MEDIA, MODELS


def test_bench_cameras_reports_every_camera_next_to_a_one_camera_run(assets: Path) -> None:
    cmd = [
        sys.executable, "-m", "agent", "bench", str(MODELS / "face-short-range.tflite"),
        "--cameras", "2", "--seconds", "2", "--warmup", "1",
        "--source", str(MEDIA / "carphone_pristine.mp4"), "--json",
    ]  # fmt: skip
    # Its own process group: the bench and the two runs it starts are stopped together.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    one, two = result["one_camera"], result["n_cameras"]
    assert one["cameras"] == 1 and list(one["per_camera"]) == ["cam1"]
    assert two["cameras"] == 2 and list(two["per_camera"]) == ["cam1", "cam2"]
    for run in (one, two):
        for camera in run["per_camera"].values():
            assert camera["inferences"] > 0 and camera["fps"] > 0, run
            # counted over the same window: frames decoded just before it (in the source's
            # slot, in the pipeline's prepare stage) may be run by the model within it
            assert camera["decoded"] + 2 >= camera["inferences"], run
        assert run["inferences_per_s"] > 0 and run["cpu_percent"] > 0, run
        assert run["cpu_ms_per_inference"] > 0, run
        assert run["peak_rss_mb"] >= run["rss_mb"] > 0, run
    # The ratios are those of the two runs' own figures.
    assert result["rss_ratio"] == round(two["peak_rss_mb"] / one["peak_rss_mb"], 3)
    total = two["inferences_per_s"]
    assert result["inferences_per_s_ratio"] == round(total / one["inferences_per_s"], 3)
    lowest = min(c["fps"] for c in two["per_camera"].values())
    assert result["lowest_camera_share"] == round(lowest / (total / 2), 3)
    assert len(result["targets_met"]) == 3
    assert isinstance(result["one_camera_saturates_model"], bool)


def test_bench_cameras_names_a_missing_video_in_one_line(tmp_path: Path, assets: Path) -> None:
    missing = tmp_path / "nope.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "bench", str(MODELS / "face-short-range.tflite"),
         "--cameras", "2", "--no-baseline", "--source", str(missing), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"edge-agent: bench: no such video: {missing}"
