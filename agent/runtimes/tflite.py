"""TFLite backend: ai-edge-litert's interpreter, or tflite_runtime on slim devices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.errors import ModelLoadError, RuntimeUnavailableError
from agent.runtimes.base import TensorSpec, dequantize, quantize


def _interpreter_module() -> Any:
    try:
        from ai_edge_litert import interpreter

        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter

        return interpreter
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "no TFLite interpreter: install ai-edge-litert (or tflite-runtime)"
        ) from exc


def _spec(detail: dict[str, Any]) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail["name"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


class TFLiteRuntime:
    """A model run by the TFLite interpreter, optionally through a delegate (e.g. Edge TPU)."""

    def __init__(self, path: str, threads: int = 0, delegate: str | None = None) -> None:
        module = _interpreter_module()
        delegates = []
        if delegate:
            try:
                delegates.append(module.load_delegate(delegate))
            except (ValueError, OSError) as exc:
                raise ModelLoadError(
                    f"{path}: cannot load TFLite delegate {delegate}: {exc}"
                ) from exc
        try:
            self._interpreter = module.Interpreter(
                model_path=path,
                num_threads=threads if threads > 0 else None,
                experimental_delegates=delegates or None,
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{path}: the TFLite interpreter cannot load it: {exc}") from exc
        self.path = path
        in_details = self._interpreter.get_input_details()
        out_details = self._interpreter.get_output_details()
        self._in_index = [int(d["index"]) for d in in_details]
        self._out_index = [int(d["index"]) for d in out_details]
        self.inputs = [_spec(d) for d in in_details]
        self.outputs = [_spec(d) for d in out_details]

    def infer(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        for index, spec, array in zip(self._in_index, self.inputs, arrays, strict=True):
            self._interpreter.set_tensor(index, quantize(array, spec))
        self._interpreter.invoke()
        # get_tensor copies, so the results stay valid after the next invoke.
        return [
            dequantize(self._interpreter.get_tensor(index), spec)
            for index, spec in zip(self._out_index, self.outputs, strict=True)
        ]

    def close(self) -> None:
        del self._interpreter
