"""Config files: good ones load, bad ones are refused with file, line, key and problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config, mqtt_password, parse_config
from agent.errors import ConfigError


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(path)], capture_output=True, text=True
    )


def test_valid_config_passes_check(tmp_path: Path, assets: Path) -> None:
    cfg = tmp_path / "good.yaml"
    cfg.write_text(
        f"device_id: cam-porch-1\nsource:\n  uri: 0\n  fps: 5\nmodel:\n  path: {assets / 'person-yolov8s.onnx'}\n"
        "detection:\n  labels: [person]\nmqtt:\n  host: broker.local\n  qos: 1\n"
    )
    result = check_config(cfg)
    assert result.returncode == 0, result.stderr
    config = load_config(cfg)
    assert config.source.uri == "0"
    assert config.detection.labels == ["person"]


def test_unknown_key_is_reported_with_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("mqtt:\n  host: localhost\n  hots: 1883\n")
    result = check_config(cfg)
    assert result.returncode == 1
    assert f"{cfg}:3: mqtt.hots: unknown key" in result.stderr


def test_wrong_type_is_reported_with_value(tmp_path: Path) -> None:
    cfg = tmp_path / "type.yaml"
    cfg.write_text("source:\n  uri: clip.mp4\n  fps: fast\n")
    result = check_config(cfg)
    assert result.returncode == 1
    assert f"{cfg}:3: source.fps:" in result.stderr
    assert "'fast'" in result.stderr


def test_missing_model_file_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "model.yaml"
    cfg.write_text("device_id: cam\nmodel:\n  path: /nonexistent/model.onnx\n")
    result = check_config(cfg)
    assert result.returncode == 1
    assert (
        f"{cfg}:3: model.path: model file '/nonexistent/model.onnx' does not exist" in result.stderr
    )


def test_invalid_yaml_is_reported_with_line(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("mqtt:\n  host: [localhost\n")
    result = check_config(cfg)
    assert result.returncode == 1
    assert str(cfg) in result.stderr and "not valid YAML" in result.stderr


def test_run_refuses_a_bad_config_and_exits_1(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("detection:\n  score_threshold: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{cfg}:2: detection.score_threshold" in result.stderr


def test_run_with_a_missing_model_exits_1_naming_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "nomodel.yaml"
    cfg.write_text("model:\n  path: /nonexistent/model.onnx\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "/nonexistent/model.onnx: no such model file" in result.stderr


def test_environment_overrides_nested_keys() -> None:
    config = parse_config(
        "mqtt:\n  host: a\n",
        environ={"EDGE_AGENT_MQTT__HOST": "b", "EDGE_AGENT_MQTT__PORT": "8883"},
    )
    assert (config.mqtt.host, config.mqtt.port) == ("b", 8883)


def test_topic_unsafe_device_id_is_refused() -> None:
    with pytest.raises(ConfigError, match="device_id"):
        parse_config("device_id: cam/1\n", environ={})


def test_password_comes_from_file_credentials_or_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert (
        mqtt_password(parse_config(f"mqtt:\n  password_file: {secret}\n", environ={}).mqtt, {})
        == "s3cret"
    )
    (tmp_path / "mqtt-password").write_text("fromcred")
    plain = parse_config("", environ={}).mqtt
    assert mqtt_password(plain, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "fromcred"
    assert mqtt_password(plain, {"EDGE_AGENT_MQTT_PASSWORD": "fromenv"}) == "fromenv"


def test_defaults_are_the_demo() -> None:
    config = load_config(None, environ={})
    assert config.source.loop is True
    assert config.model.path.name == "person-yolov8s.onnx"
    assert config.source.uri.endswith("bikes.mp4")


def test_config_schema_command_prints_json_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "config", "schema"],
        capture_output=True,
        text=True,
        check=True,
    )
    schema = json.loads(out.stdout)
    assert "mqtt" in schema["properties"]
    assert schema["additionalProperties"] is False


def test_example_config_in_the_repository_is_valid(assets: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(example)],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    # Relative paths in a config file are taken from the file's folder, wherever the agent starts.
    config = load_config(example)
    assert config.model.path == example.parent / "models" / "person-yolov8s.onnx"
    assert config.source.uri == str(example.parent / "models" / "media" / "bikes.mp4")


def test_split_head_without_a_peer_is_refused_with_the_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("device_id: cam-1\nsplit:\n  role: head\n  at: c42\n", "head.yaml")
    assert "head.yaml:2: split: " in str(err.value)
    assert "split.peer" in str(err.value)
    with pytest.raises(ConfigError, match=r"split\.codec"):
        parse_config("split:\n  role: tail\n  codec: jpeg\n", "tail.yaml")
