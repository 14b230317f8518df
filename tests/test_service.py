"""Running under systemd: the notify protocol over a real datagram socket, the watchdog that
stops when the pipeline hangs, graceful stop, SIGHUP reload, the unit file, the installer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.app import Agent
from agent.config import load_config
from agent.service import Notifier
from tests.conftest import MEDIA, ROOT

UNIT = ROOT / "systemd" / "edge-agent.service"


class NotifySocket:
    """The service manager's end: a unix datagram socket that records what the agent says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, line: str, timeout: float = 30.0, after: float = 0.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ts, msg in list(self.messages):
                if ts >= after and line in msg.splitlines():
                    return ts, msg
            time.sleep(0.05)
        raise AssertionError(f"no {line!r} within {timeout} s; got {[m for _, m in self.messages]}")

    def count(self, line: str, since: float, until: float | None = None) -> int:
        end = until if until is not None else float("inf")
        return sum(
            1 for ts, m in list(self.messages) if since <= ts <= end and line in m.splitlines()
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def service_config(port: int, assets: Path, **extra: Any) -> dict[str, Any]:
    return {
        "device_id": "cam-svc",
        "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 10, "loop": True},
        "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": port},
        **extra,
    }


def test_notifier_is_silent_outside_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready("x") is False


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_interval == 2.0
        assert notifier.ready("up")
        assert server.recv(100) == b"READY=1\nSTATUS=up"
        notifier.close()
    finally:
        server.close()


def test_watchdog_meant_for_another_pid_is_ignored() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None


def test_ready_after_first_frame_then_watchdog_pings_at_half_the_timeout(
    broker, write_config, run_agent, assets, notify_socket
):
    agent = run_agent(
        write_config(service_config(broker.port, assets)),
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"},
    )
    ready_at, ready = notify_socket.wait_for("READY=1")
    status = next(line for line in ready.splitlines() if line.startswith("STATUS="))
    frames = int(status.split(" frames")[0].rsplit(" ", 1)[-1])
    assert frames >= 1, status
    assert "model face-short-range" in status
    time.sleep(4)
    # WATCHDOG_USEC=1 s: a ping every 0.5 s, so about 8 in 4 s (broad bounds: a busy machine).
    pings = notify_socket.count("WATCHDOG=1", ready_at, ready_at + 4)
    assert 4 <= pings <= 10, pings
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    notify_socket.wait_for("STOPPING=1")


def test_sigterm_sends_stopping_flushes_the_outbox_and_says_stopped(
    broker, subscriber, write_config, run_agent, assets, notify_socket, tmp_path
):
    sub = subscriber("edge-agent/cam-svc/#")
    agent = run_agent(
        write_config(service_config(broker.port, assets)),
        env={"NOTIFY_SOCKET": str(notify_socket.path)},
    )
    notify_socket.wait_for("READY=1")
    sub.wait_for("/detections")
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    notify_socket.wait_for("STOPPING=1")
    sub.wait_for("/status", lambda s: s["state"] == "stopped")
    db = sqlite3.connect(tmp_path / "state" / "outbox.sqlite")
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    topic = next(t for t, _, _ in sub.seen if t.endswith("/detections"))
    last_seq = db.execute("SELECT value FROM meta WHERE key=?", (f"seq:{topic}",)).fetchone()[0]
    db.close()
    seqs = {json.loads(p)["seq"] for t, p, _ in sub.seen if t == topic}
    assert last_seq in seqs  # the last detection was delivered before "stopped"


def test_sighup_reloads_a_changed_threshold(
    broker, subscriber, write_config, run_agent, assets, notify_socket
):
    sub = subscriber("edge-agent/cam-svc/detections")
    config = service_config(broker.port, assets)
    path = write_config(config)
    agent = run_agent(path, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    sub.wait_for("/detections", lambda d: len(d["objects"]) > 0)
    config["detection"] = {"score_threshold": 0.999}
    config["publish"] = {"detections": "every_frame"}  # as write_config had it
    path.write_text(yaml.safe_dump({"store": yaml.safe_load(path.read_text())["store"], **config}))
    sent = time.monotonic()
    agent.signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1", after=sent)
    notify_socket.wait_for("READY=1", after=sent)
    # After the reload the face (score ~0.95) is under the new threshold.
    sub.wait_for("/detections", lambda d: d["objects"] == [], timeout=30)
    for _ in range(10):
        assert sub.wait_for("/detections")["objects"] == []
    assert "config reloaded" in agent.output()


@pytest.mark.expect_thread_errors("the hung inference is reported at ERROR on purpose")
def test_a_hung_inference_stops_the_watchdog_pings(
    broker, tmp_path, assets, notify_socket, monkeypatch
):
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                **service_config(broker.port, assets),
                "store": {"path": str(tmp_path / "state")},
                "service": {"stall_s": 1.5, "stop_flush_s": 1},
            }
        )
    )
    agent = Agent(load_config(cfg), cfg)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    ready_at, _ = notify_socket.wait_for("READY=1")
    assert agent.slot.loaded
    hang, release = threading.Event(), threading.Event()
    real_infer = agent.slot.detector.infer

    def infer(tensor: Any) -> Any:
        if hang.is_set():
            release.wait(30)  # an inference that does not come back
        return real_infer(tensor)

    agent.slot.detector.infer = infer  # type: ignore[method-assign]
    time.sleep(2)
    assert notify_socket.count("WATCHDOG=1", ready_at) >= 2  # healthy: pinging
    hang.set()
    time.sleep(2)  # the stall exceeds stall_s after 1.5 s
    quiet_from = time.monotonic()
    time.sleep(2)
    assert notify_socket.count("WATCHDOG=1", quiet_from) == 0
    assert not agent.healthy()
    release.set()
    time.sleep(1.5)
    assert agent.healthy()  # frames flow again: pings resume
    agent.request_stop()
    runner.join(30)
    assert not runner.is_alive()


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this checkout's venv.
    unit = tmp_path / "edge-agent.service"
    unit.write_text(
        UNIT.read_text().replace(
            "/opt/edge-agent/venv/bin/edge-agent", str(Path(sys.executable).parent / "edge-agent")
        )
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_unit_file_exposure_is_at_most_2_5() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True, text=True
    )
    line = next(line for line in result.stdout.splitlines() if "Overall exposure level" in line)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.5, result.stdout


def test_runtimes_work_with_memory_deny_write_execute(assets: Path) -> None:
    # MemoryDenyWriteExecute= forbids writable+executable memory; PR_SET_MDWE (Linux 6.3+) is the
    # same rule for one process, so the real runtimes can be checked without systemd.
    probe = subprocess.run(
        [sys.executable, "-c", "import ctypes; print(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))"],
        capture_output=True,
        text=True,
    )
    if probe.stdout.strip() != "0":
        pytest.skip("this kernel has no PR_SET_MDWE")
    code = (
        "import ctypes, sys, runpy\n"
        "assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0\n"
        "sys.argv = ['edge-agent', 'detect', '--json', *sys.argv[1:]]\n"
        "runpy.run_module('agent', run_name='__main__')\n"
    )
    for model in ("person-yolov8s.onnx", "face-short-range.tflite"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(assets / model), str(MEDIA / "astronaut.png")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["objects"], model


def test_install_dry_run_prints_the_actions(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "install"), "--dry-run", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout
    for expected in (
        f"python3 -m venv {tmp_path}/opt/edge-agent/venv",
        "--only-binary=:all:",
        f"{tmp_path}/etc/systemd/system/edge-agent.service",
        f"write {tmp_path}/etc/edge-agent/config.yaml",
        "fetch_assets.py",
    ):
        assert expected in out, out
    assert "systemctl" not in out  # a staging root is never started
    assert not (tmp_path / "opt").exists()  # a dry run changes nothing
    (tmp_path / "etc" / "edge-agent").mkdir(parents=True)
    (tmp_path / "etc" / "edge-agent" / "config.yaml").write_text("device_id: mine\n")
    again = subprocess.run(
        [str(ROOT / "scripts" / "install"), "--dry-run", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "exists and is left as it is" in again
    assert (tmp_path / "etc" / "edge-agent" / "config.yaml").read_text() == "device_id: mine\n"
    uninstall = subprocess.run(
        [str(ROOT / "scripts" / "uninstall"), "--dry-run", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"rm -rf {tmp_path}/opt/edge-agent" in uninstall and "kept:" in uninstall


def test_journal_format_under_systemd_and_json_on_request(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "st = os.fstat(2)\n"
        "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
        "from agent.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    journal = subprocess.run(
        [sys.executable, "-c", code, "bench-publish", "--messages", "10", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in journal.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("<") for line in lines), journal.stderr
    assert any(line.startswith("<6>agent.mqtt: MQTT connected") for line in lines)
    as_json = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--log-format",
            "json",
            "bench-publish",
            "--messages",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    records = [json.loads(line) for line in as_json.stderr.splitlines() if line.startswith("{")]
    assert any(r["logger"] == "agent.mqtt" and r["level"] == "info" for r in records)


@pytest.mark.expect_thread_errors("a pipeline stage dies on purpose")
def test_a_dead_pipeline_stage_exits_1_for_a_restart(broker, tmp_path, assets, monkeypatch):
    """A stage that dies of an exception is not the end of a finite source: the agent exits 1
    (systemd's Restart=on-failure restarts it) instead of 0, which would leave the device down."""
    import agent.cameras as cameras_module

    real_open = cameras_module.open_source
    reads = [0]

    def open_breaking(*args: Any, **kwargs: Any) -> Any:
        source = real_open(*args, **kwargs)
        real_read = source.read

        def read(timeout: float | None = None) -> Any:
            reads[0] += 1
            if reads[0] > 5:
                raise RuntimeError("camera driver bug")
            return real_read(timeout=timeout)

        source.read = read  # type: ignore[method-assign]
        return source

    monkeypatch.setattr(cameras_module, "open_source", open_breaking)
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
    agent = Agent(load_config(cfg), cfg)
    code: list[int] = []
    runner = threading.Thread(target=lambda: code.append(agent.run()), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive()
    assert code == [1]
    assert agent.pipeline is not None and not agent.pipeline.alive
    assert "prepare" in (agent.pipeline.crashed or "")
    assert "camera driver bug" in (agent.pipeline.crashed or "")
