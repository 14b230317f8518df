"""The calls into Google's AI Edge Quantizer (the `tflite-quant` extra), imported only here and
only when called: calibration, static INT8 quantization with ops kept in float, and keeping its
progress bar, size report and log lines off the user's terminal."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.compress.tflite_graph import SIGNATURE, FloatModel


def quantizer_available() -> str | None:
    """None when AI Edge Quantizer can be imported, else why not (for the error and test skips)."""
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError as exc:
        return (
            f"ai-edge-quantizer is not installed ({exc}): "
            "pip install 'edge-detection-agent[tflite-quant]'"
        )
    return None


@dataclass(frozen=True)
class KeptOp:
    """An op left in float, and the reason."""

    name: str  # its first output tensor's name, as AI Edge Quantizer's recipes match ops
    op_type: str
    reason: str


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """AI Edge Quantizer prints a size report, a progress bar, absl warnings and INFO lines through
    the root logger; keep them off the user's terminal and off stdout, where --json goes."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)

    def drop(record: logging.LogRecord) -> bool:  # its INFO lines go through the root logger
        return "ai_edge_quantizer" not in record.pathname

    root = logging.getLogger()
    filtered = [root, *root.handlers]
    for f in filtered:
        f.addFilter(drop)
    try:
        # tqdm's calibration progress bar goes to stderr, which the user's terminal shows
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            # its calibrator keeps every tensor, which LiteRT warns is for debugging: it is
            warnings.filterwarnings("ignore", ".*preserve_all_tensors", UserWarning)
            yield
    finally:
        absl.setLevel(level)
        for f in filtered:
            f.removeFilter(drop)


def calibrate(fm: FloatModel, feeds: Sequence[dict[str, np.ndarray]], lo_hi: tuple[float, float],
              threads: int = 2) -> dict[str, Any]:
    """Min/max of every tensor on ``feeds``, the input's set to ``lo_hi``."""
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(bytearray(fm.data), recipe.static_wi8_ai8())
    with _quiet():
        qsvs: dict[str, Any] = q.calibrate({SIGNATURE: list(feeds)}, num_threads=threads)
    name = fm.input_names[0]
    shape = np.asarray(qsvs[name]["min"]).shape
    qsvs[name] = {"min": np.full(shape, lo_hi[0], np.float32),
                  "max": np.full(shape, lo_hi[1], np.float32)}
    return qsvs


def quantize_graph(fm: FloatModel, qsvs: dict[str, Any], keep: Sequence[str]) -> bytes:
    """The static INT8 graph of ``fm``, the ops named in ``keep`` left in float."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    q = quantizer.Quantizer(bytearray(fm.data), recipe.static_wi8_ai8())
    for name in keep:
        q.update_quantization_recipe(
            regex=f"^{re.escape(name)};",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE,
        )
    with _quiet():
        result = q.quantize(qsvs, enable_progress_report=False)
    return bytes(result.quantized_model)


