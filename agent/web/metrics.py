"""``/metrics`` in the Prometheus text format: the figures of ``B/metrics`` read at scrape time,
the model in service as an info metric, and a histogram of inference latency per camera."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agent.pipeline import Result

PREFIX = "edge_agent_"

#: The classic text format: every name here is legal in it, and every Prometheus-compatible
#: scraper reads it (recent prometheus_client releases default to ``version=1.0.0``, which older
#: scrapers do not know; the body is the same for these names).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: A 1-2-5 series from 2 ms (a small TFLite model on a desktop CPU) to 2 s (a large model on a
#: Raspberry Pi Zero); slower runs land in +Inf.
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

#: ``SourceStatus.state``'s values; each camera reports all of them, the current one set.
SOURCE_STATES = ("starting", "connected", "retrying", "ended", "stopped")

# (key in a camera's entry of ``B/metrics``'s ``cameras`` map, metric name, kind, help)
_CAMERA_FIGURES = (
    ("fps", "camera_frames_per_second", "gauge", "Frames processed per second, recent window."),
    ("frames", "camera_frames_total", "counter", "Frames taken from the source."),
    ("inferences", "camera_inferences_total", "counter", "Frames the model ran on."),
    (
        "skipped_no_motion",
        "camera_skipped_no_motion_frames_total",
        "counter",
        "Frames the motion gate kept from the model (nothing moved).",
    ),
    (
        "dropped",
        "camera_dropped_frames_total",
        "counter",
        "Frames the source replaced with a newer one before the pipeline took them.",
    ),
    ("errors", "camera_inference_errors_total", "counter", "Frames whose inference failed."),
)

# (key in ``B/metrics``, metric name, kind, help, factor to the metric's unit)
_AGENT_FIGURES = (
    ("outbox_depth", "outbox_messages", "gauge", "Messages waiting in the outbox.", 1.0),
    (
        "outbox_dropped",
        "outbox_dropped_messages_total",
        "counter",
        "Messages the full outbox dropped (oldest first).",
        1.0,
    ),
    ("reconnects", "mqtt_reconnects_total", "counter", "Reconnections to the MQTT broker.", 1.0),
    ("events_sent", "events_sent_total", "counter", "Events published.", 1.0),
    (
        "commands_rejected",
        "commands_rejected_total",
        "counter",
        "Commands refused (bad payload, unknown command, not allowed).",
        1.0,
    ),
    ("rss_mb", "resident_memory_bytes", "gauge", "Resident memory of the agent.", 1e6),
    (
        "cpu_percent",
        "cpu_usage_ratio",
        "gauge",
        "CPU time over wall time since the last metrics reading (1.0: one core busy).",
        0.01,
    ),
    ("uptime_s", "uptime_seconds", "gauge", "Seconds since the agent started.", 1.0),
)


def _number(value: Any) -> float | None:
    """``value`` as a float, None for a figure that is absent or not a number (bool neither)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class _AgentCollector(Collector):
    """Reads ``source()`` once per scrape. Every family is always declared; a figure the source
    lacks (before the pipeline starts, a camera not yet running) has no sample rather than a 0."""

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # Nothing to check against at registration: what is collected depends on the agent's state.
        return []

    def collect(self) -> Iterator[Metric]:
        figures = self._source()
        yield from self._agent(figures)
        cameras = figures.get("cameras")
        yield from self._cameras(cameras if isinstance(cameras, Mapping) else {})
        model = figures.get("model")
        info = InfoMetricFamily(PREFIX + "model", "The model in service.")
        if isinstance(model, Mapping) and "name" in model:
            info.add_metric([], {"name": str(model["name"]), "version": str(model.get("version"))})
        yield info

    @staticmethod
    def _agent(figures: Mapping[str, Any]) -> Iterator[Metric]:
        for key, name, kind, doc, factor in _AGENT_FIGURES:
            family: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(PREFIX + name, doc, labels=[])
                if kind == "counter"
                else GaugeMetricFamily(PREFIX + name, doc, labels=[])
            )
            value = _number(figures.get(key))
            if value is not None:
                family.add_metric([], value * factor)
            yield family

    @staticmethod
    def _cameras(cameras: Mapping[str, Any]) -> Iterator[Metric]:
        for key, name, kind, doc in _CAMERA_FIGURES:
            family: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(PREFIX + name, doc, labels=["camera"])
                if kind == "counter"
                else GaugeMetricFamily(PREFIX + name, doc, labels=["camera"])
            )
            for camera, entry in cameras.items():
                value = _number(entry.get(key)) if isinstance(entry, Mapping) else None
                if value is not None:
                    family.add_metric([str(camera)], value)
            yield family
        states = StateSetMetricFamily(
            PREFIX + "camera_source_state", "What each camera's source is doing.", labels=["camera"]
        )
        for camera, entry in cameras.items():
            state = entry.get("source_state") if isinstance(entry, Mapping) else None
            if isinstance(state, str):
                known = SOURCE_STATES if state in SOURCE_STATES else (*SOURCE_STATES, state)
                states.add_metric([str(camera)], {s: s == state for s in known})
        yield states


class PromMetrics:
    """The agent's metrics on a registry of their own (never the process-wide default, so two
    agents in one process, as in the tests, do not collide).

    ``source`` is ``Agent.metrics``: called once per scrape, on the HTTP server's thread.
    ``observe`` runs on the pipeline thread for every result and only adds to a histogram."""

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_AgentCollector(source))
        # The standard process_* metrics (CPU seconds as a counter, which rate() suits better
        # than the agent's cpu ratio, memory, open files): one read of /proc/self per scrape.
        ProcessCollector(registry=self.registry)
        self._latency = Histogram(
            PREFIX + "inference_latency_seconds",
            "Time the model took on one frame (inference only: no preprocessing or decoding).",
            ["camera"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        # Each camera's histogram child, so observe() skips labels()' lock and label checks.
        self._children: dict[str, Histogram] = {}
        self._lock = threading.Lock()

    def observe(self, result: Result) -> None:
        child = self._children.get(result.camera)
        if child is None:
            with self._lock:
                child = self._children.setdefault(
                    result.camera, self._latency.labels(result.camera)
                )
        child.observe(result.times.inference / 1e3)

    def exposition(self) -> tuple[bytes, str]:
        """The body of a ``/metrics`` answer and its ``Content-Type``."""
        return generate_latest(self.registry), CONTENT_TYPE
