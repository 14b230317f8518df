"""Tests generated from the updater's transition table: the table itself, an error injected in
every state, and a crash (execution stopping dead, the disk left as it was) in every state followed
by a restart, in process. The same crash with a real SIGKILL of the agent process is in
tests/test_update_kills.py."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import RegistryError
from agent.registry.publish import publish
from agent.registry.signing import generate_key
from agent.registry.transitions import (
    EVENTS,
    REST,
    STATES,
    TRANSITIONS,
    State,
    TransitionError,
    next_state,
)
from agent.registry.updater import Updater, _Run
from tests.registry_server import RegistryServer
from tests.test_updates import CONFIGURED, Rig, face_copy


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """The in-process rig of tests/test_updates.py on a registry with face 1.0.0 and 2.0.0."""
    key, pub = generate_key(tmp_path / "keys" / "publisher.key")
    model = face_copy(tmp_path / "src")
    for version in ("1.0.0", "2.0.0"):
        publish(model, tmp_path / "registry", name="face", version=version, key=key)
    with RegistryServer(tmp_path / "registry") as server:
        r = Rig(tmp_path / "state", server.url, pub)
        yield r
        r.close()


# The states an update passes through, in order; rolling_back is reached from probation on.
UPDATE_STATES: list[State] = [s for s in STATES if s not in REST and s != "rolling_back"]
# What the step of each state does on a restart (recovery redoes these; the rest are undone).
RESTART_OUTCOME = {"committing": "committed", "committed": "done"}


def after_error(state: State) -> State:
    """Where an error in ``state`` leads, through the table, when the rollback itself works."""
    s = next_state(state, "error")
    return next_state(s, "undone") if s == "rolling_back" else s


def after_restart(state: State, action: str) -> State:
    """The rest state a restart reaches from ``state``, through the table."""
    s = next_state(state, "interrupted")
    while s not in REST:
        if s == "rolling_back":
            event = "undone" if action == "update" else "rolled_back"
        else:
            event = RESTART_OUTCOME[s]
        s = next_state(s, event)  # type: ignore[arg-type]
    return s


# ------------------------------------------------------------------------------- the table


def test_every_state_has_a_way_out_on_an_error_and_on_a_restart() -> None:
    for state in STATES:
        if state not in REST:
            assert (state, "error") in TRANSITIONS, state
            assert (state, "interrupted") in TRANSITIONS, state
            assert after_restart(state, "update") in REST


def test_every_state_is_reachable_from_idle() -> None:
    seen, todo = {"idle"}, deque(["idle"])
    while todo:
        state = todo.popleft()
        for (src, _), dst in TRANSITIONS.items():
            if src == state and dst not in seen:
                seen.add(dst)
                todo.append(dst)
    assert seen == set(STATES)


def test_the_table_names_only_known_states_and_events() -> None:
    for (src, event), dst in TRANSITIONS.items():
        assert src in STATES and dst in STATES and event in EVENTS


def test_a_transition_not_in_the_table_raises(rig: Rig) -> None:
    with pytest.raises(TransitionError, match="from state 'idle' on event 'committed'"):
        next_state("idle", "committed")
    with pytest.raises(TransitionError):
        rig.updater._drive(_Run(), "trial_passed")
    assert rig.updater.state.state == "idle"


# ------------------------------------------------------------------- an error in every state


def inject(monkeypatch: pytest.MonkeyPatch, states: set[str], exc: type[BaseException]) -> None:
    real = Updater._entered

    def entered(self: Updater, state: State) -> None:
        real(self, state)
        if state in states:
            raise exc(f"injected failure in {state}")

    monkeypatch.setattr(Updater, "_entered", entered)


def assert_serves(rig: Rig, version: str) -> None:
    """``version`` serves, frames run on it, and the store's ``current`` link agrees."""
    if version == CONFIGURED:
        assert rig.serves_the_configured_model()
    else:
        assert rig.serving_version() == version
    assert rig.updater.store.current("face") == version
    rig.frames_run_on(version)


def assert_undone(rig: Rig) -> None:
    """A failed update left nothing: links as before it, its version gone."""
    assert rig.updater.store.links("face") == (CONFIGURED, None)
    assert "2.0.0" not in rig.updater.store.versions("face")


@pytest.mark.parametrize("state", [*UPDATE_STATES, "rolling_back"])
def test_an_error_in_every_state_of_an_update_leaves_a_reported_verified_model(
    rig: Rig, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rolling_back is reached by an error in probation; then it fails too.
    inject(monkeypatch, {state} if state != "rolling_back" else {"probation", state}, RegistryError)
    rig.run("2.0.0", command_id="u")
    final = after_error(state) if state != "rolling_back" else next_state(state, "error")
    s = rig.updater.state
    assert s.state == final
    _job, ok, _result, error = rig.done[-1]
    assert ok is (final == "idle")
    if final == "idle":  # an error after the commit: committed, serving, said so
        assert_serves(rig, "2.0.0")
        assert "clean-up failed" in s.history[-1]["note"]
    else:
        assert "injected failure" in (s.error or "") and "injected failure" in (error or "")
        assert_serves(rig, CONFIGURED)
        assert_undone(rig)
        monkeypatch.undo()
        rig.run("2.0.0")  # and the next update goes through
        assert rig.updater.state.state == "idle", rig.updater.state.error
        assert_serves(rig, "2.0.0")


def test_an_error_while_rolling_back_by_command_keeps_the_model_that_served(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.run("2.0.0")
    inject(monkeypatch, {"rolling_back"}, RegistryError)
    with pytest.raises(RegistryError, match="injected failure in rolling_back"):
        rig.updater.rollback("r")
    assert rig.updater.state.state == "failed"
    assert_serves(rig, "2.0.0")


# ------------------------------------------------------------------ a crash in every state


class Died(BaseException):
    """Stands for SIGKILL: execution stops right here, the disk stays as it is."""


CRASHES = [*((s, "update") for s in UPDATE_STATES), ("rolling_back", "update")]
CRASHES.append(("rolling_back", "rollback"))


@pytest.mark.parametrize(("state", "action"), CRASHES)
def test_a_crash_in_every_state_restarts_on_a_verified_model_that_is_reported(
    rig: Rig, state: State, action: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if action == "rollback":
        rig.run("2.0.0")
        inject(monkeypatch, {state}, Died)
        with pytest.raises(Died):
            rig.updater.rollback("r")
    else:
        if state == "rolling_back":  # reached by a probation that fails
            monkeypatch.setattr(rig.config, "probation_s", 0.0)
            real = Updater._entered

            def entered(self: Updater, s: State) -> None:
                real(self, s)
                if s == "probation":
                    raise RegistryError("rolled back: injected")
                if s == "rolling_back":
                    raise Died(s)

            monkeypatch.setattr(Updater, "_entered", entered)
        else:
            inject(monkeypatch, {state}, Died)
        with pytest.raises(Died):
            rig.run("2.0.0")
    assert rig.updater.state.state == state  # persisted before its step
    monkeypatch.undo()
    updater = rig.restart()
    final = after_restart(state, action)
    s = updater.state
    assert s.state == final, s.error
    last: dict[str, Any] = s.history[-1]
    assert last["ok"] is (final == "idle")
    serving = "2.0.0" if (final == "idle") == (action == "update") else CONFIGURED
    assert_serves(rig, serving)
    if action == "update" and final == "failed":
        assert_undone(rig)
    assert not any(
        (rig.store_root / "staging").rglob("*.tflite")
    )  # nothing half-done left (a .part of a cut download may stay)
    if final == "failed" and state != "rolling_back":
        assert f"interrupted in state {state}" in (s.error or "")
    if final == "idle":
        assert "after restart" in last["note"]
    # and the next update (or the same one again) goes through
    updater.config.probation_s = 0.5
    rig.run("2.0.0")
    assert updater.state.state == "idle", updater.state.error
    assert rig.serving_version() == "2.0.0"
