"""``/metrics`` in the Prometheus text format (agent/web/metrics.py, issue 16): read back with
prometheus_client's own parser, from a fake ``B/metrics`` dict and from a real running agent."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.app import Agent
from agent.config import load_config
from agent.detection import StageTimes
from agent.localbroker import LocalBroker
from agent.pipeline import Result
from agent.sources import Frame
from agent.web.metrics import LATENCY_BUCKETS_S, PromMetrics
from tests.conftest import MEDIA, ROOT, Subscriber

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

LATENCY = "edge_agent_inference_latency_seconds"

#: metric family -> its type, as the parser names them (a counter's family drops ``_total``)
FAMILIES = {
    "edge_agent_camera_frames_per_second": "gauge",
    "edge_agent_camera_frames": "counter",
    "edge_agent_camera_inferences": "counter",
    "edge_agent_camera_skipped_no_motion_frames": "counter",
    "edge_agent_camera_dropped_frames": "counter",
    "edge_agent_camera_inference_errors": "counter",
    # the classic text format has no stateset or info type: both are gauges there
    "edge_agent_camera_source_state": "gauge",
    LATENCY: "histogram",
    "edge_agent_outbox_messages": "gauge",
    "edge_agent_outbox_dropped_messages": "counter",
    "edge_agent_mqtt_reconnects": "counter",
    "edge_agent_events_sent": "counter",
    "edge_agent_commands_rejected": "counter",
    "edge_agent_model_info": "gauge",
    "edge_agent_resident_memory_bytes": "gauge",
    "edge_agent_cpu_usage_ratio": "gauge",
    "edge_agent_uptime_seconds": "gauge",
}


def parse(prom: PromMetrics) -> tuple[dict[str, str], Samples]:
    """``(family name -> type, (sample name, labels) -> value)`` of one scrape."""
    body, content_type = prom.exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def result(camera: str, inference_ms: float) -> Result:
    frame = Frame(1, time.time(), np.zeros((8, 8, 3), np.uint8), "test")
    return Result(frame, [], StageTimes(1.0, inference_ms, 0.5), "m", "1", time.time(), camera=camera)


# --- from a fake B/metrics dict --------------------------------------------------------------


def test_figures_missing_before_the_pipeline_starts_are_left_out_not_raised() -> None:
    figures: dict[str, Any] = {}
    prom = PromMetrics(lambda: figures)
    types, samples = parse(prom)
    # Every family is declared, none has a made-up sample.
    assert set(FAMILIES) <= set(types)
    assert not [k for k in samples if k[0].startswith("edge_agent_")]
    figures.update(
        {
            "uptime_s": 1.5,
            "rss_mb": 80.0,
            "cpu_percent": 150.0,
            "outbox_depth": None,  # not a number: left out
            "reconnects": True,  # neither is a boolean
            "model": None,
            "cameras": {"door": {"fps": 2.5, "source_state": "starting"}, "yard": "odd"},
        }
    )
    types, samples = parse(prom)
    assert value(samples, "edge_agent_uptime_seconds") == 1.5
    assert value(samples, "edge_agent_resident_memory_bytes") == 80e6
    assert value(samples, "edge_agent_cpu_usage_ratio") == 1.5
    assert value(samples, "edge_agent_outbox_messages") is None
    assert value(samples, "edge_agent_mqtt_reconnects_total") is None
    assert value(samples, "edge_agent_model_info") is None
    assert value(samples, "edge_agent_camera_frames_per_second", camera="door") == 2.5
    assert value(samples, "edge_agent_camera_frames_total", camera="door") is None
    state = "edge_agent_camera_source_state"
    assert value(samples, state, camera="door", **{state: "starting"}) == 1
    assert value(samples, state, camera="door", **{state: "connected"}) == 0
    assert not [k for k in samples if ("camera", "yard") in k[1]]


def test_a_camera_added_and_removed_comes_and_goes_with_its_histogram_kept() -> None:
    cameras: dict[str, dict[str, Any]] = {"door": {"frames": 5, "dropped": 1}}
    prom = PromMetrics(lambda: {"cameras": cameras, "model": {"name": "person", "version": "3"}})
    prom.observe(result("door", 12.0))
    _, samples = parse(prom)
    assert value(samples, "edge_agent_camera_frames_total", camera="door") == 5
    assert value(samples, "edge_agent_camera_dropped_frames_total", camera="door") == 1
    assert value(samples, "edge_agent_model_info", name="person", version="3") == 1
    cameras["yard"] = {"frames": 7, "source_state": "something new"}
    prom.observe(result("yard", 1500.0))
    prom.observe(result("yard", 3000.0))
    _, samples = parse(prom)
    assert value(samples, "edge_agent_camera_frames_total", camera="yard") == 7
    state = "edge_agent_camera_source_state"
    assert value(samples, state, camera="yard", **{state: "something new"}) == 1
    assert value(samples, f"{LATENCY}_count", camera="yard") == 2
    assert value(samples, f"{LATENCY}_sum", camera="yard") == pytest.approx(4.5)
    # 1.5 s in the 2 s bucket, 3 s only in +Inf; 12 ms in the 20 ms bucket, not the 10 ms one
    assert value(samples, f"{LATENCY}_bucket", camera="yard", le="2.0") == 1
    assert value(samples, f"{LATENCY}_bucket", camera="yard", le="+Inf") == 2
    assert value(samples, f"{LATENCY}_bucket", camera="door", le="0.01") == 0
    assert value(samples, f"{LATENCY}_bucket", camera="door", le="0.02") == 1
    del cameras["yard"]
    _, samples = parse(prom)
    assert value(samples, "edge_agent_camera_frames_total", camera="yard") is None
    assert value(samples, "edge_agent_camera_frames_total", camera="door") == 5
    # What was observed stays counted: a histogram that went back would read as a reset.
    assert value(samples, f"{LATENCY}_count", camera="yard") == 2


def test_buckets_span_2_ms_to_2_s() -> None:
    assert LATENCY_BUCKETS_S[0] == 0.002 and LATENCY_BUCKETS_S[-1] == 2.0
    assert list(LATENCY_BUCKETS_S) == sorted(LATENCY_BUCKETS_S)


def test_two_agents_in_one_process_keep_their_own_figures() -> None:
    # On the process-wide default registry the second histogram would be a duplicate.
    a = PromMetrics(lambda: {"events_sent": 1})
    b = PromMetrics(lambda: {"events_sent": 2})
    a.observe(result("main", 5.0))
    _, sa = parse(a)
    _, sb = parse(b)
    assert value(sa, "edge_agent_events_sent_total") == 1
    assert value(sb, "edge_agent_events_sent_total") == 2
    assert value(sa, f"{LATENCY}_count", camera="main") == 1
    assert value(sb, f"{LATENCY}_count", camera="main") is None


def test_the_readme_lists_every_metric_by_the_name_it_has() -> None:
    body, _ = PromMetrics(dict).exposition()
    exposed = set(re.findall(r"^# TYPE (edge_agent_\w+)", body.decode(), re.MULTILINE))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Prometheus metrics\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(edge_agent_\w+)", section, re.MULTILINE))
    assert listed == exposed


# --- on a real running agent -----------------------------------------------------------------


@pytest.fixture
def running_agent(
    broker: LocalBroker, write_config: Callable[..., Path], assets: Path
) -> Iterator[tuple[Agent, PromMetrics]]:
    """An in-process agent on two cameras and the int8 person model, its results observed: on
    ``street`` (bikes.mp4 at its own 25 fps) the model cannot keep up (frames dropped) and
    people come and go (events); on ``still`` nothing ever counts as motion (frames skipped)."""
    config = write_config(
        {
            "device_id": "prom",
            "cameras": {
                "street": {
                    "source": {"uri": str(MEDIA / "bikes.mp4"), "fps": 0, "loop": True},
                    "motion": {"enabled": False},
                },
                "still": {
                    "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 5, "loop": True},
                    "motion": {"threshold": 255, "min_area": 1},
                },
            },
            "model": {"path": str(assets / "person-yolov8s-int8.onnx"), "threads": 1},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5},
            "publish": {"detections": "off", "metrics_interval_s": 1},
            "events": {"max_missed": 3},
        }
    )
    agent = Agent(load_config(config), config)
    prom = PromMetrics(agent.metrics)
    on_result = agent._on_result

    def observed(r: Result) -> None:  # as the web part wires it: the agent's handler, then us
        on_result(r)
        prom.observe(r)

    agent._on_result = observed  # type: ignore[method-assign]
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while agent.pipeline is None:
            assert runner.is_alive() and time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.02)
        yield agent, prom
    finally:
        agent.request_stop()
        runner.join(30)
        assert not runner.is_alive()


def wait_until(prom: PromMetrics, check: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + 30
    while True:
        _, samples = parse(prom)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, f"{what} within 30 s; last scrape: {samples}"
        time.sleep(0.2)


def test_each_metric_is_there_and_moves_on_a_running_agent(
    running_agent: tuple[Agent, PromMetrics], broker: LocalBroker
) -> None:
    agent, prom = running_agent
    types, first = parse(prom)
    assert {name: types.get(name) for name in FAMILIES} == FAMILIES
    info = agent.slot.info
    assert value(first, "edge_agent_model_info", name=info.name, version=info.version) == 1

    sub = Subscriber(broker.port, ["edge-agent/prom/cmd/ping/reply"])
    try:
        sub.client.publish("edge-agent/prom/cmd/ping", b"not json", qos=1)
        sub.wait_for("/reply", lambda r: r["ok"] is False)
    finally:
        sub.close()

    def grew(metric: str, /, **labels: str) -> Callable[[Samples], bool]:
        return lambda s: (value(s, metric, **labels) or 0) > (value(first, metric, **labels) or 0)

    moving = [
        ("edge_agent_camera_frames_total", {"camera": "street"}),
        ("edge_agent_camera_frames_total", {"camera": "still"}),
        ("edge_agent_camera_inferences_total", {"camera": "street"}),
        ("edge_agent_camera_skipped_no_motion_frames_total", {"camera": "still"}),
        ("edge_agent_camera_dropped_frames_total", {"camera": "street"}),
        (f"{LATENCY}_count", {"camera": "street"}),
        (f"{LATENCY}_sum", {"camera": "street"}),
        ("edge_agent_events_sent_total", {}),
        ("edge_agent_commands_rejected_total", {}),
        ("edge_agent_uptime_seconds", {}),
    ]
    for name, labels in moving:
        wait_until(prom, grew(name, **labels), f"{name}{labels} grows")
    _, later = parse(prom)
    assert (value(later, "edge_agent_camera_frames_per_second", camera="street") or 0) > 0
    assert (value(later, "edge_agent_resident_memory_bytes") or 0) > 50e6
    assert (value(later, "edge_agent_cpu_usage_ratio") or 0) > 0
    state = "edge_agent_camera_source_state"
    assert value(later, state, camera="street", **{state: "connected"}) == 1

    # The broker goes away: messages wait in the outbox; it comes back: a reconnect drains it.
    broker.stop()
    wait_until(prom, grew("edge_agent_outbox_messages"), "the outbox fills while the broker is down")
    broker.start()
    wait_until(prom, grew("edge_agent_mqtt_reconnects_total"), "a reconnect is counted")
    wait_until(prom, lambda s: value(s, "edge_agent_outbox_messages") == 0, "the outbox drains")
