"""Live config changes (``config/set``) persisted as an overlay file in the state folder, so they
survive a restart; applied over the config file at start. A damaged overlay is set aside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.atomic import write_atomic
from agent.config import Config
from agent.damaged import set_aside
from agent.errors import ConfigError


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merged(config: Config, patch: dict[str, Any]) -> Config:
    """``config`` with ``patch`` applied, validated as a whole."""
    try:
        return Config.model_validate(deep_merge(config.model_dump(), patch))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(problems) from exc


def read_overlay(path: Path) -> dict[str, Any]:
    """The persisted live settings; a file that cannot be read as a YAML mapping is damaged: it
    is set aside (``agent.damaged``) and the agent goes on with none."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        set_aside(path, f"not readable as YAML: {_one_line(exc)}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        set_aside(path, f"not a mapping of settings but a {type(data).__name__}")
        return {}
    return data


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def write_overlay(path: Path, data: dict[str, Any]) -> None:
    header = "# Settings changed over MQTT (config/set); they override the config file.\n"
    write_atomic(path, (header + yaml.safe_dump(data, sort_keys=True)).encode(), 0o600)


def with_overlay(config: Config) -> Config:
    """The config with the persisted live settings applied. An overlay that no longer fits the
    config (edited by hand, or from an older version) is set aside, and the config used as is."""
    overlay = read_overlay(config.overlay_path)
    if not overlay:
        return config
    try:
        return merged(config, overlay)
    except ConfigError as exc:
        set_aside(config.overlay_path, f"its settings are invalid: {exc}")
        return config
