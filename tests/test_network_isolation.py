"""DESIGN.md section 8: a running agent connects to its broker and nothing else (onnxruntime's
telemetry lookup included), shown by tracing every connect() of the real process."""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MEDIA

BIND = re.compile(r"getsockname\(\d+, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\)")
INET = re.compile(
    r'connect\(\d+, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), .*?inet_(?:addr|pton)\((?:AF_INET6?, )?"([^"]+)"'
)

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")


def inet_connects(trace: Path) -> list[tuple[str, int]]:
    """Every IPv4/IPv6 connect() of the traced processes, except to sockets they bound
    themselves and listen on (paho wakes its loop through a loopback socket pair of its own)."""
    lines = trace.read_text(errors="replace").splitlines()
    own = {int(m.group(1)) for line in lines if (m := BIND.search(line))}
    found = []
    for line in lines:
        m = INET.search(line)
        if m and not (m.group(2) in ("127.0.0.1", "::1") and int(m.group(1)) in own):
            found.append((m.group(2), int(m.group(1))))
    return found


def test_trace_parser_sees_a_connect(tmp_path: Path) -> None:
    # Control: the parser below must notice a connection attempt when there is one.
    trace = tmp_path / "control.trace"
    code = "import socket\ntry:\n socket.create_connection(('127.0.0.2', 9), timeout=1)\nexcept OSError:\n pass\n"
    subprocess.run(
        [
            "strace",
            "-f",
            "-e",
            "trace=connect,getsockname",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            code,
        ],
        check=True,
    )
    assert ("127.0.0.2", 9) in inet_connects(trace)


def test_agent_connects_only_to_its_broker(
    broker, subscriber, write_config, run_agent, assets, tmp_path
):
    sub = subscriber("edge-agent/cam-net/#")
    trace = tmp_path / "agent.trace"
    config = write_config(
        {
            "device_id": "cam-net",
            "source": {"uri": str(MEDIA / "bikes.mp4"), "fps": 2, "loop": True},
            "model": {"path": str(assets / "person-yolov8s.onnx"), "threads": 2},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
        }
    )
    agent = run_agent(
        config, wrap=["strace", "-f", "-e", "trace=connect,getsockname", "-o", str(trace)]
    )
    sub.wait_for("/detections", timeout=60)
    time.sleep(8)  # onnxruntime's telemetry looks a host up every few seconds when enabled
    agent.signal(signal.SIGTERM)
    agent.wait(30)
    connects = inet_connects(trace)
    assert connects, "the trace shows no connection at all; the tracing is broken"
    assert set(connects) == {("127.0.0.1", broker.port)}, connects


def test_agent_on_openvino_connects_only_to_its_broker(
    broker, subscriber, write_config, run_agent, assets, tmp_path
):
    """`import openvino` sends an "import" event to Google Analytics through openvino-telemetry
    unless an opt-out file in the home folder says no: `import agent` keeps it from running. The
    agent runs with a home of its own and no CI variable (the package declines by itself in CI),
    so nothing but the agent stands between OpenVINO and the network."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install 'edge-detection-agent[openvino]')")
    sub = subscriber("edge-agent/cam-ov/#")
    trace = tmp_path / "agent.trace"
    home = tmp_path / "home"
    home.mkdir()
    config = write_config(
        {
            "device_id": "cam-ov",
            "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 5, "loop": True},
            "model": {
                "path": str(assets / "face-short-range.tflite"),
                "runtime": "openvino",
                "threads": 1,
            },
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
        }
    )
    agent = run_agent(
        config,
        wrap=["strace", "-f", "-e", "trace=connect,getsockname", "-o", str(trace)],
        env={"HOME": str(home), "CI": "", "TF_BUILD": "", "JENKINS_URL": ""},
    )
    sub.wait_for("/detections", timeout=60)
    time.sleep(2)  # the telemetry is sent from a thread of its own at import
    agent.signal(signal.SIGTERM)
    agent.wait(30)
    assert "on openvino CPU f32" in agent.output()  # it really ran on OpenVINO
    connects = inet_connects(trace)
    assert connects, "the trace shows no connection at all; the tracing is broken"
    assert set(connects) == {("127.0.0.1", broker.port)}, connects
    assert not (home / "intel").exists()  # no telemetry client id was written either
