"""The agent as a real process, a real mosquitto, real models: detections arrive, the retained
status tells online/offline/stopped, and a failing source never takes the agent down."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

from agent.publish.payloads import DetectionsPayload, StatusPayload
from tests.conftest import MEDIA, iou


def agent_config(port: int, assets: Path, **source: Any) -> dict[str, Any]:
    return {
        "device_id": "cam-test",
        "source": {
            "uri": str(MEDIA / "carphone_pristine.mp4"),
            "fps": 10,
            "loop": True,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 1.0,
            **source,
        },
        "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5},
    }


def test_detections_arrive_over_mqtt_and_match_the_schema(
    broker, subscriber, write_config, run_agent, assets
):
    sub = subscriber("edge-agent/cam-test/#")
    agent = run_agent(write_config(agent_config(broker.port, assets)))
    status = sub.wait_for("/status", lambda s: s["state"] == "online")
    StatusPayload.model_validate(status)
    bodies = [sub.wait_for("/detections") for _ in range(5)]
    for body in bodies:
        msg = DetectionsPayload.model_validate(body)
        assert msg.model.name == "face-short-range"
        assert (msg.frame.width, msg.frame.height) == (176, 144)
        assert msg.latency_ms.total >= msg.latency_ms.inference > 0
    seqs = [b["seq"] for b in bodies]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    faces = [o for b in bodies for o in b["objects"] if o["label"] == "face"]
    assert faces and all(0 <= v <= 1 for o in faces for v in o["box"])
    assert max(iou(o["box"], (0.37, 0.30, 0.66, 0.70)) for o in faces) > 0.5
    assert agent.proc.poll() is None


def test_sigterm_leaves_retained_status_stopped(
    broker, subscriber, write_config, run_agent, assets
):
    sub = subscriber("edge-agent/cam-test/#")
    agent = run_agent(write_config(agent_config(broker.port, assets)))
    sub.wait_for("/detections")
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    sub.wait_for("/status", lambda s: s["state"] == "stopped")
    # A subscriber that arrives later still reads "stopped": the status is retained.
    late = subscriber("edge-agent/cam-test/status")
    assert late.wait_for("/status")["state"] == "stopped"


def test_kill_9_leaves_retained_status_offline(broker, subscriber, write_config, run_agent, assets):
    sub = subscriber("edge-agent/cam-test/#")
    agent = run_agent(write_config(agent_config(broker.port, assets)))
    sub.wait_for("/detections")
    agent.signal(signal.SIGKILL)
    agent.wait(10)
    # The broker publishes the last will once it notices the dead connection (keepalive x 1.5).
    sub.wait_for("/status", lambda s: s["state"] == "offline", timeout=30)
    late = subscriber("edge-agent/cam-test/status")
    assert late.wait_for("/status")["state"] == "offline"


def test_missing_video_is_retried_and_reported_until_it_appears(
    broker, subscriber, write_config, run_agent, assets, tmp_path
):
    video = tmp_path / "later.mp4"
    sub = subscriber("edge-agent/cam-test/#")
    agent = run_agent(write_config(agent_config(broker.port, assets, uri=str(video))))
    status = sub.wait_for("/status", lambda s: s.get("source", {}).get("state") == "retrying")
    assert status["state"] == "online"
    assert str(video) in (status["source"]["last_error"] or "")
    time.sleep(1.5)
    assert agent.proc.poll() is None, agent.output()
    shutil.copy(MEDIA / "carphone_pristine.mp4", video)
    sub.wait_for("/status", lambda s: s.get("source", {}).get("state") == "connected", timeout=30)
    sub.wait_for("/detections", timeout=30)
    assert "retry" in agent.output().lower()


def test_removed_video_is_reported_and_the_agent_stays_up(
    broker, subscriber, write_config, run_agent, assets, tmp_path
):
    video = tmp_path / "clip.mp4"
    shutil.copy(MEDIA / "carphone_pristine.mp4", video)
    sub = subscriber("edge-agent/cam-test/#")
    agent = run_agent(write_config(agent_config(broker.port, assets, uri=str(video))))
    sub.wait_for("/detections")
    video.unlink()
    sub.wait_for("/status", lambda s: s.get("source", {}).get("state") == "retrying", timeout=30)
    assert agent.proc.poll() is None, agent.output()


def test_unreachable_stream_is_retried_and_the_agent_stays_up(
    broker, subscriber, write_config, run_agent, assets
):
    sub = subscriber("edge-agent/cam-test/#")
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    agent = run_agent(
        write_config(agent_config(broker.port, assets, uri="rtsp://127.0.0.1:9/stream"))
    )
    first = sub.wait_for("/status", lambda s: s.get("source", {}).get("state") == "retrying")
    sub.wait_for(
        "/status",
        lambda s: s.get("source", {}).get("failures", 0) > first["source"]["failures"],
        timeout=20,
    )
    assert agent.proc.poll() is None, agent.output()
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0


def test_metrics_are_published_periodically(broker, subscriber, write_config, run_agent, assets):
    sub = subscriber("edge-agent/cam-test/metrics")
    config = agent_config(broker.port, assets)
    config["publish"] = {"metrics_interval_s": 1}
    run_agent(write_config(config))
    sub.wait_for("/metrics", timeout=30)
    metrics = sub.wait_for("/metrics", lambda m: m["frames"] > 0, timeout=30)
    for key in (
        "fps",
        "latency_ms_p50",
        "latency_ms_p95",
        "dropped_frames",
        "outbox_depth",
        "outbox_dropped",
        "reconnects",
        "rss_mb",
        "cpu_percent",
        "uptime_s",
    ):
        assert key in metrics, key
    assert metrics["fps"] > 0 and metrics["rss_mb"] > 10
    assert metrics["source_state"] == "connected"
