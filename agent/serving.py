"""The model in service: one owner, one load path.

``RuntimeSpec`` is the runtime options of the config's ``model:`` section (runtime, threads,
providers, delegate; OpenVINO's device, precision, hint and compiled-model cache); every load of a
model (at start, trial, the trial's baseline, probation, rollback, the split head's parts) uses
it, so an updated model runs on the same runtime and accelerator as the configured one.

``ModelSlot`` holds the detector that serves. A frame runs inside ``with slot.use() as detector``;
``serve`` puts another detector in service from the next frame on and hands back the one it
replaced only once no frame runs on it any more, so the caller may close it (or serve it again)
without pulling it from under a frame. Every reader of "the model in service" (status, Home
Assistant discovery, ``B/model``, metrics, systemd STATUS, the split head) asks the slot, and
``subscribe`` tells them when it changes, so none can name a stale model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.detection import Detector
from agent.detection.detector import file_sha256
from agent.runtimes import describe, load_runtime

if TYPE_CHECKING:
    from agent.config import ModelConfig
    from agent.runtimes.base import Runtime

log = logging.getLogger("agent.serving")


@dataclass(frozen=True)
class RuntimeSpec:
    """How to open a model: the same options for every load. ``device``, ``precision``,
    ``hint`` and ``cache_dir`` (the compiled-model cache) are OpenVINO's; the other runtimes
    ignore them."""

    runtime: str = "auto"
    threads: int = 0
    providers: tuple[str, ...] = ()
    delegate: str | None = None
    device: str = "CPU"
    precision: str = "f32"
    hint: str = "LATENCY"
    cache_dir: str | None = None

    @classmethod
    def from_config(cls, model: ModelConfig, store: str | Path | None = None) -> RuntimeSpec:
        """The ``model:`` section's options; with ``store`` (``store.path``) and
        ``model.cache``, OpenVINO keeps compiled models in ``<store>/cache/openvino``."""
        cache = None
        if model.runtime == "openvino" and model.cache and store is not None:
            cache = str(Path(store) / "cache" / "openvino")
        return cls(
            runtime=model.runtime,
            threads=model.threads,
            providers=tuple(model.providers),
            delegate=model.delegate,
            device=model.device,
            precision=model.precision,
            hint=model.performance_hint,
            cache_dir=cache,
        )

    @property
    def provider_list(self) -> list[str] | None:
        """The providers as onnxruntime takes them (None: its default, the CPU)."""
        return list(self.providers) or None

    def open(self, path: str | Path) -> Runtime:
        """A runtime for ``path`` with these options (raises ModelError subclasses)."""
        return load_runtime(
            path,
            threads=self.threads,
            runtime=self.runtime,
            providers=self.provider_list,
            delegate=self.delegate,
            device=self.device,
            precision=self.precision,
            hint=self.hint,
            cache_dir=self.cache_dir,
        )

    def load(
        self, path: str | Path, *, card: str | Path | None = None, warmup: bool = True
    ) -> Detector:
        """A detector for ``path`` with these options, warmed up (raises ModelError
        subclasses)."""
        return Detector.load(
            path,
            card=card,
            threads=self.threads,
            runtime=self.runtime,
            providers=self.provider_list,
            delegate=self.delegate,
            warmup=warmup,
            device=self.device,
            precision=self.precision,
            hint=self.hint,
            cache_dir=self.cache_dir,
        )


@dataclass(frozen=True)
class ServingInfo:
    """What serves now: published on ``B/model`` and read by the status."""

    name: str
    version: str
    labels: tuple[str, ...]
    sha256: str
    format: str
    family: str
    origin: str  # "config", "store", "store (probation)"
    path: str
    since: float = field(default_factory=lambda: round(time.time(), 3))

    def to_dict(self) -> dict[str, Any]:
        """The ``B/model`` fields of the model in service."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "format": self.format,
            "family": self.family,
            "from": self.origin,
            "since": self.since,
        }


Listener = Callable[[ServingInfo], None]


class ModelSlot:
    """The one owner of the serving detector."""

    def __init__(self, spec: RuntimeSpec, *, drain_s: float = 30.0) -> None:
        self.spec = spec
        self.drain_s = drain_s
        self._cond = threading.Condition()
        self._detector: Detector | None = None
        self._info: ServingInfo | None = None
        self._in_use: dict[Detector, int] = {}  # detector -> frames running on it now
        self._listeners: list[Listener] = []

    @classmethod
    def holding(cls, detector: Detector, *, origin: str = "config") -> ModelSlot:
        """A slot serving an already loaded ``detector`` (bench, tools): further loads get the
        default runtime options."""
        slot = cls(RuntimeSpec())
        slot.serve(detector, origin=origin)
        return slot

    # --- readers ---

    @property
    def detector(self) -> Detector:
        """The detector the next frame runs with."""
        detector = self._detector
        if detector is None:
            raise RuntimeError("no model is loaded in the slot")
        return detector

    @property
    def loaded(self) -> bool:
        return self._detector is not None

    @property
    def info(self) -> ServingInfo:
        info = self._info
        if info is None:
            raise RuntimeError("no model is loaded in the slot")
        return info

    def subscribe(self, listener: Listener) -> None:
        """``listener(info)`` after every ``serve``, on the thread that called it; a listener
        that raises is logged and the others still run."""
        self._listeners.append(listener)

    @contextmanager
    def use(self) -> Iterator[Detector]:
        """The detector for one frame; it is not handed back by ``serve`` (to be closed) before
        the frame ends."""
        with self._cond:
            detector = self.detector
            self._in_use[detector] = self._in_use.get(detector, 0) + 1
        try:
            yield detector
        finally:
            with self._cond:
                left = self._in_use[detector] - 1
                if left:
                    self._in_use[detector] = left
                else:
                    del self._in_use[detector]
                    self._cond.notify_all()

    # --- writers ---

    def load(self, path: str | Path, *, card: str | Path | None = None) -> Detector:
        """A detector for ``path`` with the slot's runtime options, warmed up, not yet serving."""
        return self.spec.load(path, card=card)

    def load_twin(self) -> Detector:
        """A second instance of the model in service (its own runtime, the same card and
        options), e.g. to time it beside a new model on the same frames."""
        detector = self.detector
        return Detector(self.spec.open(detector.runtime.path), detector.card)

    def serve(self, detector: Detector, *, origin: str) -> Detector | None:
        """Put ``detector`` in service from the next frame on. Returns the detector it replaces
        (None if none, or the same one) once no frame runs on it any more (waiting at most
        ``drain_s`` for the frame in flight): the caller closes it, or keeps it to serve again.
        The info's ``since`` changes only when the model file changes."""
        path = Path(detector.runtime.path)
        digest = file_sha256(path)
        with self._cond:
            old, self._detector = self._detector, detector
            previous = self._info
            since = (
                previous.since
                if previous is not None and previous.sha256 == digest
                else round(time.time(), 3)
            )
            info = self._info = ServingInfo(
                name=detector.card.name,
                version=detector.card.version,
                labels=tuple(detector.card.labels),
                sha256=digest,
                format=path.suffix.lstrip("."),
                family=detector.card.family,
                origin=origin,
                path=str(path),
                since=since,
            )
            if old is detector:
                old = None
            if old is not None and not self._cond.wait_for(
                lambda: old not in self._in_use, self.drain_s
            ):
                log.error(
                    "a frame still runs on the replaced model %s after %.0f s",
                    old.runtime.path,
                    self.drain_s,
                )
        log.info(
            "serving %s %s (%s) from %s [%s] on %s",
            info.name,
            info.version,
            info.family,
            info.path,
            origin,
            describe(detector.runtime),
        )
        for listener in list(self._listeners):
            try:
                listener(info)
            except Exception:
                log.exception("a listener of the model slot failed")
        return old

    def close(self) -> None:
        """Close the detector in service (at stop), once its frame in flight has ended."""
        with self._cond:
            detector, self._detector = self._detector, None
            if detector is not None:
                self._cond.wait_for(lambda: detector not in self._in_use, self.drain_s)
        if detector is not None:
            detector.close()

