"""The model updater: fetches a signed manifest, downloads and checks the artifact, stages it,
tries it on real frames, swaps it into the model slot between two frames, watches it during
probation and commits it or rolls back; and runs ``model/rollback``. Both are driven by the
transition table in ``agent.registry.transitions``: the state is persisted before every step, the
step's outcome is an event, the table gives the next state.

The store's ``current``/``previous`` links change only in ``committing`` and ``rolling_back``, from
values recorded in ``updater.json`` before the step, so every step after the swap can be done
again after a crash; a restart (``recover``) undoes what changed nothing and redoes the rest.
The configured model is imported into the store as the first version of ``registry.model``
(``load_serving``), so the first update can be rolled back.

Tests only: ``EDGE_AGENT_TEST_PAUSE_IN=<state>`` in the environment makes the updater stop, for
good, right after it persisted that state (the process is then killed by the test), so a SIGKILL
in any state is deterministic. It is read once, at construction, and logged when set.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml

from agent import __version__
from agent.atomic import write_atomic
from agent.config import RegistryConfig
from agent.damaged import set_aside
from agent.detection import Detector
from agent.detection.detector import file_sha256
from agent.errors import (
    ChecksumError,
    DecodeError,
    EdgeAgentError,
    ManifestError,
    MissingFileError,
    ModelError,
    RegistryError,
    ResumableDownloadError,
)
from agent.health import Heartbeat, supervised
from agent.registry.client import RegistryClient
from agent.registry.manifest import Manifest, dump_json, load_index, load_manifest
from agent.registry.names import check_name, is_newer
from agent.registry.signing import load_public_keys
from agent.registry.store import Active, ModelStore
from agent.registry.transitions import REST, STATES, Event, State, next_state
from agent.serving import ModelSlot

log = logging.getLogger("agent.updater")

PAUSE_ENV = "EDGE_AGENT_TEST_PAUSE_IN"

__all__ = ["STATES", "Job", "TrialError", "UpdateState", "Updater"]


@dataclass
class Job:
    """One requested update: a version, or ``latest`` on a channel. ``name`` None: the model in
    service. ``replace``: allowed to serve another model name, or labels that do not cover the
    watched ones."""

    name: str | None
    version: str
    channel: str
    allow_downgrade: bool = False
    command_id: str | None = None
    replace: bool = False


@dataclass
class UpdateState:
    """What is persisted in ``<store>/updater.json`` before each step."""

    state: str = "idle"
    action: str = "update"  # "update" or "rollback"
    name: str | None = None
    version: str | None = None
    from_name: str | None = None
    from_version: str | None = None
    command_id: str | None = None
    started: float | None = None
    error: str | None = None
    # The store's links and active record before the change and after it, so the change can be
    # undone or done again from these values alone after a crash.
    links_before: dict[str, list[str | None]] = field(default_factory=dict)
    links_after: dict[str, list[str | None]] = field(default_factory=dict)
    active_before: list[str | None] | None = None
    active_after: list[str | None] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class TrialError(RegistryError):
    """The staged model failed its trial."""


OnChange = Callable[[UpdateState, dict[str, Any]], None]
OnDone = Callable[[Job, bool, dict[str, Any] | None, str | None], None]


@dataclass
class _Run:
    """What one drive of the state machine holds in memory (lost in a crash, never needed after
    one: recovery works from ``UpdateState`` alone)."""

    job: Job | None = None
    restart: bool = False
    manifest: Manifest | None = None
    new: Detector | None = None  # the staged model (update) or the target (rollback)
    new_paths: tuple[Path, Path | None] | None = None
    old: Detector | None = None  # what served before the swap
    old_paths: tuple[Path, Path | None] | None = None
    old_origin: str = "store"
    exc: BaseException | None = None
    interrupted_in: State | None = None  # set by a restart: the state the agent stopped in
    note: str | None = None
    result: dict[str, Any] | None = None


class Updater:
    """Runs updates on its own thread while the slot keeps serving; ``rollback`` runs on the
    caller's thread under the same lock, so the two never overlap."""

    def __init__(
        self,
        config: RegistryConfig,
        store_root: Path,
        slot: ModelSlot,
        *,
        configured: tuple[Path, Path | None],
        watched_labels: Callable[[], Sequence[str]] = tuple,
        recent_frames: Callable[[], Sequence[np.ndarray]] = list,
        frame_stats: Callable[[], Mapping[str, float]] = dict,
        on_change: OnChange | None = None,
        on_done: OnDone | None = None,
    ) -> None:
        self.config = config
        self.slot = slot
        self.configured = (Path(configured[0]), configured[1])
        self.store = ModelStore(store_root)
        self.client = RegistryClient(config.url, timeout_s=config.timeout_s)
        self.keys = load_public_keys(config.trusted_keys)
        self.watched_labels = watched_labels
        self.recent_frames = recent_frames
        self.frame_stats = frame_stats
        self.state_path = Path(store_root) / "updater.json"
        self.state = self._load_state()
        self._on_change: OnChange = on_change or (lambda s, extra: None)
        self._on_done: OnDone = on_done or (lambda job, ok, result, error: None)
        # The heartbeat of the updater thread: called at least once a second while it runs
        # (wired to the health registry by the app).
        self.beat: Callable[[], None] = lambda: None
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recovered = False
        self._serving_paths: tuple[Path, Path | None] | None = None
        self._pause_in = os.environ.get(PAUSE_ENV) or None
        if self._pause_in is not None:
            log.warning(
                "%s=%s: the updater will stop in that state (tests only)", PAUSE_ENV, self._pause_in
            )
        self._steps: dict[State, Callable[[_Run], Event]] = {
            "downloading": self._step_download,
            "verifying": self._step_verify,
            "staged": self._step_install,
            "trial": self._step_trial,
            "probation": self._step_probation,
            "committing": self._step_commit,
            "committed": self._step_committed,
            "rolling_back": self._step_roll_back,
        }

    # --- persisted state ---

    def _load_state(self) -> UpdateState:
        try:
            data = json.loads(self.state_path.read_text())
            return UpdateState(**data)
        except FileNotFoundError:
            return UpdateState()
        except (OSError, ValueError, TypeError) as exc:  # a power cut mid-write, a bad sector
            set_aside(self.state_path, f"unreadable update state, starting from idle: {exc}")
            return UpdateState()

    def _persist(self, state: State, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.state = state
        self.state.history = self.state.history[-20:]
        write_atomic(self.state_path, json.dumps(asdict(self.state)).encode())
        self._on_change(self.state, {})

    # --- which model serves ---

    def active_name(self) -> str:
        """The model name that serves: the one an update recorded, else ``registry.model``."""
        try:
            active = self.store.active()
        except RegistryError as exc:
            log.error("%s: serving %s", exc, self.config.model)
            return self.config.model
        return active.name if active is not None else self.config.model

    def load_serving(self) -> Detector:
        """At start: finish or undo an interrupted update, import the configured model into the
        store (the first version of ``registry.model``) when it is new there, and put the
        model that was last committed in the slot; the configured model when that cannot load.
        Raises ModelError when nothing can be loaded."""
        self.recover()
        with self._busy:
            configured = self._import_configured()
            name = self.active_name()
            detector: Detector | None = None
            origin = "store"
            try:
                version = self.store.current(name)
            except RegistryError as exc:
                log.error("%s: serving the configured model", exc)
                version = None
            if version is not None:
                imported = self._imported_version(name)
                origin = "config" if imported == version else "store"
                if configured is not None and imported == version:
                    detector, paths = configured, self.configured
                    configured = None
                else:
                    try:
                        paths = self._version_paths(name, version)
                        self._check_intact(name, version, paths[0])
                        detector = self.slot.load(paths[0], card=paths[1])
                    except EdgeAgentError as exc:
                        log.error(
                            "store model %s %s cannot be loaded (%s): serving %s",
                            name,
                            version,
                            exc,
                            self.configured[0],
                        )
            if detector is None:
                origin, paths = "config", self.configured
                detector = configured or self.slot.load(paths[0], card=paths[1])
                configured = None
            if configured is not None:
                configured.close()
            self._serving_paths = paths
            self.slot.serve(detector, origin=origin)
            return detector

    def _version_paths(self, name: str, version: str) -> tuple[Path, Path | None]:
        folder = self.store.version_dir(name, version)
        return self.store.model_file(name, version), folder / "card.yaml"

    def _check_intact(self, name: str, version: str, model: Path) -> None:
        """The model file is the one that was verified when it was installed (an SD card can
        change a file under us)."""
        expected = self.store.expected_sha256(name, version)
        actual = file_sha256(model)
        if expected is not None and actual != expected:
            raise ChecksumError(
                f"{model}: sha256 {actual} is not the {expected} it had when installed (damaged)"
            )

    def _imported_version(self, name: str) -> str | None:
        if name != self.config.model:
            return None
        try:
            imported = self.store.imported(name)
        except RegistryError:
            return None
        return imported.version if imported is not None else None

    def _import_configured(self) -> Detector | None:
        """Import the configured model file as a version of ``registry.model`` when the store
        does not hold it yet. The first import becomes current when nothing is; a configured
        model that changed since the last import (the user edited ``model.path``) becomes
        current too: the config wins over the store. Returns the configured detector when it
        was loaded for this, else None."""
        path, card = self.configured
        name = self.config.model
        try:
            if path.resolve().is_relative_to(self.store.models.resolve()):
                return None  # model.path points into the store already
            digest = file_sha256(path)
        except OSError as exc:
            log.warning("configured model %s cannot be read (%s): not imported", path, exc)
            return None
        try:
            before = self.store.imported(name)
        except RegistryError as exc:
            log.error("%s: importing the configured model again", exc)
            before = None
        if before is not None and before.sha256 == digest:
            return None
        try:
            detector = self.slot.load(path, card=card)
        except EdgeAgentError as exc:
            log.error("configured model %s cannot be loaded (%s): not imported", path, exc)
            return None
        try:
            card_yaml = yaml.safe_dump(detector.card.model_dump(exclude_none=True))
            version = self.store.import_file(name, detector.card.version, path, card_yaml, digest)
            current, previous = self.store.links(name)
            if current is None or before is not None:
                keep = current if current not in (None, version) else previous
                self.store.set_links(name, version, keep)
                self.store.set_active(None)
                log.info("configured model %s imported as %s %s: serving it", path, name, version)
            elif previous is None and current != version:
                # A store from before imports: the configured model becomes what to go back to.
                self.store.set_links(name, current, version)
        except (EdgeAgentError, OSError) as exc:
            log.warning(
                "configured model %s not imported into the store (%s): the first update "
                "cannot be rolled back",
                path,
                exc,
            )
        return detector

    # --- start-up ---

    def recover(self) -> None:
        """Finish or undo what an interrupted update or rollback left (before a model is
        loaded). Runs once; ``load_serving`` calls it first."""
        if self._recovered:
            return
        self._recovered = True
        s = self.state
        if s.state in REST:
            return
        if s.state not in STATES:
            log.error("updater state %r unknown: taken as failed", s.state)
            self._persist("failed", error=f"unknown state {s.state!r} found at start")
            return
        log.warning(
            "%s of %s to %s was interrupted in state %s: recovering",
            s.action,
            s.name,
            s.version,
            s.state,
        )
        self._adopt_legacy_state()
        with self._busy:
            stopped_in: State = s.state
            if next_state(stopped_in, "interrupted") == "failed" or stopped_in == "probation":
                self.state.error = f"interrupted in state {stopped_in} (restart)"
            self._drive(_Run(restart=True, interrupted_in=stopped_in), "interrupted")

    def _adopt_legacy_state(self) -> None:
        """An ``updater.json`` written before the links were recorded (an agent upgraded in the
        middle of an update): take the links as the disk has them. If ``current`` is the new
        version already, the old agent had committed: finish the commit; else undo."""
        s = self.state
        if s.action != "update" or s.links_before or not s.name or not s.version:
            return
        links = list(self.store.links(s.name))
        s.links_before = s.links_after = {s.name: links}
        s.active_before = s.active_after = None
        if links[0] == s.version:
            s.state = "committing"
        elif s.state in ("committing", "committed"):
            s.state = "probation"

    # --- requests ---

    def request(self, job: Job) -> None:
        """Queue an update; refused at once (RegistryError) when one is running, or when it
        would serve another model name without ``replace``."""
        name = job.name or self.active_name()
        check_name("model name", name)
        if job.version != "latest":
            check_name("version", job.version)
        serving = self.active_name()
        if name != serving and not job.replace:
            raise RegistryError(
                f"model/update names {name!r}, but this device serves {serving!r} "
                f'(registry.model): send "replace": true to serve {name!r} instead'
            )
        if self._busy.locked() or not self._jobs.empty():
            raise RegistryError(
                f"an update is already running ({self.state.state} {self.state.version})"
            )
        job.name = name
        self._jobs.put(job)

    def rollback(self, command_id: str | None = None) -> dict[str, Any]:
        """Back to the previous verified model, now, on the caller's thread. Refused while an
        update runs (RegistryError); a rollback that fails leaves the model that served."""
        if not self._busy.acquire(blocking=False):
            raise RegistryError(
                f"an update is running ({self.state.state} {self.state.name} "
                f"{self.state.version}): roll back once it is done"
            )
        try:
            plan = self._rollback_plan()
            self.state.action = "rollback"
            for key, value in plan.items():
                setattr(self.state, key, value)
            self.state.command_id = command_id
            self.state.started = time.time()
            self.state.error = None
            self._drive(_Run(), "rollback")
            s = self.state
            if s.state != "idle":
                raise RegistryError(s.error or "rollback failed")
            rolled_from = (
                s.from_version if s.from_name == s.name else f"{s.from_name} {s.from_version}"
            )
            log.warning("model rolled back from %s to %s %s", rolled_from, s.name, s.version)
            return {"name": s.name, "version": s.version, "rolled_back_from": rolled_from}
        finally:
            self._busy.release()

    def _rollback_plan(self) -> dict[str, Any]:
        name = self.active_name()
        active = self.store.active()
        current, previous = self.store.links(name)
        before = [active.name, active.previous] if active else None
        if active is not None and active.previous not in (None, name):
            other = active.previous
            target = self.store.current(other)
            if target is not None:  # the last commit replaced the model name: go back to it
                return {
                    "name": other,
                    "version": target,
                    "from_name": name,
                    "from_version": current,
                    "links_before": {},
                    "links_after": {},
                    "active_before": before,
                    "active_after": [other, name],
                }
        if previous is None:
            versions = ", ".join(self.store.versions(name)) or "none"
            raise RegistryError(
                f"no previous version of {name} to roll back to (in the store: {versions})"
            )
        return {
            "name": name,
            "version": previous,
            "from_name": name,
            "from_version": current,
            "links_before": {name: [current, previous]},
            "links_after": {name: [previous, current]},
            "active_before": before,
            "active_after": before,
        }

    def start(self, heartbeat: Heartbeat | None = None) -> None:
        """Run the update loop on its own supervised thread; ``heartbeat`` (from the agent's
        health registry) is beaten at least once a second and marked dead if the thread dies."""
        if heartbeat is not None:
            self.beat = heartbeat.beat
        self._thread = supervised("updater", self._loop, heartbeat)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        interval = self.config.poll_interval_s
        next_poll = time.monotonic() + interval if interval else None
        while not self._stop.is_set():
            self.beat()
            wait = 1.0 if next_poll is None else min(1.0, max(0.0, next_poll - time.monotonic()))
            try:
                job = self._jobs.get(timeout=wait)
            except queue.Empty:
                if next_poll is None or time.monotonic() < next_poll:
                    continue
                job = Job(None, "latest", self.config.channel)
            if job is None:
                return
            if next_poll:
                next_poll = time.monotonic() + interval
            try:
                with self._busy:
                    self._run(job)
            except Exception:  # a bug must not end the updater thread
                log.exception("update of %s failed unexpectedly", job.name)

    # --- the state machine ---

    def _run(self, job: Job) -> None:
        """One update: the checks that change nothing, then the state machine."""
        name = job.name or self.active_name()
        job.name = name
        try:
            version = job.version
            if version == "latest":
                index = load_index(
                    self.client.fetch("index.json"), self.client.fetch("index.json.sig"), self.keys
                )
                version = index.resolve(name, job.channel)
            check_name("version", version)
            serving = self.active_name()
            current, previous = self.store.links(name)
            if name == serving and version == current:
                if job.command_id is not None:
                    self._on_done(
                        job,
                        True,
                        {"name": name, "version": version, "note": "already the current model"},
                        None,
                    )
                return  # a poll that finds nothing new stays quiet
            active = self.store.active()
            serving_version = self.store.current(serving)
        except EdgeAgentError as exc:
            log.error("update of %s to %s refused: %s", name, job.version, exc)
            self._on_done(job, False, None, str(exc))
            return
        keep = current if current not in (None, version) else previous
        self.state.action = "update"
        self.state.name, self.state.version = name, version
        self.state.from_name, self.state.from_version = serving, serving_version
        self.state.command_id = job.command_id
        self.state.started = time.time()
        self.state.error = None
        self.state.links_before = {name: [current, previous]}
        self.state.links_after = {name: [version, keep]}
        self.state.active_before = [active.name, active.previous] if active else None
        self.state.active_after = [name, serving if serving != name else None]
        self._drive(_Run(job=job), "start")

    def _drive(self, run: _Run, event: Event) -> None:
        """Persist the next state, run its step, look its outcome up; until a rest state."""
        state = cast(State, self.state.state)
        while True:
            state = next_state(state, event)
            if state in REST:
                self._settle(run, state)
                return
            self._persist(state)
            try:
                self._entered(state)
                event = self._steps[state](run)
            except EdgeAgentError as exc:
                event = self._error(run, state, exc, str(exc))
            except Exception as exc:  # a bug must not leave a half-done update behind
                log.exception("%s failed unexpectedly in state %s", self.state.action, state)
                event = self._error(run, state, exc, f"internal error: {exc}")

    def _entered(self, state: State) -> None:
        """Called right after ``state`` is persisted, before its step: the tests' pause point."""
        if state == self._pause_in:
            log.warning(
                "%s=%s: the updater stops here until the process is killed", PAUSE_ENV, state
            )
            threading.Event().wait()

    def _error(self, run: _Run, state: State, exc: BaseException, message: str) -> Event:
        if state == "committed":
            # Committed and serving: a failed clean-up is worth a note, not a rollback.
            log.warning(
                "after the commit of %s %s: %s", self.state.name, self.state.version, message
            )
            run.note = f"committed; clean-up failed: {message}"
            return "error"
        if run.exc is None:
            run.exc = exc
        if state == "rolling_back" and self.state.error:
            message = f"{self.state.error}; rolling back failed: {message}"
        log.error(
            "%s of %s to %s: %s (in state %s)",
            self.state.action,
            self.state.name,
            self.state.version,
            message,
            state,
        )
        self.state.error = message
        return "error"

    def _settle(self, run: _Run, state: State) -> None:
        """Reach a rest state: make sure what serves is what the state says, tidy up, record."""
        s = self.state
        ok = state == "idle"
        if not ok:
            # Whatever went wrong, the model that served before serves again.
            if run.old is not None and self.slot.loaded and self.slot.detector is not run.old:
                self.slot.serve(run.old, origin=run.old_origin)
                self._serving_paths = run.old_paths
            if s.action == "update" and s.name and s.version:
                self._drop_version(s.name, s.version)
                resumable = (
                    isinstance(run.exc, ResumableDownloadError)
                    or run.interrupted_in == "downloading"
                )
                if not resumable:  # a cut download keeps its .part: the next try resumes it
                    self.store.clean_staging(s.name)
        if run.new is not None and not (self.slot.loaded and self.slot.detector is run.new):
            run.new.close()
        if run.restart and ok:
            run.note = run.note or f"{s.action} finished after restart"
        entry: dict[str, Any] = {
            "action": s.action,
            "name": s.name,
            "version": s.version,
            "ok": ok,
            "error": None if ok else s.error,
            "ts": round(time.time(), 3),
        }
        if run.note:
            entry["note"] = run.note
        s.history.append(entry)
        self._persist(state, error=None if ok else s.error)
        if run.job is not None:
            result = run.result if ok else None
            if result is not None and run.note:
                result = {**result, "note": run.note}
            self._on_done(run.job, ok, result, None if ok else s.error)

    def _drop_version(self, name: str, version: str) -> None:
        """Remove a version an update installed, unless a link or the import still needs it."""
        try:
            if version in self.store.links(name) or version == self._imported_version(name):
                return
            self.store.remove(name, version)
        except RegistryError as exc:
            log.warning("%s %s not removed from the store: %s", name, version, exc)

    def _apply_links(
        self, links: dict[str, list[str | None]], active: list[str | None] | None
    ) -> None:
        for name, (current, previous) in links.items():
            self.store.set_links(name, current, previous)
        if active is None:
            self.store.set_active(None)
        else:
            self.store.set_active(Active(cast(str, active[0]), active[1]))

    # --- the steps: each returns the event its outcome is ---

    def _step_download(self, run: _Run) -> Event:
        job = run.job
        assert job is not None and self.state.name and self.state.version
        manifest = self._fetch_manifest(job, self.state.name, self.state.version)
        self._check_labels(job, manifest)
        self._download(manifest)
        run.manifest = manifest
        return "downloaded"

    def _step_verify(self, run: _Run) -> Event:
        assert run.manifest is not None
        manifest = run.manifest
        staging = self.store.staging_dir(manifest.name, manifest.version)
        artifact = staging / manifest.artifact.file
        if file_sha256(artifact) != manifest.artifact.sha256:
            raise ChecksumError(f"{artifact}: changed after download")
        if artifact.suffix.lower() not in (".onnx", ".tflite"):
            raise ManifestError(f"artifact {manifest.artifact.file}: not an .onnx or .tflite file")
        card = manifest.model_card()
        (staging / "card.yaml").write_text(yaml.safe_dump(card.model_dump(exclude_none=True)))
        (staging / "manifest.json").write_bytes(dump_json(manifest))
        return "verified"

    def _step_install(self, run: _Run) -> Event:
        assert run.manifest is not None
        self.store.install(run.manifest.name, run.manifest.version)
        return "installed"

    def _step_trial(self, run: _Run) -> Event:
        assert run.manifest is not None
        run.new = self._trial(run.manifest)
        run.new_paths = self._version_paths(run.manifest.name, run.manifest.version)
        return "trial_passed"

    def _step_probation(self, run: _Run) -> Event:
        assert run.manifest is not None and run.new is not None
        manifest = run.manifest
        before = dict(self.frame_stats())
        if self.slot.loaded:
            run.old_origin = self.slot.info.origin
        run.old_paths = self._serving_paths
        run.old = self.slot.serve(run.new, origin="store (probation)")
        self._serving_paths = run.new_paths
        log.info(
            "%s %s swapped in; probation for %.0f s",
            manifest.name,
            manifest.version,
            self.config.probation_s,
        )
        # Model runs, not frames: the motion gate's skipped frames say nothing of the model.
        frames0, errors0 = before.get("inferences", 0.0), before.get("errors", 0.0)
        deadline = time.monotonic() + self.config.probation_s
        problem = None
        while time.monotonic() < deadline and not self._stop.is_set():
            self.beat()
            time.sleep(0.2)
            now = self.frame_stats()
            frames = now.get("inferences", 0.0) - frames0
            errors = now.get("errors", 0.0) - errors0
            attempts = frames + errors
            if attempts >= 3 and errors / attempts > self.config.probation_max_error_rate:
                problem = f"{errors:.0f} of {attempts:.0f} frames failed in probation"
                break
        if problem is None and self._stop.is_set():
            problem = "the agent is stopping: probation cut short"
        base = before.get("latency_ms_p50", 0.0)
        if problem is None and base > 0:
            now_p50 = self.frame_stats().get("latency_ms_p50", 0.0)
            if now_p50 > self.config.latency_budget * base:
                budget = self.config.latency_budget
                problem = f"{now_p50:.1f} ms per frame in probation, over {budget}x {base:.1f} ms"
        if problem is not None:
            raise RegistryError(f"rolled back: {problem}")
        return "probation_passed"

    def _step_commit(self, run: _Run) -> Event:
        s = self.state
        assert s.name and s.version
        self._apply_links(s.links_after, s.active_after)  # the switch; idempotent
        self.store.record_accepted(s.name, s.version)
        run.result = {"name": s.name, "version": s.version}
        if run.new is not None:
            self.slot.serve(run.new, origin="store")  # same model: "since" stays
        log.info("%s %s committed", s.name, s.version)
        return "committed"

    def _step_committed(self, run: _Run) -> Event:
        s = self.state
        assert s.name
        self.store.clean_staging(s.name)
        if run.old is not None:
            run.old.close()
            run.old = None
        return "done"

    def _step_roll_back(self, run: _Run) -> Event:
        s = self.state
        if s.action == "update":
            # Back to the model that served before: in memory first, then the links.
            if run.old is not None and self.slot.loaded and self.slot.detector is not run.old:
                self.slot.serve(run.old, origin=run.old_origin)
                self._serving_paths = run.old_paths
            self._apply_links(s.links_before, s.active_before)
            log.warning("%s %s rolled back: %s", s.name, s.version, s.error)
            return "undone"
        # model/rollback: load the target first (a failure changes nothing), then switch.
        assert s.name and s.version
        if not run.restart:
            paths = self._version_paths(s.name, s.version)
            run.new = self.slot.load(paths[0], card=paths[1])
            run.new_paths = paths
        self._apply_links(s.links_after, s.active_after)
        if run.new is not None:
            origin = "config" if self._imported_version(s.name) == s.version else "store"
            old = self.slot.serve(run.new, origin=origin)
            self._serving_paths = run.new_paths
            if old is not None:
                old.close()
        return "rolled_back"

    # --- the update's parts ---

    def _fetch_manifest(self, job: Job, name: str, version: str) -> Manifest:
        base = f"{name}/{version}/"
        try:
            data = self.client.fetch(base + "manifest.json")
        except MissingFileError as exc:
            raise ManifestError(self._not_published(name, version)) from exc
        manifest = load_manifest(
            data,
            self.client.fetch(base + "manifest.json.sig"),
            self.keys,
            agent_version=__version__,
        )
        if (manifest.name, manifest.version) != (name, version):
            raise ManifestError(
                f"manifest at {base} is for {manifest.name} {manifest.version}, "
                f"not {name} {version}"
            )
        highest = self.store.highest_accepted(name)
        if highest and is_newer(highest, version) and not job.allow_downgrade:
            raise ManifestError(
                f"{name} {version} is a downgrade: {highest} was accepted before "
                "(send allow_downgrade: true to force it)"
            )
        return manifest

    def _not_published(self, name: str, version: str) -> str:
        where = self.client.url_for(f"{name}/{version}/manifest.json")
        try:
            index = load_index(
                self.client.fetch("index.json"), self.client.fetch("index.json.sig"), self.keys
            )
        except EdgeAgentError as exc:
            return f"{name} {version} is not in the registry ({where}); its index: {exc}"
        entry = index.models.get(name)
        if entry is None:
            known = ", ".join(sorted(index.models)) or "none"
            return f"{name} {version} is not in the registry: no model {name!r} (models: {known})"
        versions = ", ".join(entry.versions) or "none"
        return f"{name} {version} is not in the registry; published versions: {versions}"

    def _check_labels(self, job: Job, manifest: Manifest) -> None:
        labels = manifest.model_card().labels
        missing = [label for label in self.watched_labels() if label not in labels]
        if missing and not job.replace:
            raise RegistryError(
                f"{manifest.name} {manifest.version} does not detect {', '.join(missing)} "
                f"(its labels: {', '.join(labels) or 'none'}), which detection.labels watches: "
                'send "replace": true to install it anyway'
            )

    def _download(self, manifest: Manifest) -> Path:
        staging = self.store.staging_dir(manifest.name, manifest.version)
        base = f"{manifest.name}/{manifest.version}/"
        art = manifest.artifact
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            self.beat()
            if now - last[0] >= 1.0 or done == total:
                last[0] = now
                self._on_change(self.state, {"progress": round(done / total, 3) if total else 1.0})

        self.client.download(
            base + art.file, staging / art.file, size=art.size, sha256=art.sha256, progress=progress
        )
        for canary in manifest.canaries:
            self.client.download(
                base + canary.image, staging / canary.image, size=canary.size, sha256=canary.sha256
            )
        return staging

    def _trial(self, manifest: Manifest) -> Detector:
        """Load the staged model in its own runtime and run it on recent real frames."""
        model, card = self._version_paths(manifest.name, manifest.version)
        try:
            detector = self.slot.load(model, card=card)
        except ModelError as exc:
            raise TrialError(f"trial: the model does not load or run: {exc}") from exc
        try:
            frames = list(self.recent_frames())[-self.config.trial_frames :]
            if not frames:
                raise TrialError("trial: no real frame to try the model on yet")
            new_ms, base_ms = self._trial_frames(detector, frames)
            if base_ms > 0 and new_ms > self.config.latency_budget * base_ms:
                raise TrialError(
                    f"trial: {new_ms:.1f} ms per frame, over {self.config.latency_budget}x the "
                    f"current model's {base_ms:.1f} ms on the same frames"
                )
            self._check_canaries(manifest, detector, model.parent)
        except BaseException:
            detector.close()
            raise
        log.info(
            "trial of %s %s passed: %d frames, %.1f ms per frame",
            manifest.name,
            manifest.version,
            len(frames),
            new_ms,
        )
        return detector

    def _trial_frames(self, detector: Detector, frames: list[np.ndarray]) -> tuple[float, float]:
        """Run the new model on ``frames``; returns its best ms per frame and the current
        model's on the same frames, timed the same way (a second instance of it, loaded with
        the same runtime options, interleaved, so both see the same load on the device)."""
        baseline = None
        if self._serving_paths is not None:
            try:
                baseline = self.slot.load(self._serving_paths[0], card=self._serving_paths[1])
            except EdgeAgentError as exc:
                log.warning("trial: cannot time the current model for comparison: %s", exc)
        new_ms: list[float] = []
        base_ms: list[float] = []
        try:
            for rnd in range(2):  # the first round warms caches; the second is timed
                for frame in frames:
                    t0 = time.perf_counter()
                    try:
                        tensor, transform = detector.preprocess(frame)
                        outputs = detector.infer(tensor)
                        if not all(np.isfinite(o).all() for o in outputs):
                            raise TrialError("trial: the model's outputs contain NaN or infinity")
                        detector.postprocess(outputs, transform)
                    except (DecodeError, ModelError) as exc:
                        raise TrialError(
                            f"trial: outputs do not fit family {detector.card.family}: {exc}"
                        ) from exc
                    except TrialError:
                        raise
                    except Exception as exc:
                        raise TrialError(f"trial: inference failed: {exc}") from exc
                    t1 = time.perf_counter()
                    if baseline is not None:
                        baseline.detect(frame)
                    t2 = time.perf_counter()
                    if rnd == 1:
                        new_ms.append((t1 - t0) * 1e3)
                        base_ms.append((t2 - t1) * 1e3)
        finally:
            if baseline is not None:
                baseline.close()
        # The best time of each: waits for the GIL (the pipeline runs meanwhile) only add to a
        # time, so the minimum is the fairest figure for small, fast models.
        return float(min(new_ms)), float(min(base_ms)) if baseline is not None else 0.0

    def _check_canaries(self, manifest: Manifest, detector: Detector, folder: Path) -> None:
        import cv2

        from agent.detection.types import box_iou

        for canary in manifest.canaries:
            image = cv2.imread(str(folder / canary.image))
            if image is None:
                raise TrialError(f"trial: canary {canary.image} is not an image")
            found = detector.detect(image)[0]
            for want in canary.expect:
                if not any(
                    d.label == want.label and box_iou(d.box, want.box) >= want.min_iou
                    for d in found
                ):
                    raise TrialError(
                        f"trial: canary {canary.image}: no {want.label} near {want.box}"
                    )
