"""The interface every inference backend offers: tensor specs in, arrays out.

A runtime knows tensors, not boxes: decoding belongs to ``agent.detection``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the runtime reports it.

    ``scale``/``zero_point`` are the affine quantization parameters of an integer tensor
    (``real = scale * (q - zero_point)``); ``scale == 0`` means the tensor is not quantized.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)


class Runtime(Protocol):
    """A loaded model that runs on one device.

    ``infer`` takes float32 arrays shaped like ``inputs`` (the runtime quantizes or casts them to
    the model's input type) and returns float32 arrays, dequantized where the model is quantized.
    """

    path: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def infer(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


def quantize(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Bring a float array to the dtype the model input expects."""
    if spec.dtype == array.dtype:
        return array
    if spec.quantized:
        info = np.iinfo(spec.dtype)
        q = np.rint(array / spec.scale) + spec.zero_point
        return np.asarray(np.clip(q, info.min, info.max), dtype=spec.dtype)
    if np.issubdtype(spec.dtype, np.integer):
        # An unquantized integer input (e.g. raw uint8 pixels): values are already in range.
        info = np.iinfo(spec.dtype)
        return np.asarray(np.clip(np.rint(array), info.min, info.max), dtype=spec.dtype)
    return array.astype(spec.dtype)


def dequantize(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Bring a model output to float32."""
    if spec.quantized:
        return (array.astype(np.float32) - spec.zero_point) * np.float32(spec.scale)
    if array.dtype == np.float32:
        return array
    return array.astype(np.float32)
