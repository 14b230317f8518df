"""Config files: good ones load, bad ones are refused with file, line, key and problem."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_run_refuses_a_bad_config_and_exits_78(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("detection:\n  score_threshold: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78  # EX_CONFIG: systemd does not restart it in a loop
    assert f"{cfg}:2: detection.score_threshold" in result.stderr


def test_run_with_a_missing_model_exits_78_naming_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "nomodel.yaml"
    cfg.write_text("model:\n  path: /nonexistent/model.onnx\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
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
    from agent.config import ASSETS_DIR
    from agent.default_model import default_model

    config = load_config(None, environ={})
    assert config.source.loop is True
    # the person model scripts/setup chose (models/default-model.json): INT8 where it measured
    # it faithful to fp32, else fp32 (tests/test_int8_default.py)
    assert config.model.path == default_model(ASSETS_DIR)
    assert config.model.path.name in ("person-yolov8s.onnx", "person-yolov8s-int8.onnx")
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


# --- check-config: what a user mistypes ---


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    cfg = tmp_path / name
    # Each config keeps its state to itself (and the store check has a folder it may write).
    cfg.write_text(text + f"store:\n  path: {tmp_path / 'state'}\n")
    return cfg


def test_check_config_suggests_the_key_that_was_meant(tmp_path: Path) -> None:
    cfg = write(tmp_path, "mqtt:\n  hots: broker.local\ndetecton:\n  labels: [person]\n")
    result = check_config(cfg)
    assert result.returncode == 1
    assert f"{cfg}:2: mqtt.hots: unknown key (did you mean mqtt.host?)" in result.stderr
    assert f"{cfg}:3: detecton: unknown key (did you mean detection?)" in result.stderr
    tls = write(tmp_path, "mqtt:\n  tls:\n    ca_fle: ca.pem\n", "tls.yaml")
    assert "mqtt.tls.ca_fle: unknown key (did you mean mqtt.tls.ca_file?)" in (
        check_config(tls).stderr
    )


def test_check_config_refuses_an_unknown_source_scheme(tmp_path: Path, assets: Path) -> None:
    cfg = write(
        tmp_path,
        f"model:\n  path: {assets / 'person-yolov8s.onnx'}\n"
        "source:\n  uri: rtps://admin:s3cret@192.0.2.7:554/stream1\n",
    )
    result = check_config(cfg)
    assert result.returncode == 1
    assert f"{cfg}:4: source.uri: unknown scheme 'rtps://'" in result.stderr
    assert "(did you mean rtsp?)" in result.stderr
    assert "s3cret" not in result.stderr  # the URL's password is not repeated


def test_check_config_reports_a_video_file_that_does_not_exist(
    tmp_path: Path, assets: Path
) -> None:
    cfg = write(
        tmp_path, f"model:\n  path: {assets / 'person-yolov8s.onnx'}\nsource:\n  uri: clip.mp4\n"
    )
    result = check_config(cfg)
    assert result.returncode == 1
    expected = f"{cfg}:4: source.uri: video file or image folder '{tmp_path / 'clip.mp4'}'"
    assert f"{expected} does not exist" in result.stderr
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert check_config(cfg).returncode == 0  # a camera or a file that is there: fine


def test_check_config_reports_labels_the_model_does_not_have(
    tmp_path: Path, assets: Path
) -> None:
    cfg = write(
        tmp_path,
        f"model:\n  path: {assets / 'person-yolov8s.onnx'}\n"
        "detection:\n  labels: [person, persn]\n"
        "homeassistant:\n  labels:\n    - car\n",
    )
    result = check_config(cfg)
    assert result.returncode == 1
    card_labels = load_card_labels(assets / "person-yolov8s.card.yaml")
    assert f"{cfg}:4: detection.labels.1: 'persn' is not a label of the model" in result.stderr
    assert "(did you mean person?)" in result.stderr
    assert f"{cfg}:7: homeassistant.labels.0: 'car' is not a label of the model" in result.stderr
    assert f"(its labels: {', '.join(card_labels)})" in result.stderr
    assert "detection.labels.0" not in result.stderr


def load_card_labels(card: Path) -> list[str]:
    from agent.detection.card import load_card

    return list(load_card(card).labels)


def test_check_config_reads_labels_from_the_model_when_it_has_no_card(
    tmp_path: Path, assets: Path
) -> None:
    # The same model without its card beside it: the labels come from the ONNX metadata.
    bare = tmp_path / "bare.onnx"
    bare.symlink_to(assets / "person-yolov8s.onnx")
    cfg = write(tmp_path, f"model:\n  path: {bare}\ndetection:\n  labels: [person]\n")
    result = check_config(cfg)
    assert result.returncode == 1
    assert "detection.labels.0: 'person' is not a label of the model bare" in result.stderr
    assert "(its labels: Normal, Fall)" in result.stderr


def test_check_config_reports_a_store_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be\n")
    cfg = tmp_path / "store.yaml"
    cfg.write_text(f"device_id: cam\nstore:\n  path: {tmp_path / 'blocker' / 'state'}\n")
    result = check_config(cfg)
    assert result.returncode == 1
    assert (
        f"{cfg}:3: store.path: folder '{tmp_path / 'blocker' / 'state'}' cannot be written: "
        f"a file is in the way: '{tmp_path / 'blocker'}'"
    ) in result.stderr
    assert not (tmp_path / "state").exists()  # checking writes nothing


def test_check_config_leaves_nothing_behind_in_a_good_store(tmp_path: Path) -> None:
    store = tmp_path / "state"
    store.mkdir()
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(f"device_id: cam\nstore:\n  path: {store}\n")
    result = check_config(cfg)
    assert result.returncode == 0, result.stderr
    assert list(store.iterdir()) == []


def test_check_config_reports_a_private_key_given_as_trusted(tmp_path: Path) -> None:
    from agent.registry.signing import generate_key

    key, pub = generate_key(tmp_path / "signing.key")
    cfg = write(
        tmp_path, f"registry:\n  url: http://127.0.0.1:9/\n  trusted_keys:\n    - {pub}\n    - {key}\n"
    )
    result = check_config(cfg)
    assert result.returncode == 1
    assert f"{cfg}:5: registry.trusted_keys.1: {key}: not a PEM public key" in result.stderr
    assert "give its .pub" in result.stderr
    assert "trusted_keys.0" not in result.stderr


def test_an_environment_override_error_names_the_variable(tmp_path: Path) -> None:
    cfg = write(tmp_path, "mqtt:\n  host: broker.local\n  port: 1883\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(cfg)],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGE_AGENT_MQTT__PORT": "eighty", "EDGE_AGENT_MQTT__HOTS": "x"},
    )
    assert result.returncode == 1
    assert "environment EDGE_AGENT_MQTT__PORT: mqtt.port: " in result.stderr
    assert "(got 'eighty')" in result.stderr
    assert "environment EDGE_AGENT_MQTT__HOTS: mqtt.hots: unknown key (did you mean mqtt.host?)" in (
        result.stderr
    )
    assert f"{cfg}:" not in result.stderr  # the file is fine: the variable is not


def test_a_whole_section_set_from_the_environment_is_named_too() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("", "c.yaml", environ={"EDGE_AGENT_SERVICE__STALL_S": "-1"})
    assert str(err.value).startswith("environment EDGE_AGENT_SERVICE__STALL_S: service.stall_s: ")


# --- the README's table cannot drift from the schema ---


def schema_keys() -> dict[str, Any]:
    """Every leaf key of the config (``mqtt.tls.ca_file``) and its default (``...``: none)."""
    from agent.config import Config

    schema = Config.model_json_schema()
    defs: dict[str, Any] = schema.get("$defs", {})

    def section(prop: dict[str, Any]) -> dict[str, Any] | None:
        for ref in [prop, *prop.get("anyOf", [])]:
            if "$ref" in ref:
                found: dict[str, Any] = defs[ref["$ref"].rsplit("/", 1)[-1]]
                return found if "properties" in found else None
        return None

    keys: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, prop in node["properties"].items():
            inner = section(prop)
            if inner is not None:
                walk(inner, f"{prefix}{name}.")
            else:
                keys[prefix + name] = prop.get("default", ...)

    walk(schema, "")
    return keys


def readme_config_rows() -> dict[str, tuple[str, str]]:
    """``key -> (default cell, meaning cell)`` from README "Configuration"; a row naming several
    keys (``mqtt.host``, ``mqtt.port``; ``mqtt.tls.ca_file``, ``cert_file``) counts for each."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        prefix = ""
        for name in re.findall(r"`([^`]+)`", cells[0]):
            key = name if "." in name or not prefix else prefix + name
            prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
            rows[key] = (cells[1], cells[2])
    return rows


def as_yaml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def test_the_readme_lists_every_config_key_with_its_default() -> None:
    keys, rows = schema_keys(), readme_config_rows()
    missing = sorted(set(keys) - set(rows))
    stale = sorted(set(rows) - set(keys))
    assert not missing, f"README 'Configuration' lacks rows for {missing}"
    assert not stale, f"README 'Configuration' lists keys the config does not have: {stale}"
    wrong = []
    for key, default in keys.items():
        cell, meaning = rows[key]
        assert meaning, key
        # Defaults that are values, not machine-specific paths, are written as they are.
        if default in (..., None) or (isinstance(default, str) and "/" in default):
            continue
        shown = "[]" if default == [] else as_yaml(default)
        if f"`{shown}`" not in cell:
            wrong.append(f"{key}: README says {cell!r}, the config's default is {shown}")
    assert not wrong, "\n".join(wrong)
