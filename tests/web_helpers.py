"""What the web page's tests share: an agent with ``web:`` run as a real process for a whole
module (one model load for many tests), and a small HTTP client on the standard library."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

import agent.localbroker
from agent.config import DEFAULT_MODEL
from agent.localbroker import LocalBroker, mosquitto_binary
from tests.conftest import MEDIA, MODELS, AgentProcess

BIKES = MEDIA / "bikes.mp4"
# The daemon's default person model: INT8 where scripts/setup found it faithful (2.5x faster on
# 2 cores than fp32, so the first event comes sooner), else fp32.
PERSON = DEFAULT_MODEL
FACE = MODELS / "face-short-range.tflite"
T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    path: str,
    *,
    token: str | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 20,
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def wait_for(
    probe: Callable[[], T | None], timeout: float, what: str, agent: AgentProcess | None = None
) -> T:
    """``probe()``'s first truthy value within ``timeout`` seconds (an error: its text)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            value, last = None, exc
        if value:
            return value
        if agent is not None and agent.proc.poll() is not None:
            pytest.fail(f"the agent exited ({agent.proc.returncode}):\n{agent.output()}")
        time.sleep(0.25)
    log = agent.output() if agent is not None else ""
    pytest.fail(f"no {what} within {timeout} s (last error: {last!r})\n{log}")


@dataclass
class WebAgent:
    """A running agent with its page on ``port``."""

    process: AgentProcess
    port: int
    state: Path
    token: str | None = None

    def get(self, path: str, **kwargs: Any) -> Response:
        kwargs.setdefault("token", self.token)
        return request(self.port, path, **kwargs)

    def status(self) -> dict[str, Any]:
        resp = self.get("/api/status")
        assert resp.status == 200, resp
        body: dict[str, Any] = resp.json()
        return body

    def camera(self, name: str = "main") -> dict[str, Any]:
        figures: dict[str, Any] = self.status()["metrics"]["cameras"][name]
        return figures


def person_on_bikes(zone_y: float, mask: list[list[float]], **publish: Any) -> dict[str, Any]:
    """The page's usual scene: the person model on bikes.mp4 at 5 fps, events on, a zone
    ``road`` from ``zone_y`` down to the bottom edge and one mask; ``publish`` adds to the
    ``publish:`` section (per-frame detections are off)."""
    return {
        "source": {"uri": str(BIKES), "fps": 5, "loop": True},
        "model": {"path": str(PERSON), "threads": 2},
        "publish": {"detections": "off", **publish},
        "events": {"max_missed": 3},
        "zones": {"road": {"polygon": [[0.0, zone_y], [1.0, zone_y], [1.0, 1.0], [0.0, 1.0]]}},
        "masks": [mask],
    }


@contextmanager
def module_broker() -> Iterator[LocalBroker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (scripts/test installs it when run as root)")
    with LocalBroker() as broker:
        yield broker


def free_port() -> int:
    return agent.localbroker.free_port()  # a test worker's own range under pytest-xdist


@contextmanager
def web_agent(
    folder: Path,
    config: dict[str, Any],
    *,
    token: str | None = None,
    listen_host: str = "127.0.0.1",
) -> Iterator[WebAgent]:
    """The agent of ``config`` (plus its store, MQTT and ``web:`` sections) on a mosquitto of
    its own, until the block ends, once its page answers and a first frame is processed."""
    with module_broker() as broker:
        yield from _web_agent(folder, broker, config, token, listen_host)


def _web_agent(
    folder: Path, broker: LocalBroker, config: dict[str, Any], token: str | None, listen_host: str
) -> Iterator[WebAgent]:
    port = free_port()
    web: dict[str, Any] = {"listen": f"{listen_host}:{port}"}
    if token is not None:
        token_file = folder / "web.token"
        token_file.write_text(token + "\n")
        web["token_file"] = str(token_file)
    data = {
        "device_id": "web",
        "store": {"path": str(folder / "state")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5},
        **config,
        "web": web,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    process = AgentProcess(path)
    running = WebAgent(process, port, folder / "state", token)
    try:
        wait_for(
            lambda: running.status()["metrics"]["frames"] > 0, 120, "processed frame", process
        )
        yield running
    finally:
        process.stop()
