"""The model updater: an explicit state machine, persisted before every step, that fetches a
signed manifest, downloads and checks the artifact, stages it, tries it on real frames, swaps it in
between two frames, watches it during probation and commits it or rolls back.

    idle -> downloading -> verifying -> staged -> trial -> probation -> committed -> idle
              \\______________\\___________\\________\\________\\-> failed (old model serving)
                                                        probation -> rolling_back -> failed

The ``current``/``previous`` links of the store change only at commit (one atomic rename), so
whatever state a crash leaves, the model behind ``current`` passed every check. ``recover`` finishes
a commit that was under way and undoes anything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    ModelError,
    RegistryError,
)
from agent.registry.client import RegistryClient
from agent.registry.manifest import Manifest, dump_json, load_index, load_manifest
from agent.registry.names import check_name, is_newer
from agent.registry.signing import load_public_keys
from agent.registry.store import ModelStore
from agent.runtimes import load_runtime

if TYPE_CHECKING:
    from agent.pipeline import Pipeline

log = logging.getLogger("agent.updater")

STATES = (
    "idle",
    "downloading",
    "verifying",
    "staged",
    "trial",
    "probation",
    "committed",
    "rolling_back",
    "failed",
)


@dataclass
class Job:
    """One requested update: a version, or ``latest`` on a channel."""

    name: str
    version: str
    channel: str
    allow_downgrade: bool = False
    command_id: str | None = None


@dataclass
class UpdateState:
    """What is persisted in ``<store>/updater.json`` before each step."""

    state: str = "idle"
    name: str | None = None
    version: str | None = None
    from_version: str | None = None
    command_id: str | None = None
    started: float | None = None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class TrialError(RegistryError):
    """The staged model failed its trial."""


class Updater:
    """Runs updates on its own thread; the pipeline keeps serving the current model throughout."""

    def __init__(
        self,
        config: RegistryConfig,
        store_root: Path,
        *,
        threads: int = 1,
        on_change: Callable[[UpdateState, dict[str, Any]], None] | None = None,
        on_done: Callable[[Job, bool, dict[str, Any] | None, str | None], None] | None = None,
    ) -> None:
        self.config = config
        self.store = ModelStore(store_root)
        self.client = RegistryClient(config.url, timeout_s=config.timeout_s)
        self.keys = load_public_keys(config.trusted_keys)
        self.threads = threads
        self.state_path = store_root / "updater.json"
        self.state = self._load_state()
        self._on_change = on_change or (lambda s, extra: None)
        self._on_done = on_done or (lambda job, ok, result, error: None)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pipeline: Pipeline | None = None
        self.recent_frames: Callable[[], Sequence[np.ndarray]] = list

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

    def _persist(self, state: str, **changes: Any) -> None:
        assert state in STATES
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.state = state
        self.state.history = self.state.history[-20:]
        write_atomic(self.state_path, json.dumps(asdict(self.state)).encode())
        self._on_change(self.state, {})

    # --- start-up ---

    def recover(self) -> None:
        """Finish or undo what an interrupted update left (before the model is loaded)."""
        s = self.state
        if s.state in ("idle", "committed", "failed"):
            if s.state == "committed":
                self._persist("idle")
            self.store.clean_staging(None)
            return
        name, version = s.name, s.version
        current = self.store.current(name) if name else None
        if s.state == "probation" and name and version and current == version:
            # Killed between the link switch and the end of the commit: finish it.
            self.store.record_accepted(name, version)
            log.warning("update of %s to %s was interrupted during commit: finished", name, version)
            self._finish(ok=True, note="commit finished after restart")
            return
        log.warning(
            "update of %s to %s was interrupted in state %s: undone, serving %s",
            name,
            version,
            s.state,
            current or "the configured model",
        )
        if name and version and version not in (current, self.store.previous(name)):
            with contextlib.suppress(RegistryError):
                self.store.remove(name, version)
        if s.state != "downloading":  # a partial download is kept: the next try resumes it
            self.store.clean_staging(name)
        self._finish(ok=False, error=f"interrupted in state {s.state} (restart)")

    def serving(self) -> tuple[Path, Path, str] | None:
        """(model file, card, version) behind the store's ``current`` link, if any."""
        name = self.config.model
        version = self.store.current(name)
        if version is None:
            return None
        folder = self.store.version_dir(name, version)
        return self.store.model_file(name, version), folder / "card.yaml", version

    # --- requests ---

    def request(self, job: Job) -> None:
        check_name("model name", job.name)
        if job.version != "latest":
            check_name("version", job.version)
        if self._busy.locked() or not self._jobs.empty():
            raise RegistryError(
                f"an update is already running ({self.state.state} {self.state.version})"
            )
        self._jobs.put(job)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="updater", daemon=True)
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
            timeout = max(0.1, next_poll - time.monotonic()) if next_poll else None
            try:
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                job = Job(self.config.model, "latest", self.config.channel)
            if job is None:
                return
            if next_poll:
                next_poll = time.monotonic() + interval
            with self._busy:
                self._run(job)

    # --- one update ---

    def _run(self, job: Job) -> None:
        staged_detector: Detector | None = None
        try:
            version = job.version
            if version == "latest":
                index = load_index(
                    self.client.fetch("index.json"), self.client.fetch("index.json.sig"), self.keys
                )
                version = index.resolve(job.name, job.channel)
            current = self.store.current(job.name)
            if version == current:
                if job.command_id is None:
                    return  # a poll that finds nothing new stays quiet
                raise RegistryError(f"{job.name} {version} is already the current model")
            self._persist(
                "downloading",
                name=job.name,
                version=version,
                from_version=current,
                command_id=job.command_id,
                started=time.time(),
                error=None,
            )
            manifest = self._fetch_manifest(job, version)
            staging = self._download(manifest)
            self._persist("verifying")
            self._verify_staged(manifest, staging)
            self._persist("staged")
            self.store.install(manifest.name, manifest.version)
            self._persist("trial")
            staged_detector = self._trial(manifest)
            self._probation(manifest, staged_detector)
            staged_detector = None  # owned by the pipeline now
            self._commit(manifest)
            self._finish(
                ok=True, job=job, result={"name": manifest.name, "version": manifest.version}
            )
        except EdgeAgentError as exc:
            self._fail(job, str(exc), staged_detector)
        except Exception as exc:  # a bug must not leave a half-done update behind
            log.exception("update failed unexpectedly")
            self._fail(job, f"internal error: {exc}", staged_detector)

    def _fetch_manifest(self, job: Job, version: str) -> Manifest:
        base = f"{job.name}/{version}/"
        manifest = load_manifest(
            self.client.fetch(base + "manifest.json"),
            self.client.fetch(base + "manifest.json.sig"),
            self.keys,
            agent_version=__version__,
        )
        if (manifest.name, manifest.version) != (job.name, version):
            raise ManifestError(
                f"manifest at {base} is for {manifest.name} {manifest.version}, "
                f"not {job.name} {version}"
            )
        highest = self.store.highest_accepted(job.name)
        if highest and is_newer(highest, version) and not job.allow_downgrade:
            raise ManifestError(
                f"{job.name} {version} is a downgrade: {highest} was accepted before "
                "(send allow_downgrade: true to force it)"
            )
        return manifest

    def _download(self, manifest: Manifest) -> Path:
        staging = self.store.staging_dir(manifest.name, manifest.version)
        base = f"{manifest.name}/{manifest.version}/"
        art = manifest.artifact
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
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

    def _verify_staged(self, manifest: Manifest, staging: Path) -> None:
        artifact = staging / manifest.artifact.file
        if file_sha256(artifact) != manifest.artifact.sha256:
            raise ChecksumError(f"{artifact}: changed after download")
        if artifact.suffix.lower() not in (".onnx", ".tflite"):
            raise ManifestError(f"artifact {manifest.artifact.file}: not an .onnx or .tflite file")
        card = manifest.model_card()
        (staging / "card.yaml").write_text(yaml.safe_dump(card.model_dump(exclude_none=True)))
        (staging / "manifest.json").write_bytes(dump_json(manifest))

    def _trial(self, manifest: Manifest) -> Detector:
        """Load the staged model in its own runtime and run it on recent real frames."""
        folder = self.store.version_dir(manifest.name, manifest.version)
        model = folder / manifest.artifact.file
        try:
            detector = Detector.load(model, card=folder / "card.yaml", threads=self.threads)
        except ModelError as exc:
            raise TrialError(f"trial: the model does not load or run: {exc}") from exc
        frames = list(self.recent_frames())[-self.config.trial_frames :]
        if not frames:
            detector.close()
            raise TrialError("trial: no real frame to try the model on yet")
        try:
            new_ms, base_ms = self._trial_frames(detector, frames)
        except BaseException:
            detector.close()
            raise
        if base_ms > 0 and new_ms > self.config.latency_budget * base_ms:
            detector.close()
            raise TrialError(
                f"trial: {new_ms:.1f} ms per frame, over {self.config.latency_budget}x the current "
                f"model's {base_ms:.1f} ms on the same frames"
            )
        self._check_canaries(manifest, detector, folder)
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
        model's on the same frames, timed the same way (a second instance of it, interleaved,
        so both see the same load on the device)."""
        baseline = None
        current = self.pipeline.detector if self.pipeline else None
        if current is not None:
            try:
                baseline = Detector(
                    load_runtime(current.runtime.path, threads=self.threads), current.card
                )
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
        return float(min(new_ms)), float(min(base_ms)) if base_ms else 0.0

    def _check_canaries(self, manifest: Manifest, detector: Detector, folder: Path) -> None:
        import cv2

        from agent.detection.types import box_iou

        for canary in manifest.canaries:
            image = cv2.imread(str(folder / canary.image))
            if image is None:
                detector.close()
                raise TrialError(f"trial: canary {canary.image} is not an image")
            found = detector.detect(image)[0]
            for want in canary.expect:
                if not any(
                    d.label == want.label and box_iou(d.box, want.box) >= want.min_iou
                    for d in found
                ):
                    detector.close()
                    raise TrialError(
                        f"trial: canary {canary.image}: no {want.label} near {want.box}"
                    )

    def _probation(self, manifest: Manifest, detector: Detector) -> None:
        pipeline = self.pipeline
        if pipeline is None:
            raise RegistryError("no pipeline to swap the model into")
        before = pipeline.stats.snapshot()
        old = pipeline.swap(detector)
        self._persist("probation")
        log.info(
            "%s %s swapped in; probation for %.0f s",
            manifest.name,
            manifest.version,
            self.config.probation_s,
        )
        frames0, errors0 = pipeline.stats.frames, pipeline.stats.errors
        deadline = time.monotonic() + self.config.probation_s
        problem = None
        while time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.2)
            frames, errors = pipeline.stats.frames - frames0, pipeline.stats.errors - errors0
            attempts = frames + errors
            if attempts >= 3 and errors / attempts > self.config.probation_max_error_rate:
                problem = f"{errors} of {attempts} frames failed in probation"
                break
        if problem is None and before["latency_ms_p50"] > 0:
            now = pipeline.stats.snapshot()["latency_ms_p50"]
            if now > self.config.latency_budget * before["latency_ms_p50"]:
                budget, base = self.config.latency_budget, before["latency_ms_p50"]
                problem = f"{now:.1f} ms per frame in probation, over {budget}x {base:.1f} ms"
        if problem is not None:
            self._persist("rolling_back", error=problem)
            pipeline.swap(old)
            log.error("rolled back %s %s: %s", manifest.name, manifest.version, problem)
            raise RegistryError(f"rolled back: {problem}")

    def _commit(self, manifest: Manifest) -> None:
        self.store.set_current(manifest.name, manifest.version)  # the one atomic switch
        self.store.record_accepted(manifest.name, manifest.version)
        self._persist("committed")
        log.info("%s %s committed", manifest.name, manifest.version)

    def _finish(
        self,
        ok: bool,
        job: Job | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        note: str | None = None,
    ) -> None:
        entry = {
            "name": self.state.name,
            "version": self.state.version,
            "ok": ok,
            "error": error,
            "ts": round(time.time(), 3),
            **({"note": note} if note else {}),
        }
        self.state.history.append(entry)
        self._persist("idle" if ok else "failed", error=error)
        if job is not None:
            self._on_done(job, ok, result, error)

    def _fail(self, job: Job, error: str, detector: Detector | None) -> None:
        log.error(
            "update of %s to %s refused: %s", job.name, self.state.version or job.version, error
        )
        if detector is not None and (
            self.pipeline is None or self.pipeline.detector is not detector
        ):
            detector.close()
        if self.state.state in ("idle", "failed"):
            # Refused before anything started (busy, already current, bad index): no state to undo.
            self._on_done(job, False, None, error)
            return
        name, version = self.state.name, self.state.version
        if (
            name
            and version
            and version not in (self.store.current(name), self.store.previous(name))
        ):
            with contextlib.suppress(RegistryError):
                self.store.remove(name, version)
        if "truncated" not in error:  # a cut download keeps its .part: the next try resumes it
            self.store.clean_staging(name)
        self._finish(ok=False, job=job, error=error)
