"""Live config changes (``config/set``) persisted as an overlay file in the state folder, so they
survive a restart; applied over the config file at start."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.config import Config
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
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the live-settings overlay: {exc}") from exc
    return data if isinstance(data, dict) else {}


def write_overlay(path: Path, data: dict[str, Any]) -> None:
    """Atomically: temp file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".overlay-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("# Settings changed over MQTT (config/set); they override the config file.\n")
            yaml.safe_dump(data, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def with_overlay(config: Config) -> Config:
    """The config with the persisted live settings applied (a bad overlay is reported)."""
    overlay = read_overlay(config.overlay_path)
    if not overlay:
        return config
    try:
        return merged(config, overlay)
    except ConfigError as exc:
        raise ConfigError(f"{config.overlay_path}: {exc}") from exc
