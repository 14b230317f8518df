"""Exit codes of ``edge-agent run`` (DESIGN.md section 9): 78 for what a restart cannot fix, one
line naming the file, key or variable and no traceback; 1 only for the unexpected. systemd's
``RestartPreventExitStatus=78`` then leaves a misconfigured device stopped instead of restarting
it every 5 s forever."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import EXIT_CONFIG, EXIT_FAILURE

ROOT = Path(__file__).resolve().parent.parent


def refused(run_agent: Callable[..., Any], config: Path, **kwargs: Any) -> str:
    """Run the agent as a real process; it must exit 78 with one error line and no traceback.
    Returns that line."""
    agent = run_agent(config, **kwargs)
    try:
        code = agent.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the agent kept running:\n{agent.output()}")
    out = agent.output()
    assert code == EXIT_CONFIG, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("edge-agent: ")]
    assert len(errors) == 1, out
    return errors[0]


def _model(assets: Path) -> dict[str, Any]:
    return {"path": str(assets / "person-yolov8s.onnx")}


def test_an_invalid_config_exits_78_naming_file_line_and_key(
    run_agent, write_config, assets
) -> None:
    config = write_config({"model": _model(assets), "detection": {"score_threshold": 3}})
    line = refused(run_agent, config)
    assert f"{config}:" in line and "detection.score_threshold" in line


def test_an_environment_override_error_exits_78_naming_the_variable(
    run_agent, write_config, assets
) -> None:
    config = write_config({"model": _model(assets)})
    line = refused(run_agent, config, env={"EDGE_AGENT_MQTT__PORT": "eighty"})
    assert "environment EDGE_AGENT_MQTT__PORT: mqtt.port:" in line, line
    assert str(config) not in line


def test_a_model_that_cannot_load_exits_78_naming_it(run_agent, write_config, tmp_path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(os.urandom(4096))  # a truncated download, say
    line = refused(run_agent, write_config({"model": {"path": str(broken)}}))
    assert str(broken) in line


def test_a_missing_model_file_exits_78_naming_it(run_agent, write_config, tmp_path) -> None:
    missing = tmp_path / "nowhere.onnx"
    line = refused(run_agent, write_config({"model": {"path": str(missing)}}))
    assert f"{missing}: no such model file" in line


@pytest.mark.parametrize("name", ["ca_file", "cert_file"])
def test_a_missing_tls_file_exits_78_naming_it(
    name, run_agent, write_config, assets, tmp_path
) -> None:
    missing = tmp_path / f"missing-{name}.pem"
    tls = {name: str(missing)} | ({"key_file": str(missing)} if name == "cert_file" else {})
    config = write_config({"model": _model(assets), "mqtt": {"port": 1, "tls": tls}})
    line = refused(run_agent, config)
    assert f"mqtt.tls.{name}" in line and str(missing) in line


def test_a_missing_password_file_exits_78_naming_it(
    run_agent, write_config, assets, tmp_path
) -> None:
    missing = tmp_path / "mqtt.password"
    mqtt = {"port": 1, "username": "cam", "password_file": str(missing)}
    line = refused(run_agent, write_config({"model": _model(assets), "mqtt": mqtt}))
    assert f"mqtt.password_file {str(missing)!r}: cannot read" in line


@pytest.mark.parametrize("kind", ["missing", "private key"])
def test_a_trusted_key_that_does_not_load_exits_78_naming_it(
    kind, run_agent, write_config, assets, tmp_path
) -> None:
    key = tmp_path / "trusted.pub"
    if kind == "private key":
        from agent.registry.signing import generate_key

        key, _ = generate_key(tmp_path / "signing.key")  # the private half, by mistake
    registry = {"url": "http://127.0.0.1:9/", "trusted_keys": [str(key)]}
    line = refused(run_agent, write_config({"model": _model(assets), "registry": registry}))
    assert "registry.trusted_keys.0" in line and str(key) in line


def _store_blocked_by_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "state-file").write_text("not a folder\n")
    return tmp_path / "state-file" / "edge-agent", f"a file is in the way: '{tmp_path}/state-file'"


def _store_read_only(tmp_path: Path) -> tuple[Path, str]:
    if os.geteuid() == 0:
        # Root writes through a 0555 mode; sysfs refuses even root.
        return Path("/sys/edge-agent-test"), "cannot create files in '/sys'"
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    return folder / "state", f"cannot create files in '{folder}': Permission denied"


def _store_in_proc(tmp_path: Path) -> tuple[Path, str]:
    return Path("/proc/edge-agent-test/state"), "cannot create files in '/proc'"


@pytest.mark.parametrize(
    "blocked", [_store_blocked_by_a_file, _store_read_only, _store_in_proc], ids=lambda f: f.__name__
)
def test_a_store_that_cannot_be_written_exits_78_with_one_line(
    blocked, run_agent, write_config, assets, tmp_path
) -> None:
    store, reason = blocked(tmp_path)
    config = write_config({"store": {"path": str(store)}, "model": _model(assets)})
    line = refused(run_agent, config)
    assert f"store.path: folder {str(store)!r} cannot be written" in line, line
    assert reason in line, line
    assert f"{config}:" in line  # the file and line that set it


def test_a_store_set_from_the_environment_is_reported_under_its_variable(
    run_agent, write_config, assets, tmp_path
) -> None:
    store, _ = _store_blocked_by_a_file(tmp_path)
    config = write_config({"model": _model(assets)})
    line = refused(run_agent, config, env={"EDGE_AGENT_STORE__PATH": str(store)})
    assert f"environment EDGE_AGENT_STORE__PATH: store.path: folder {str(store)!r}" in line


def test_an_outbox_file_that_cannot_be_written_exits_78(
    run_agent, write_config, assets, tmp_path
) -> None:
    (tmp_path / "outbox-dir").mkdir()
    outbox = tmp_path / "outbox-dir"  # a folder where the SQLite file should be
    config = write_config({"model": _model(assets), "mqtt": {"outbox": {"path": str(outbox)}}})
    line = refused(run_agent, config)
    assert f"mqtt.outbox.path: file {str(outbox)!r} cannot be written" in line


def test_an_unknown_source_scheme_exits_78_without_showing_the_url(
    run_agent, write_config, assets
) -> None:
    source = {"uri": "rtps://admin:s3cret@192.0.2.1/stream1"}
    line = refused(run_agent, write_config({"model": _model(assets), "source": source}))
    assert "source.uri: unknown scheme 'rtps://'" in line and "did you mean rtsp?" in line
    assert "s3cret" not in line


def test_an_unexpected_error_exits_1_with_its_traceback(write_config, assets) -> None:
    config = write_config({"model": _model(assets)})
    # A bug, not anything a user can cause: the agent's run loop raising a plain exception.
    code = (
        "import agent.app, agent.cli\n"
        "def broken(self): raise ZeroDivisionError('a bug')\n"
        "agent.app.Agent.run = broken\n"
        f"raise SystemExit(agent.cli.main(['run', '-c', {str(config)!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == EXIT_FAILURE, done.stderr
    assert "Traceback" in done.stderr and "ZeroDivisionError: a bug" in done.stderr
    assert "edge-agent: unexpected error" in done.stderr


def test_the_unit_does_not_restart_on_78() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "systemd" / "edge-agent.service")
    assert unit["Service"]["Restart"] == "on-failure"
    assert EXIT_CONFIG == 78
    assert unit["Service"]["RestartPreventExitStatus"].split() == [str(EXIT_CONFIG)]
