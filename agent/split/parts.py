"""One ONNX model cut into head and tail sessions at any of its cut points, made on demand and
kept for the cuts in use (a re-plan moves between a few of them)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.detection.detector import file_sha256
from agent.errors import SplitError
from agent.runtimes.onnx import open_session

if TYPE_CHECKING:
    from agent.runtimes.openvino import OpenVinoRuntime
    from agent.serving import RuntimeSpec
    from agent.split.partition import Cut

log = logging.getLogger("agent.split")


class Part:
    """One side of a cut, run by onnxruntime (or, with an openvino ``spec``, OpenVINO, as the
    whole model runs): named tensors in, named tensors out."""

    def __init__(
        self,
        model_bytes: bytes,
        threads: int,
        providers: Sequence[str] | None,
        spec: RuntimeSpec | None = None,
    ) -> None:
        self._openvino: OpenVinoRuntime | None = None
        if spec is not None and spec.runtime == "openvino":
            from agent.runtimes.openvino import OpenVinoRuntime

            self._openvino = OpenVinoRuntime(
                model_bytes,
                threads,
                device=spec.device,
                precision=spec.precision,
                hint=spec.hint,
            )
            self.inputs = [i.name for i in self._openvino.inputs]
            self.outputs = [o.name for o in self._openvino.outputs]
            return
        self._session = open_session(model_bytes, threads, providers)
        self.inputs = [i.name for i in self._session.get_inputs()]
        self.outputs = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            missing = [n for n in self.inputs if n not in feeds]
            if missing:
                raise SplitError(f"missing cut tensor(s) {missing}")
            if self._openvino is not None:
                results = self._openvino.infer([feeds[n] for n in self.inputs])
            else:
                results = self._session.run(None, {n: feeds[n] for n in self.inputs})
        except SplitError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise SplitError(f"running a split part failed: {exc}") from exc
        return {n: np.asarray(r) for n, r in zip(self.outputs, results, strict=True)}


class SplitModel:
    """An ONNX model with its cut points; ``parts(cut)`` gives the head and tail for a cut."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 0,
        providers: Sequence[str] | None = None,
        keep: int = 4,
        spec: RuntimeSpec | None = None,
    ) -> None:
        try:
            import onnx
        except ImportError as exc:
            raise SplitError(
                "split inference needs the onnx package: pip install 'edge-detection-agent[split]'"
            ) from exc
        from agent.split.partition import partition

        self.path = Path(path)
        if self.path.suffix != ".onnx":
            raise SplitError(f"{self.path}: only ONNX models can be split")
        self.sha256 = file_sha256(self.path)
        try:
            proto = onnx.load(str(self.path))
        except Exception as exc:
            raise SplitError(f"{self.path}: onnx cannot read it: {exc}") from exc
        self.graph = partition(proto)
        self.cuts: dict[str, Cut] = {c.id: c for c in self.graph.cuts}
        self.input_names = list(self.graph.inputs)
        self.output_names = list(self.graph.outputs)
        self._threads = threads
        self._providers = providers
        self._keep = keep
        self._spec = spec  # an openvino spec: the parts run on OpenVINO too
        self._parts: OrderedDict[str, tuple[Part, Part]] = OrderedDict()
        self._lock = threading.Lock()

    def cut(self, cut_id: str) -> Cut:
        try:
            return self.cuts[cut_id]
        except KeyError:
            raise SplitError(
                f"{self.path.name} has no cut {cut_id!r} (see `edge-agent model plan-split`)"
            ) from None

    def parts(self, cut_id: str) -> tuple[Part, Part]:
        """Head and tail sessions for the inner cut ``cut_id``, made the first time it is asked
        for. The two ends need none: there the whole model runs on one side (the detector's own
        session)."""
        with self._lock:
            if cut_id in self._parts:
                self._parts.move_to_end(cut_id)
                return self._parts[cut_id]
        self.cut(cut_id)
        from agent.split.partition import split_model

        head, tail = split_model(self.graph, cut_id)  # refuses the ends with a SplitError
        pair = (
            Part(head.SerializeToString(), self._threads, self._providers, self._spec),
            Part(tail.SerializeToString(), self._threads, self._providers, self._spec),
        )
        log.info("split %s at %s: head and tail sessions ready", self.path.name, cut_id)
        with self._lock:
            self._parts[cut_id] = pair
            while len(self._parts) > self._keep:
                self._parts.popitem(last=False)
        return pair

    @property
    def loaded(self) -> int:
        """How many cuts have their sessions made."""
        return len(self._parts)

    def describe(self) -> dict[str, Any]:
        return {"model": self.path.name, "sha256": self.sha256, "cuts": len(self.cuts)}
