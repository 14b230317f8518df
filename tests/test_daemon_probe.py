"""scripts/soak and the daemon part of scripts/bench: a real agent process on a real mosquitto,
measured from outside (RSS, threads, open files over time; capture-to-broker delay)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.localbroker import mosquitto_binary
from tests.conftest import MEDIA, MODELS

FACE = ["--model", str(MODELS / "face-short-range.tflite")]
VIDEO = ["--source", str(MEDIA / "carphone_pristine.mp4")]


def probe(*args: str, timeout: float = 120) -> str:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.daemon_probe", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the probe stops the agent's group on SIGTERM
        proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode()


@pytest.mark.slow
def test_soak_samples_rss_threads_and_open_files_and_reports_growth(tmp_path: Path, assets):
    table = tmp_path / "soak.csv"
    out = probe(
        "soak", "--minutes", "0.2", "--interval", "3", "--warmup", "3", "--fps", "5",
        *FACE, *VIDEO, "--csv", str(table), "--json",
    )  # fmt: skip
    with table.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "elapsed_s",
        "rss_mb",
        "peak_rss_mb",
        "threads",
        "open_files",
        "messages",
    ]
    assert len(rows) >= 4
    last = rows[-1]
    assert float(last["elapsed_s"]) >= 12
    assert float(last["peak_rss_mb"]) >= float(last["rss_mb"]) > 20  # a Python process with cv2
    assert int(last["threads"]) > 3 and int(last["open_files"]) > 3
    assert int(last["messages"]) > int(rows[1]["messages"])  # detections kept arriving
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["rss_mb_end"] == float(last["rss_mb"])
    assert {"rss_growth_mb", "threads_growth", "open_files_growth"} <= set(summary)


def test_bench_reports_peak_rss_and_capture_to_broker_delay(assets):
    out = probe("bench", "--seconds", "3", "--fps", "10", *FACE, *VIDEO, "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["messages"] > 0
    assert result["peak_rss_mb"] >= result["rss_mb"] > 20
    assert result["capture_to_broker_ms_p50"] > 0
    assert result["payload_total_ms_p50"] >= result["inference_ms_p50"] > 0
    assert result["payload_queued_ms_p50"] is not None
