"""What each URL of the local page answers (DESIGN.md section 10), apart from HTTP itself: the
page's static files, the JSON API, the JPEGs, the MJPEG stream (as a ``Stream`` for the server
to run) and ``/metrics``. Everything here reads what the agent already has; nothing waits on it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from agent.web.frames import LiveFrames

MAX_EVENTS = 200
DEFAULT_EVENTS = 20
_NAME = r"[A-Za-z0-9_-]{1,128}"
_CAMERA_JPEG = re.compile(rf"/api/cameras/({_NAME})/latest\.jpg")
_CAMERA_STREAM = re.compile(rf"/api/cameras/({_NAME})/stream\.mjpeg")
_EVENT_JPEG = re.compile(rf"/api/events/({_NAME})/snapshot\.jpg")
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON


@dataclass(frozen=True)
class Stream:
    """An MJPEG stream of one camera, for the server to run on the request's thread."""

    camera: str


class EventQueries(Protocol):
    """What the page reads of the event store (``agent.tracking.store``)."""

    def list(self, camera: str | None = None, limit: int = 50) -> list[dict[str, Any]]: ...

    def get(self, event_id: str) -> dict[str, Any] | None: ...

    def snapshot(self, event_id: str) -> bytes | None: ...


@dataclass
class WebSources:
    """Where the page's figures come from: the agent's own readers (``agent.app`` wires them)."""

    #: the retained ``B/status`` body
    status: Callable[[], Mapping[str, Any]]
    #: the ``B/metrics`` body (per camera figures under ``cameras``)
    metrics: Callable[[], Mapping[str, Any]]
    #: the retained ``B/model`` body: the model in service and the updater's state
    model: Callable[[], Mapping[str, Any]]
    #: the MQTT connection is up
    mqtt_connected: Callable[[], bool]
    frames: LiveFrames
    events: EventQueries | None = None
    #: ``/metrics``: the Prometheus exposition (body, content type); None: not served
    prometheus: Callable[[], tuple[bytes, str]] | None = None
    #: open MJPEG streams now (the server counts them)
    streams: Callable[[], int] = field(default=lambda: 0)


def error(status: int, message: str) -> Reply:
    return Reply(status, json.dumps({"error": message}).encode())


def _json(body: Mapping[str, Any]) -> Reply:
    return Reply(200, json.dumps(body).encode())


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of ``agent/web/static`` (package data) by its URL, read once."""
    files: dict[str, tuple[bytes, str]] = {}
    for item in resources.files("agent.web").joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _STATIC_TYPES:
            files[f"/static/{item.name}"] = (item.read_bytes(), _STATIC_TYPES[suffix])
    files["/"] = files["/static/index.html"]
    return files


class Routes:
    """Path and query -> what to answer."""

    def __init__(self, sources: WebSources) -> None:
        self.sources = sources
        self._static = _static_files()

    @staticmethod
    def is_public(path: str) -> bool:
        """Served without the token: the page's own code, which holds nothing of the device
        (its data comes from the API, which needs the token)."""
        return path == "/" or path.startswith("/static/")

    def answer(self, path: str, query: Mapping[str, list[str]]) -> Reply | Stream:
        if path in self._static:
            body, kind = self._static[path]
            return Reply(200, body, kind)
        if path == "/api/status":
            return _json(self.status())
        if path == "/api/events":
            return self.events(query)
        if path == "/metrics":
            if self.sources.prometheus is None:
                return error(404, "/metrics is not served here")
            body, kind = self.sources.prometheus()
            return Reply(200, body, kind)
        if m := _CAMERA_JPEG.fullmatch(path):
            return self.latest_jpeg(m.group(1))
        if m := _CAMERA_STREAM.fullmatch(path):
            camera = m.group(1)
            if camera not in self.sources.frames.cameras:
                return self._no_camera(camera)
            return Stream(camera)
        if m := _EVENT_JPEG.fullmatch(path):
            return self.event_jpeg(m.group(1))
        return error(404, f"no such page: {path}")

    def status(self) -> dict[str, Any]:
        s = self.sources
        return {
            **s.status(),
            "mqtt_connected": s.mqtt_connected(),
            "metrics": s.metrics(),
            "model_service": s.model(),
            "events_enabled": s.events is not None,
            "web": {"encodes": s.frames.encodes, "streams": s.streams()},
        }

    def events(self, query: Mapping[str, list[str]]) -> Reply:
        limit_text = query.get("limit", [str(DEFAULT_EVENTS)])[-1]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_EVENTS:
            return error(400, f"limit must be a number from 1 to {MAX_EVENTS} (got {limit_text!r})")
        camera = query.get("camera", [None])[-1]
        if camera is not None and camera not in self.sources.frames.cameras:
            return self._no_camera(camera)
        store = self.sources.events
        found = store.list(camera, int(limit_text)) if store is not None else []
        for event in found:
            if event.get("snapshot") is not None:
                event["snapshot_url"] = f"/api/events/{event['id']}/snapshot.jpg"
        return _json({"events": found})

    def latest_jpeg(self, camera: str) -> Reply:
        if camera not in self.sources.frames.cameras:
            return self._no_camera(camera)
        encoded = self.sources.frames.jpeg(camera)
        if encoded is None:
            return error(404, f"camera {camera!r} has no processed frame yet")
        return Reply(200, encoded.jpeg, "image/jpeg")

    def event_jpeg(self, event_id: str) -> Reply:
        store = self.sources.events
        if store is None or store.get(event_id) is None:
            return error(404, f"no such event: {event_id}")
        jpeg = store.snapshot(event_id)
        if jpeg is None:
            return error(404, f"event {event_id} has no snapshot (yet)")
        return Reply(200, jpeg, "image/jpeg")

    def _no_camera(self, camera: str) -> Reply:
        known = ", ".join(self.sources.frames.cameras)
        return error(404, f"no such camera: {camera} (cameras: {known})")
