"""The model in service: one owner, one load path.

``RuntimeSpec`` is the runtime options of the config's ``model:`` section (runtime, threads,
providers, delegate); every load of a model (at start, trial, the trial's baseline, probation,
rollback, the split head) goes through ``RuntimeSpec.load`` so an updated model runs on the same
accelerator as the configured one.

``ModelSlot`` holds the detector that serves. It is swapped only between two frames (the pipeline
asks ``slot.detector`` once per frame), closes the detector it replaces once no frame uses it, and
every reader of "the model in service" (status, Home Assistant discovery, ``B/model``, metrics,
systemd STATUS, the split head) asks it, so none can name a stale model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.detection import Detector
from agent.detection.detector import file_sha256

if TYPE_CHECKING:
    from agent.config import ModelConfig

log = logging.getLogger("agent.serving")


@dataclass(frozen=True)
class RuntimeSpec:
    """How to open a model: the same options for every load."""

    runtime: str = "auto"
    threads: int = 0
    providers: tuple[str, ...] = ()
    delegate: str | None = None

    @classmethod
    def from_config(cls, model: ModelConfig) -> RuntimeSpec:
        return cls(
            runtime=model.runtime,
            threads=model.threads,
            providers=tuple(model.providers),
            delegate=model.delegate,
        )

    def load(
        self, path: str | Path, *, card: str | Path | None = None, warmup: bool = True
    ) -> Detector:
        """Open ``path`` with these options (raises ModelError subclasses)."""
        return Detector.load(
            path,
            card=card,
            threads=self.threads,
            runtime=self.runtime,
            providers=list(self.providers) or None,
            delegate=self.delegate,
            warmup=warmup,
        )


@dataclass(frozen=True)
class ServingInfo:
    """What serves now: published on ``B/model`` and in the status."""

    name: str
    version: str
    sha256: str
    format: str
    family: str
    origin: str  # "config", "store", "store (probation)"
    path: str
    since: float = field(default_factory=lambda: round(time.time(), 3))

    def to_dict(self) -> dict[str, Any]:
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

    def __init__(self, spec: RuntimeSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._detector: Detector | None = None
        self._info: ServingInfo | None = None
        self._listeners: list[Listener] = []

    # --- readers ---

    @property
    def detector(self) -> Detector:
        """The detector to run the next frame with."""
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
        """``listener(info)`` after every change of the model in service (any thread)."""
        self._listeners.append(listener)

    # --- writers ---

    def load(self, path: str | Path, *, card: str | Path | None = None) -> Detector:
        """A detector for ``path`` with the slot's runtime options, warmed up, not yet serving."""
        return self.spec.load(path, card=card)

    def serve(self, detector: Detector, *, origin: str) -> Detector | None:
        """Put ``detector`` in service from the next frame on; returns the one it replaces (the
        caller closes it, or keeps it to swap back). The info's ``since`` changes only when the
        model file changes."""
        path = Path(detector.runtime.path)
        digest = file_sha256(path)
        with self._lock:
            old, self._detector = self._detector, detector
            previous = self._info
            since = (
                previous.since
                if previous is not None and previous.sha256 == digest
                else round(time.time(), 3)
            )
            self._info = ServingInfo(
                name=detector.card.name,
                version=detector.card.version,
                sha256=digest,
                format=path.suffix.lstrip("."),
                family=detector.card.family,
                origin=origin,
                path=str(path),
                since=since,
            )
            info = self._info
        for listener in list(self._listeners):
            try:
                listener(info)
            except Exception:
                log.exception("a listener of the model slot failed")
        return None if old is detector else old

    def close(self) -> None:
        with self._lock:
            detector, self._detector = self._detector, None
        if detector is not None:
            detector.close()
