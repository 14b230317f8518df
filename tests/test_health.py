"""Every thread is supervised: heartbeats, a crash marked dead, the one service loop that stops
the watchdog pings while any part is stuck, the split tail under it, and the test guard that
fails a test when another thread logs an error."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import Config
from agent.health import Heartbeats, supervised
from agent.localbroker import LocalBroker
from agent.service import Notifier, ServiceLoop
from tests.conftest import ROOT, Subscriber
from tests.test_service import NotifySocket


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def test_a_thread_that_stops_beating_is_stuck_and_an_idle_one_is_not() -> None:
    health = Heartbeats(stall_s=0.3)
    working, waiting = health.register("working"), health.register("waiting")
    waiting.idle()
    assert health.stuck() == []
    time.sleep(0.5)
    assert health.stuck() == ["working"]
    assert health.problems()["working"].startswith("stuck for")
    working.beat()
    assert health.stuck() == []


def test_a_probed_part_is_stuck_past_its_limit_and_dead_when_not_alive() -> None:
    health = Heartbeats(stall_s=5)
    state = {"stalled": 0.0, "alive": True}
    health.watch("camera", lambda: state["stalled"], alive=lambda: bool(state["alive"]))
    assert health.stuck() == []
    state["stalled"] = 6.0
    assert health.problems() == {"camera": "stuck for 6 s"}
    state["alive"] = False
    assert health.problems() == {"camera": "dead"}


@pytest.mark.expect_thread_errors("the thread crashes on purpose")
def test_a_crashed_supervised_thread_is_logged_and_marked_dead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = Heartbeats()
    hb = health.register("worker")

    def work() -> None:
        raise RuntimeError("disk on fire")

    with caplog.at_level(logging.ERROR, logger="agent.health"):
        thread = supervised("worker", work, hb)
        thread.start()
        thread.join(5)
    assert health.problems() == {"worker": "dead: RuntimeError: disk on fire"}
    assert any("thread worker crashed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_supervised_thread_that_returns_is_not_a_problem() -> None:
    health = Heartbeats(stall_s=0.1)
    hb = health.register("once")
    thread = supervised("once", lambda: None, hb)
    thread.start()
    thread.join(5)
    time.sleep(0.2)
    assert health.stuck() == []


@pytest.mark.expect_thread_errors("the service loop logs the stuck part at ERROR on purpose")
def test_service_loop_pings_only_while_every_heartbeat_is_well(
    notify_socket: NotifySocket,
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"})
    health = Heartbeats(stall_s=0.3)
    drainer = health.register("outbox")
    changes: list[list[str]] = []
    loop = ServiceLoop(notifier, health, lambda: "all fine", on_change=changes.append)
    stop = threading.Event()
    beating = threading.Event()
    beating.set()

    def control() -> None:  # the control loop of an agent, on its own thread as in tests
        while not stop.wait(0.05):
            if beating.is_set():
                drainer.beat()
            loop.tick()

    runner = threading.Thread(target=control)
    runner.start()
    try:
        ready_at, ready = notify_socket.wait_for("READY=1")
        assert "STATUS=all fine" in ready
        time.sleep(1)
        assert notify_socket.count("WATCHDOG=1", ready_at) >= 3
        beating.clear()  # the drainer hangs
        notify_socket.wait_for("STATUS=unhealthy: outbox", timeout=10)
        quiet_from = time.monotonic()
        time.sleep(1)
        assert notify_socket.count("WATCHDOG=1", quiet_from) == 0
        assert changes == [["outbox"]]
        beating.set()
        resumed = time.monotonic()
        notify_socket.wait_for("WATCHDOG=1", after=resumed, timeout=10)
        assert changes == [["outbox"], []]
    finally:
        stop.set()
        runner.join(5)
        notifier.close()


def tail_config(port: int, model: Path, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "device_id": "gw-health",
            "model": {"path": model, "threads": 1},
            "mqtt": {"host": "127.0.0.1", "port": port},
            "split": {"role": "tail"},
            **extra,
        }
    )


@pytest.mark.expect_thread_errors("the hung tail is reported at ERROR on purpose")
def test_a_hung_tail_request_stops_the_pings_and_the_status_names_it(
    broker: LocalBroker, tmp_path: Path, notify_socket: NotifySocket, monkeypatch: Any
) -> None:
    pytest.importorskip("onnx")
    from agent.split.codec import encode
    from agent.split.tail import TailAgent
    from tests.test_split_head_tail import conv_yolo

    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    sub = Subscriber(broker.port, ["edge-agent/gw-health/status"])
    model = conv_yolo(tmp_path / "conv.onnx")
    tail = TailAgent(tail_config(broker.port, model, service={"stall_s": 0.5}))
    release = threading.Event()

    def hang(meta: Any, tensors: Any) -> Any:
        release.wait(30)  # a tail run that does not come back
        raise RuntimeError("released")

    tail.run = hang  # type: ignore[method-assign]
    runner = threading.Thread(target=tail.run_forever, daemon=True)
    runner.start()
    try:
        ready_at, _ = notify_socket.wait_for("READY=1")
        notify_socket.wait_for("WATCHDOG=1", after=ready_at)
        sub.wait_for("/status", lambda s: s["state"] == "online" and s["stuck"] == [])
        request = encode({"id": "1", "reply_to": "edge-agent/cam/split/result"}, {}, method="raw")
        tail._on_request("x", request)  # the worker takes it and hangs
        sub.wait_for("/status", lambda s: s["stuck"] == ["tail"], timeout=10)
        quiet_from = time.monotonic()
        time.sleep(1)
        assert notify_socket.count("WATCHDOG=1", quiet_from) == 0
        release.set()
        sub.wait_for("/status", lambda s: s["stuck"] == [], timeout=10)
        notify_socket.wait_for("WATCHDOG=1", after=time.monotonic(), timeout=10)
    finally:
        release.set()
        tail.request_stop()
        runner.join(10)
        sub.close()


# --- the guard itself, checked from outside: a pytest run of a small test file ---

GUARDED = textwrap.dedent(
    """
    import logging, threading
    import pytest

    def log_in_a_thread():
        t = threading.Thread(target=lambda: logging.getLogger("x").error("boom in a thread"))
        t.start(); t.join()

    def test_an_error_logged_by_a_thread_fails():
        log_in_a_thread()

    def test_a_thread_dying_of_an_exception_fails():
        t = threading.Thread(target=lambda: 1 / 0)
        t.start(); t.join()

    @pytest.mark.expect_thread_errors("on purpose")
    def test_marked_passes():
        log_in_a_thread()

    def test_an_error_on_the_main_thread_passes():
        logging.getLogger("x").error("the test's own")
    """
)


def test_the_guard_fails_a_test_whose_threads_log_errors(tmp_path: Path) -> None:
    folder = tmp_path / "guarded"
    folder.mkdir()
    (folder / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (folder / "test_guarded.py").write_text(GUARDED)
    (folder / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out = result.stdout
    assert "ERROR test_guarded.py::test_an_error_logged_by_a_thread_fails" in out, out
    assert "ERROR test_guarded.py::test_a_thread_dying_of_an_exception_fails" in out, out
    assert "PASSED test_guarded.py::test_marked_passes" in out, out
    assert "ERROR test_guarded.py::test_marked_passes" not in out, out
    assert "PASSED test_guarded.py::test_an_error_on_the_main_thread_passes" in out, out
    assert "boom in a thread" in out and "ZeroDivisionError" in out, out


@pytest.mark.expect_thread_errors("the drainer is made to crash, and frames then fail to queue")
def test_a_dead_outbox_drainer_stops_the_watchdog_and_the_status_names_it(
    broker: LocalBroker, tmp_path: Path, assets: Path, notify_socket: NotifySocket, monkeypatch: Any
) -> None:
    from agent.app import Agent
    from agent.config import load_config
    from tests.test_service import service_config

    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                **service_config(broker.port, assets),
                "store": {"path": str(tmp_path / "state")},
                "service": {"stop_flush_s": 1},
            }
        )
    )
    sub = Subscriber(broker.port, ["edge-agent/cam-svc/status"])
    agent = Agent(load_config(cfg), cfg)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        ready_at, _ = notify_socket.wait_for("READY=1")
        notify_socket.wait_for("WATCHDOG=1", after=ready_at)
        assert agent.healthy()
        # The database goes away under the drainer (as a bug would do it): its next read raises
        # something no handler expects, and the thread dies.
        agent.outbox._db.close()
        sub.wait_for("/status", lambda s: s.get("stuck") == ["outbox"], timeout=10)
        assert not agent.healthy()
        quiet_from = time.monotonic()
        time.sleep(2)
        assert notify_socket.count("WATCHDOG=1", quiet_from) == 0
        assert "unhealthy: outbox" in notify_socket.messages[-1][1]
    finally:
        agent.request_stop()
        runner.join(30)
        sub.close()
    assert not runner.is_alive()


def test_cpu_percent_window_is_not_shrunk_by_a_frequent_reader() -> None:
    from agent.health import ProcessUsage

    now = {"wall": 0.0, "cpu": 0.0}
    usage = ProcessUsage(window_s=5.0, clock=lambda: now["wall"], cpu_clock=lambda: now["cpu"])

    def at(wall: float, cpu: float) -> float:
        now["wall"], now["cpu"] = wall, cpu
        return usage.cpu_percent()

    # Busy for 10 s (one core), then idle: a reader every 10 s sees each period on its own.
    assert at(10.0, 10.0) == 100.0
    assert at(20.0, 10.0) == 0.0
    # A scrape every 0.5 s during a busy second: never a window of 0.5 s (which would say 100)
    # but one of 5 to 10 s.
    readings = [at(20.0 + 0.5 * i, 10.0 + min(0.5 * i, 1.0)) for i in range(1, 21)]
    assert max(readings) <= 100.0 * 1.0 / 5.0 + 0.1, readings
    assert all(r >= 0.0 for r in readings)
