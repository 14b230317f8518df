"""scripts/install, dry-run (it changes nothing, so a test can run it anywhere): the config it
writes names this device, it explains itself where systemd is not PID 1, and a dry run never
says it installed."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from agent.config import parse_config
from tests.conftest import ROOT

INSTALL = ROOT / "scripts" / "install"


def install(*args: str, systemd_run: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if systemd_run is not None:
        env["EDGE_AGENT_SYSTEMD_RUN"] = str(systemd_run)
    return subprocess.run(
        [str(INSTALL), "--dry-run", *args], capture_output=True, text=True, env=env, timeout=60
    )


def written_config(out: str) -> str:
    """The config a dry run shows it would write (indented under its 'would: write' line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "would: write" in line and "config" in line)
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("    ") and line.strip():
            break
        body.append(line[4:])
    return "\n".join(body)


def test_config_names_this_host_and_leaves_the_threshold_to_the_card(tmp_path: Path) -> None:
    result = install("--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    config = parse_config(written_config(result.stdout), "config.yaml", environ={})
    assert config.device_id == socket.gethostname()  # not every device cam-porch-1
    assert config.source.uri == "/dev/video0" and config.source.loop is False
    assert str(config.model.path) == "/opt/edge-agent/models/person-yolov8s.onnx"
    assert config.detection.score_threshold is None  # the card's measured default
    assert not any(tmp_path.iterdir())  # a dry run changes nothing


def test_device_id_option_and_a_name_that_cannot_be_a_topic(tmp_path: Path) -> None:
    result = install("--root", str(tmp_path), "--device-id", "123")
    assert result.returncode == 0, result.stderr
    config = parse_config(written_config(result.stdout), "config.yaml", environ={})
    assert config.device_id == "123"  # quoted: a YAML number would not be a name
    bad = install("--root", str(tmp_path), "--device-id", "cam/1")
    assert bad.returncode == 2
    assert "cam/1" in bad.stderr and "--device-id" in bad.stderr


def test_dry_run_never_claims_it_installed(tmp_path: Path) -> None:
    for args in (("--root", str(tmp_path)), ()):
        out = install(*args, systemd_run=tmp_path).stdout
        assert "installed:" not in out and "installed under" not in out, out
        assert out.strip().splitlines()[-1].startswith("dry run: nothing was installed")


def test_without_systemd_as_pid_1_it_explains_instead_of_calling_systemctl(
    tmp_path: Path,
) -> None:
    out = install(systemd_run=tmp_path / "absent").stdout
    assert "systemd is not running here" in out, out
    assert "edge-agent run -c /etc/edge-agent/config.yaml" in out
    assert "would: systemctl" not in out
    # Booted with systemd (its runtime folder exists), the service is enabled and started.
    out = install(systemd_run=tmp_path).stdout
    assert "would: systemctl enable --now edge-agent.service" in out
    assert "systemd is not running" not in out


def test_int8_option_makes_the_int8_default_on_the_device_and_removes_its_tools(
    tmp_path: Path,
) -> None:
    plain = install("--root", str(tmp_path)).stdout
    assert "int8_default" not in plain
    out = install("--root", str(tmp_path), "--int8")
    assert out.returncode == 0, out.stderr
    opt = tmp_path / "opt" / "edge-agent"
    lines = out.stdout.splitlines()
    fetch = lines.index(f"would: {opt}/venv/bin/python {opt}/scripts/fetch_assets.py")
    tools = lines.index(
        f"would: {opt}/venv/bin/python -m pip install --quiet --only-binary=:all: --no-deps "
        f"--target {opt}/.cache/int8-tools onnx>=1.16 protobuf>=4.25.1 ml_dtypes>=0.5 "
        "pycocotools>=2.0.8"
    )
    make = lines.index(
        f"would: {opt}/venv/bin/python -m agent.compress.int8_default --assets {opt}/models "
        f"--tools {opt}/.cache/int8-tools"
    )
    removed = lines.index(f"would: rm -rf {opt}/.cache")
    assert fetch < tools < make < removed  # the tools never stay on the device
    assert "would: point model.path at the model default-model.json chose" in out.stdout
