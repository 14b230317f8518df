"""MQTT commands: name -> handler table, pydantic-validated payloads, replies, idempotent ids.
Handlers act on narrow interfaces (``CommandTargets``: the model slot, the live config, the
snapshot taker, the updater), never on the whole agent.

Every command gets one reply on ``B/cmd/<name>/reply``: ``{"id", "ok", "result"?, "error"?}``.
Anything malformed (bad JSON, wrong types, unknown names or keys, oversize) gets ``ok: false`` with
the reason and changes nothing. A repeated ``id`` gets the first reply again without running twice.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import __version__
from agent.errors import ConfigError, EdgeAgentError, UnknownCameraError

if TYPE_CHECKING:
    from agent.config import RegistryConfig
    from agent.registry.updater import Job
    from agent.serving import ServingInfo

log = logging.getLogger("agent.commands")

MAX_PAYLOAD_BYTES = 64 * 1024


class CommandError(EdgeAgentError):
    """A command was understood but cannot be carried out."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)


class PingCommand(_Command):
    pass


class SnapshotCommand(_Command):
    camera: str | None = Field(None, description="the camera; may be left out with one camera")


class DetectionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score_threshold: float | None = Field(None, ge=0, le=1)
    iou_threshold: float | None = Field(None, ge=0, le=1)
    labels: list[str] | None = None


class SourcePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fps: float | None = Field(None, ge=0)


class MotionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    threshold: int | None = Field(None, ge=1, le=255)
    min_area: float | None = Field(None, ge=0, le=1)
    recheck_s: float | None = Field(None, gt=0)


class PublishPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detections: Literal["every_frame", "on_change", "off"] | None = None
    mode: Literal["every_frame", "on_change"] | None = Field(
        None, description="the former name of detections"
    )
    heartbeat_s: float | None = Field(None, gt=0)
    metrics_interval_s: float | None = Field(None, gt=0)


class ConfigSetCommand(_Command):
    """The settings that can change while running; anything else needs a restart. ``source``
    and ``motion`` are a camera's: with several cameras ``camera`` names which."""

    camera: str | None = None
    detection: DetectionPatch | None = None
    source: SourcePatch | None = None
    motion: MotionPatch | None = None
    publish: PublishPatch | None = None

    def patch(self) -> dict[str, dict[str, Any]]:
        out = {}
        for section in ("detection", "source", "motion", "publish"):
            value = getattr(self, section)
            if value is not None:
                fields = value.model_dump(exclude_unset=True)
                if section == "publish" and "mode" in fields:
                    fields.setdefault("detections", fields.pop("mode"))
                if fields:
                    out[section] = fields
        return out


class ModelUpdateCommand(_Command):
    name: str | None = None
    version: str | None = None
    channel: str | None = None
    allow_downgrade: bool = False
    replace: bool = False  # serve another model name, or labels not covering detection.labels


class ModelRollbackCommand(_Command):
    pass


class ServingModel(Protocol):
    """The model slot, as the handlers see it: what serves now."""

    @property
    def info(self) -> ServingInfo: ...


class Uptime(Protocol):
    def uptime_s(self) -> float: ...


class LiveSettings(Protocol):
    """The live config: validates, persists and applies a patch (ConfigError: nothing changed)."""

    def apply(self, patch: dict[str, Any]) -> dict[str, Any]: ...


class SnapshotTaker(Protocol):
    def take(self, camera: str | None = None) -> dict[str, Any]: ...


class CameraNames(Protocol):
    """The cameras, as the handlers see them."""

    @property
    def single(self) -> bool: ...

    @property
    def names(self) -> list[str]: ...


class Updates(Protocol):
    """The updater: runs one update at a time on its thread, and rolls back under its lock."""

    config: RegistryConfig

    def request(self, job: Job) -> None: ...

    def rollback(self, command_id: str | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CommandTargets:
    """What the handlers act on, and nothing more (no Agent: ``app.py`` wires these in)."""

    model: ServingModel
    usage: Uptime
    settings: LiveSettings
    snapshots: SnapshotTaker
    cameras: CameraNames
    updates: Updates | None = None


# A handler returns its result, or None when the reply comes later (CommandProcessor.complete).
Handler = Callable[[CommandTargets, Any], dict[str, Any] | None]


def _ping(t: CommandTargets, cmd: PingCommand) -> dict[str, Any]:
    info = t.model.info
    return {
        "agent_version": __version__,
        "uptime_s": t.usage.uptime_s(),
        "ts": round(time.time(), 3),
        "model": {"name": info.name, "version": info.version},
    }


# The sections of config/set that are a camera's (``cameras.NAME.<section>`` with several).
CAMERA_SECTIONS = ("source", "motion")


def _config_set(t: CommandTargets, cmd: ConfigSetCommand) -> dict[str, Any]:
    patch = cmd.patch()
    if not patch:
        raise CommandError("nothing to change: give detection, source, motion or publish settings")
    camera = {k: patch.pop(k) for k in CAMERA_SECTIONS if k in patch}
    if cmd.camera is not None and not camera:
        raise CommandError(
            "'camera' goes with a camera's settings (source, motion); detection and publish "
            "are the device's"
        )
    if camera:
        name = _camera(t.cameras, cmd.camera)
        if t.cameras.single:
            patch.update(camera)
        else:
            patch["cameras"] = {name: camera}
    try:
        return t.settings.apply(patch)
    except ConfigError as exc:
        raise CommandError(str(exc)) from exc


def _camera(cameras: CameraNames, name: str | None) -> str:
    """The camera a command is about: ``name``, or the only one; refused with the list."""
    names = cameras.names
    if name is None and cameras.single:
        return names[0]
    if name is None or name not in names:
        raise UnknownCameraError(name, names)
    return name


def _snapshot(t: CommandTargets, cmd: SnapshotCommand) -> dict[str, Any]:
    return t.snapshots.take(_camera(t.cameras, cmd.camera))


def _updater(t: CommandTargets) -> Updates:
    if t.updates is None:
        raise CommandError("no registry is configured (config section 'registry')")
    return t.updates


def _model_update(t: CommandTargets, cmd: ModelUpdateCommand) -> None:
    # Long-running: the reply comes from the updater when the update is committed or refused.
    updates = _updater(t)
    from agent.registry.updater import Job  # only a device with a registry needs it

    updates.request(
        Job(
            cmd.name,  # None: the model in service
            cmd.version or "latest",
            cmd.channel or updates.config.channel,
            allow_downgrade=cmd.allow_downgrade,
            command_id=cmd.id,
            replace=cmd.replace,
        )
    )


def _model_rollback(t: CommandTargets, cmd: ModelRollbackCommand) -> dict[str, Any]:
    return _updater(t).rollback(cmd.id)


COMMANDS: dict[str, tuple[type[_Command], Handler]] = {
    "ping": (PingCommand, _ping),
    "config/set": (ConfigSetCommand, _config_set),
    "snapshot": (SnapshotCommand, _snapshot),
    "model/update": (ModelUpdateCommand, _model_update),
    "model/rollback": (ModelRollbackCommand, _model_rollback),
}


def _no_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which are not JSON and would come back in replies
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: "
        f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
        for e in exc.errors()
    )


class CommandProcessor:
    """Turns one incoming message into at most one reply; remembers recent ids."""

    def __init__(self, targets: CommandTargets, remember: int = 256) -> None:
        self.targets = targets
        self._replies: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._remember = remember
        self.handled = 0
        self.rejected = 0
        self._pending: set[tuple[str, str | None]] = set()

    def handle(self, name: str, payload: bytes) -> tuple[str, bytes | None]:
        """Returns (command name, reply payload); no payload when the reply comes later."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return self._error(
                name, None, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}"
            )
        try:
            body = json.loads(payload, parse_constant=_no_constant, parse_float=_finite_float)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._error(name, None, f"payload is not JSON: {exc}")
        except RecursionError:
            return self._error(name, None, "payload is not JSON: nested too deeply")
        cmd_id = body.get("id") if isinstance(body, dict) else None
        cmd_id = cmd_id if isinstance(cmd_id, str) and 0 < len(cmd_id) <= 128 else None
        if cmd_id is not None and cmd_id in self._replies and self._replies[cmd_id][0] == name:
            return name, self._replies[cmd_id][1]
        if (name, cmd_id) in self._pending:
            return name, None  # still running: its one reply is yet to come
        if name not in COMMANDS:
            return self._error(name, cmd_id, f"unknown command {name!r}; known: {sorted(COMMANDS)}")
        if not isinstance(body, dict):
            return self._error(name, None, "payload must be a JSON object with an 'id'")
        schema, handler = COMMANDS[name]
        try:
            # strict: "0.5" or true is not a number, "yes" not a boolean
            cmd = schema.model_validate(body, strict=True)
        except ValidationError as exc:
            return self._error(name, cmd_id, _validation_message(exc))
        try:
            result = handler(self.targets, cmd)
        except EdgeAgentError as exc:
            return self._remembered(name, cmd.id, self._reply(cmd.id, ok=False, error=str(exc)))
        except Exception as exc:  # a handler bug must not kill the control loop
            log.exception("command %s (id %s) failed", name, cmd.id)
            return self._remembered(
                name, cmd.id, self._reply(cmd.id, ok=False, error=f"internal error: {exc}")
            )
        self.handled += 1
        if result is None:
            self._pending.add((name, cmd.id))
            return name, None
        return self._remembered(name, cmd.id, self._reply(cmd.id, ok=True, result=result))

    def complete(
        self,
        name: str,
        cmd_id: str,
        *,
        ok: bool,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bytes:
        """The reply of a command whose handler deferred it; remembered like any other."""
        self._pending.discard((name, cmd_id))
        reply = self._reply(cmd_id, ok=ok, result=result, error=error)
        return self._remembered(name, cmd_id, reply)[1]

    def _error(self, name: str, cmd_id: str | None, error: str) -> tuple[str, bytes]:
        self.rejected += 1
        log.info("command %s rejected: %s", name, error)
        return name, self._reply(cmd_id, ok=False, error=error)

    def _remembered(self, name: str, cmd_id: str, reply: bytes) -> tuple[str, bytes]:
        self._replies[cmd_id] = (name, reply)
        while len(self._replies) > self._remember:
            self._replies.popitem(last=False)
        return name, reply

    @staticmethod
    def _reply(
        cmd_id: str | None,
        *,
        ok: bool,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bytes:
        body: dict[str, Any] = {"id": cmd_id, "ok": ok}
        if result is not None:
            body["result"] = result
        if error is not None:
            body["error"] = error
        return json.dumps(body, separators=(",", ":")).encode()
