"""ONNX Runtime backend (CPU by default; execution providers configurable)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import agent  # noqa: F401  (sets ORT_DISABLE_TELEMETRY before onnxruntime is imported)
from agent.errors import ModelLoadError, RuntimeUnavailableError
from agent.runtimes.base import TensorSpec, dequantize, quantize

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _static_shape(shape: Sequence[object]) -> tuple[int, ...]:
    # Symbolic dims ("batch", None) become 1: the agent always runs one frame at a time.
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


def open_session(
    model: str | bytes,
    threads: int = 0,
    providers: Sequence[str] | None = None,
    *,
    basic: bool = False,
    profile_prefix: str | None = None,
) -> Any:
    """An onnxruntime session as the agent makes them: ``threads`` intra-op threads (0: the
    runtime's default), all graph optimizations (``basic``: only those that keep node names, for
    the profiler), quiet logs. Errors of onnxruntime itself pass through for the caller to name."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        raise RuntimeUnavailableError("onnxruntime is not installed") from exc
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if basic
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.log_severity_level = 3  # warnings about unused initializers are noise on a device
    # The memory pattern plans one block per input shape ahead of the first run and keeps it
    # beside the arena: ~45 MB more peak RSS for the person model, no measurable speed-up here.
    options.enable_mem_pattern = False
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    available = ort.get_available_providers()
    wanted = list(providers) if providers else ["CPUExecutionProvider"]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise RuntimeUnavailableError(
            f"onnxruntime execution provider(s) {missing} not available; have {available}"
        )
    return ort.InferenceSession(model, sess_options=options, providers=wanted)


class OnnxRuntime:
    """A model run by onnxruntime."""

    def __init__(self, path: str, threads: int = 0, providers: Sequence[str] | None = None) -> None:
        try:
            self._session = open_session(path, threads, providers)
        except RuntimeUnavailableError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {exc}") from exc
        self.path = path
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.inputs = [
            TensorSpec(i.name, _static_shape(i.shape), np.dtype(_ORT_TYPES.get(i.type, np.float32)))
            for i in self._session.get_inputs()
        ]
        self.outputs = [
            TensorSpec(o.name, _static_shape(o.shape), np.dtype(_ORT_TYPES.get(o.type, np.float32)))
            for o in self._session.get_outputs()
        ]
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)

    def infer(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = {spec.name: quantize(a, spec) for spec, a in zip(self.inputs, arrays, strict=True)}
        results = self._session.run(None, feed)
        return [
            dequantize(np.asarray(r), spec) for r, spec in zip(results, self.outputs, strict=True)
        ]

    def close(self) -> None:
        del self._session
