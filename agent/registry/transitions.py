"""The updater's states and the events that move it between them, as data (Mender's
``AddTransition(state, event, next)``): the updater persists a state, runs that state's step, and
the step's outcome is an event looked up here. A pair that is not in the table is a bug and raises.

    state          what is true on disk and in service while in it
    idle, failed   rest: the model behind the store's links serves (failed: the last update or
                   rollback did not happen, and says why)
    downloading    manifest checked; artifact streaming into staging/ (a cut keeps the .part)
    verifying      artifact complete; sha256, suffix and card checked again
    staged         verified; being moved into models/NAME/VERSION (links untouched)
    trial          the new model runs on recent real frames in its own runtime (links untouched)
    probation      the new model serves (in memory only); errors and latency watched
    committing     probation passed; links and the accepted version being switched
    committed      links switched: the new model is current; the old one is being closed
    rolling_back   the model that served before is being put back (links restored), or a
                   model/rollback is switching to the previous version

Errors are events too: before the swap an error fails the update (nothing serves but the old
model); from probation on it goes through ``rolling_back``. ``interrupted`` is the event a restart
finds: a state that changed nothing fails, a state that did is done again (every step after the
swap is idempotent), so a kill anywhere ends in a state that says what serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

State = Literal[
    "idle",
    "downloading",
    "verifying",
    "staged",
    "trial",
    "probation",
    "committing",
    "committed",
    "rolling_back",
    "failed",
]
Event = Literal[
    "start",  # an update was asked for
    "rollback",  # model/rollback was asked for
    "downloaded",
    "verified",
    "installed",
    "trial_passed",
    "probation_passed",
    "committed",
    "done",
    "undone",  # an update's rollback finished: the old model serves again
    "rolled_back",  # a model/rollback finished: the previous version serves
    "error",
    "interrupted",  # found at start: the agent stopped in this state
]

STATES: tuple[State, ...] = get_args(State)
EVENTS: tuple[Event, ...] = get_args(Event)
REST: frozenset[State] = frozenset({"idle", "failed"})

TRANSITIONS: Mapping[tuple[State, Event], State] = {
    # an update, step by step
    ("idle", "start"): "downloading",
    ("failed", "start"): "downloading",
    ("downloading", "downloaded"): "verifying",
    ("verifying", "verified"): "staged",
    ("staged", "installed"): "trial",
    ("trial", "trial_passed"): "probation",
    ("probation", "probation_passed"): "committing",
    ("committing", "committed"): "committed",
    ("committed", "done"): "idle",
    # errors before the swap: the old model never stopped serving
    ("downloading", "error"): "failed",
    ("verifying", "error"): "failed",
    ("staged", "error"): "failed",
    ("trial", "error"): "failed",
    # errors after the swap: put the old model back first
    ("probation", "error"): "rolling_back",
    ("committing", "error"): "rolling_back",
    # committed: the new model is current and serves; a cleanup error does not undo that
    ("committed", "error"): "idle",
    # model/rollback
    ("idle", "rollback"): "rolling_back",
    ("failed", "rollback"): "rolling_back",
    ("rolling_back", "undone"): "failed",
    ("rolling_back", "rolled_back"): "idle",
    ("rolling_back", "error"): "failed",
    # a restart finds the agent was stopped in a state: undo what changed nothing, redo the rest
    ("downloading", "interrupted"): "failed",
    ("verifying", "interrupted"): "failed",
    ("staged", "interrupted"): "failed",
    ("trial", "interrupted"): "failed",
    ("probation", "interrupted"): "rolling_back",
    ("committing", "interrupted"): "committing",
    ("committed", "interrupted"): "committed",
    ("rolling_back", "interrupted"): "rolling_back",
}


class TransitionError(RuntimeError):
    """A (state, event) pair the table does not have: a bug in the updater."""


def next_state(state: State, event: Event) -> State:
    """The state ``event`` leads to from ``state``."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError(f"no transition from state {state!r} on event {event!r}") from None


def is_state(value: object) -> bool:
    return value in STATES
