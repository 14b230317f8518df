"""Shared fixtures: real assets, a real mosquitto on a free loopback port, an MQTT subscriber,
and the agent run as a real process."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.detection.types import box_iou as iou  # noqa: F401  (tests import it from here)
from agent.localbroker import LocalBroker, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MEDIA = MODELS / "media"


def _worker_free_port(index: int, count: int) -> Callable[[], int]:
    """A free loopback port from this test worker's own range, below the kernel's ephemeral
    ports: with pytest-xdist, a broker one worker stops for an outage test is never restarted
    onto a port another worker (or a client socket) took meanwhile."""
    span = 8000 // count
    low = 20000 + index * span

    def free_port() -> int:
        while True:
            port = random.randrange(low, low + span)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue  # in use: another one
            return port

    return free_port


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... under pytest -n N
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and count > 1:
        import agent.localbroker

        agent.localbroker.free_port = _worker_free_port(int(worker[2:]), count)
    config.addinivalue_line(
        "markers",
        "expect_thread_errors(reason): the test provokes errors logged by other threads on "
        "purpose; without it any such error fails the test",
    )
    config.addinivalue_line(
        "markers",
        "slow: a long real-time scenario (a 15 s outage, a split failover, setup run twice); "
        "scripts/test leaves it to scripts/test --slow to keep CI under 20 minutes",
    )
    config.addinivalue_line(
        "markers",
        "serial: compares the pipeline's pace at two moments of one run (before and after a "
        "swap, with and without a viewer); scripts/test runs it alone after its parallel "
        "workers, so another test's load cannot differ between the two moments",
    )


class _ThreadErrors(logging.Handler):
    """Records an error, or any record with a traceback, logged by a thread other than the
    main one (the test's): a thread that fails quietly is a bug even when assertions pass."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == threading.main_thread().ident:
            return
        if record.levelno >= logging.ERROR or record.exc_info:
            text = f"[{record.threadName}] {record.name} {record.levelname}: {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
            self.found.append(text)


@pytest.fixture(autouse=True)
def _restore_log_handlers() -> Iterator[None]:
    """``agent.cli.main`` called in a test sets up logging to the stderr pytest captured for that
    test; a thread logging after it (a camera stopping) must not write to that closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _fail_on_thread_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Home Assistant's rule: an exception (or error) logged by any thread during a test, or a
    thread that dies of one, fails that test unless it is marked ``expect_thread_errors``."""
    handler = _ThreadErrors()
    root = logging.getLogger()
    root.addHandler(handler)
    previous_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        handler.found.append(
            f"[{name}] died: "
            + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        )
        previous_hook(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous_hook
        root.removeHandler(handler)
    if handler.found and request.node.get_closest_marker("expect_thread_errors") is None:
        pytest.fail(
            f"{len(handler.found)} error(s) logged by other threads during the test (mark it "
            "expect_thread_errors if they are provoked on purpose):\n" + "\n".join(handler.found),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _collect_paho_clients() -> Iterator[None]:
    """paho never closes the socket pair ``loop_start`` opens; a client a test made directly and
    left to the garbage collector would raise its unclosed-socket warning inside a later test
    (filterwarnings = error). Collect each test's leftovers at its own end, quietly."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def assets() -> Path:
    missing = [
        p
        for p in (
            "person-yolov8s.onnx",
            "face-short-range.tflite",
            "face-full-range.tflite",
            "pose-detector.tflite",
            "media/bikes.mp4",
            "media/carphone_pristine.mp4",
            "media/astronaut.png",
        )
        if not (MODELS / p).is_file()
    ]
    if missing:
        pytest.fail(f"assets missing: {missing}; run scripts/setup (or scripts/fetch-assets)")
    return MODELS


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (scripts/test installs it when run as root)")
    with LocalBroker() as b:
        yield b


@pytest.fixture
def durable_broker() -> Iterator[LocalBroker]:
    """A broker that keeps persistent sessions across its own restarts (outage tests)."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (scripts/test installs it when run as root)")
    with LocalBroker(persistence=True) as b:
        yield b


class Subscriber:
    """A real MQTT client that records every message it receives, in order."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.getpid()}-{time.monotonic_ns()}"
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(t, 1) for t in topics])
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put((msg.topic, msg.payload, bool(msg.retain)))

    def wait_for(
        self,
        topic_suffix: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                topic, payload, retain = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append((topic, payload, retain))
            if topic.endswith(topic_suffix):
                body = json.loads(payload)
                if predicate(body):
                    return body  # type: ignore[no-any-return]
        kinds = sorted({t for t, _, _ in self.seen})
        raise AssertionError(
            f"no message on *{topic_suffix} matching within {timeout} s; saw {kinds}"
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho never closes the socket pair loop_start opened; a later garbage collection would
        # raise an unclosed-socket warning inside whatever test runs then.
        for name in ("_sockpairR", "_sockpairW"):
            sock = getattr(self.client, name, None)
            if sock is not None:
                sock.close()


@pytest.fixture
def subscriber(broker: LocalBroker) -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(*topics: str) -> Subscriber:
        s = Subscriber(broker.port, list(topics) or ["#"])
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


class AgentProcess:
    """``edge-agent run -c CONFIG`` as a real child process."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, wrap: list[str] | None = None
    ) -> None:
        self.log = config.with_suffix(".log")
        self._log_fh = open(self.log, "wb")
        cmd = [*(wrap or []), sys.executable, "-m", "agent", "run", "-c", str(config)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        # To the whole group, so a wrapper (strace) passes it on to the agent itself.
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        self._log_fh.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        # Whatever the group still holds (the agent under a wrapper such as strace) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log_fh.close()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(data: dict[str, Any], name: str = "config.yaml") -> Path:
        # Each test keeps its outbox and overlay to itself.
        data = {"store": {"path": str(tmp_path / "state")}, **data}
        # Tests count detection messages: one per model run unless a test says otherwise (the
        # daemon's default, on_change, is tested where it matters).
        publish = data.get("publish", {})
        if "detections" not in publish and "mode" not in publish:
            data["publish"] = {"detections": "every_frame", **publish}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def run_agent() -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(config: Path, **kwargs: Any) -> AgentProcess:
        a = AgentProcess(config, **kwargs)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


@pytest.fixture
def started() -> Iterator[list[Any]]:
    """Sources a test starts; stopped even when the test fails."""
    sources: list[Any] = []
    yield sources
    for source in sources:
        source.stop()
