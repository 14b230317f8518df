"""MQTT commands: name -> handler table, pydantic-validated payloads, replies, idempotent ids.

Every command gets one reply on ``B/cmd/<name>/reply``: ``{"id", "ok", "result"?, "error"?}``.
Anything malformed (bad JSON, wrong types, unknown names or keys, oversize) gets ``ok: false`` with
the reason and changes nothing. A repeated ``id`` gets the first reply again without running twice.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import ConfigError, EdgeAgentError

if TYPE_CHECKING:
    from agent.app import Agent

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
    pass


class DetectionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score_threshold: float | None = Field(None, ge=0, le=1)
    iou_threshold: float | None = Field(None, ge=0, le=1)
    labels: list[str] | None = None


class SourcePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fps: float | None = Field(None, ge=0)


class PublishPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["every_frame", "on_change"] | None = None
    heartbeat_s: float | None = Field(None, gt=0)
    metrics_interval_s: float | None = Field(None, gt=0)


class ConfigSetCommand(_Command):
    """The settings that can change while running; anything else needs a restart."""

    detection: DetectionPatch | None = None
    source: SourcePatch | None = None
    publish: PublishPatch | None = None

    def patch(self) -> dict[str, dict[str, Any]]:
        out = {}
        for section in ("detection", "source", "publish"):
            value = getattr(self, section)
            if value is not None:
                fields = value.model_dump(exclude_unset=True)
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


# A handler returns its result, or None when the reply comes later (CommandProcessor.complete).
Handler = Callable[["Agent", Any], dict[str, Any] | None]


def _ping(agent: Agent, cmd: PingCommand) -> dict[str, Any]:
    return agent.ping()


def _config_set(agent: Agent, cmd: ConfigSetCommand) -> dict[str, Any]:
    patch = cmd.patch()
    if not patch:
        raise CommandError("nothing to change: give detection, source or publish settings")
    try:
        return agent.apply_config_patch(patch)
    except ConfigError as exc:
        raise CommandError(str(exc)) from exc


def _snapshot(agent: Agent, cmd: SnapshotCommand) -> dict[str, Any]:
    return agent.snapshot()


def _model_update(agent: Agent, cmd: ModelUpdateCommand) -> None:
    # Long-running: the reply comes from the updater when the update is committed or refused.
    agent.request_update(cmd)


def _model_rollback(agent: Agent, cmd: ModelRollbackCommand) -> dict[str, Any]:
    return agent.rollback_model()


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

    def __init__(self, agent: Agent, remember: int = 256) -> None:
        self.agent = agent
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
            result = handler(self.agent, cmd)
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
