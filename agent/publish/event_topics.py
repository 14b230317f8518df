"""Events on MQTT (DESIGN.md section 5): each ``new`` / ``update`` / ``end`` through the outbox
on ``C/events`` (an outage loses none) and into the events on disk; the retained counts
``C/objects/<label>`` and ``C/zones/<zone>/<label>`` and the retained best snapshot
``C/objects/<label>/snapshot``, published again on every connect so that a broker that lost them
(or a value that changed while it was away) is right again."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from agent.publish.topics import Topics
from agent.tracking.events import EventMessage, FrameEvents
from agent.tracking.store import EventStore

log = logging.getLogger("agent.publish.events")


class _Publisher(Protocol):
    connected: threading.Event

    def send(self, topic: str, build: Callable[[int], bytes], qos: int = 1) -> int | None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any: ...


def _body(message: EventMessage) -> Callable[[int], bytes]:
    return lambda seq: json.dumps(message.payload(seq), separators=(",", ":")).encode()


class EventPublisher:
    """Publishes what the cameras' event builders report."""

    def __init__(
        self,
        publisher: _Publisher,
        topics: Topics,
        store: EventStore | None,
        snapshot_max_bytes: Callable[[], int],
    ) -> None:
        self.publisher = publisher
        self.topics = topics
        self.store = store
        self._max_bytes = snapshot_max_bytes
        self._lock = threading.Lock()
        self._retained: dict[str, bytes] = {}  # topic -> the last value published there
        self.sent = 0  # event messages queued

    def publish(self, camera: str | None, events: FrameEvents) -> None:
        """``camera`` None: a lone source (``C = B``). Runs on the pipeline's thread."""
        max_bytes = self._max_bytes()
        topic = self.topics.events(camera)
        for message in events.messages:
            self.publisher.send(topic, _body(message), qos=1)
            self.sent += 1
            if self.store is not None:
                jpeg = message.snapshot.jpeg(max_bytes) if message.snapshot is not None else None
                self.store.record(message.event, jpeg)
        for label, count in events.counts.items():
            self._retain(self.topics.objects(label, camera), str(count).encode())
        for (zone, label), count in events.zone_counts.items():
            self._retain(self.topics.zone_objects(zone, label, camera), str(count).encode())
        for label, snapshot in events.snapshots:
            self._retain(self.topics.object_snapshot(label, camera), snapshot.jpeg(max_bytes))

    def republish(self) -> None:
        """On connect: every retained value as it is now."""
        with self._lock:
            retained = list(self._retained.items())
        for topic, payload in retained:
            self.publisher.publish(topic, payload, qos=1, retain=True)

    def retained(self, topic: str) -> bytes | None:
        with self._lock:
            return self._retained.get(topic)

    def _retain(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._retained[topic] = payload
        # While the broker is away only the latest value matters: it is sent on connect.
        if self.publisher.connected.is_set():
            self.publisher.publish(topic, payload, qos=1, retain=True)
