"""Full-integer (static INT8) quantization of TFLite detectors with AI Edge Quantizer: int8
weights (per channel) and int8 activations calibrated on real frames through the card's own
preprocessing; integer input and outputs, so the graph runs on integer-only accelerators.
The anchors family's score logits get the fixed range +-16 (``clip_score_ranges``).

fp16 and sparse weights (MediaPipe's detectors) are first folded into an fp32 graph
(``agent.compress.tflite_graph``). The input's range is the card's exact pixel range, so the
runtime's quantization of a frame is within half a step. The ops whose INT8 output strays from
the float model's on the calibration frames, and which mend it in float, are kept in float
(``agent.compress.tflite_sensitive``). The quantizer itself is called in
``agent.compress.tflite_aeq``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.compress.derived import check_paths
from agent.compress.frames import Frame, sample_frames
from agent.compress.quantize import model_card
from agent.compress.tflite_aeq import (
    KeptOp,
    calibrate,
    quantize_graph,
    quantizer_available,
)
from agent.compress.tflite_graph import FloatModel, IntegerIO, float_model, integer_io
from agent.compress.tflite_sensitive import clip_score_ranges, find_sensitive, op_types
from agent.detection.card import ModelCard, Quantization
from agent.detection.detector import file_sha256
from agent.detection.preprocess import Preprocessor
from agent.errors import CompressError, EdgeAgentError

__all__ = [
    "KeptOp",
    "TFLiteQuantizeResult",
    "calibration_feeds",
    "input_range",
    "model_card",
    "quantize_tflite",
    "quantizer_available",
]


@dataclass
class TFLiteQuantizeResult:
    model: Path
    card: Path
    kept: list[KeptOp]
    io: IntegerIO
    folded: dict[str, int]  # constant ops folded into fp32 weights, by op name
    calib_frames: list[str]
    # SQNR (dB) of each output of the whole-graph INT8 model against the float one, on
    # calibration frames; empty when --keep-float named the ops
    output_sqnr: dict[str, float] = field(default_factory=dict)
    fused: int = 0  # standalone RELU/RELU6 ops fused into the op before them
    ranges: list[str] = field(default_factory=list)  # calibrated ranges set otherwise, in words
    checks: list[str] = field(default_factory=list)  # float candidates tried, kept or not


def input_range(card: ModelCard) -> tuple[float, float]:
    """The values the card's preprocessing can give: pixels 0 and 255 through
    ``(pixel * scale - mean) / std``, over the three channels."""
    spec = card.input
    mean, std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
    ends = np.concatenate([(0 * spec.scale - mean) / std, (255 * spec.scale - mean) / std])
    return float(ends.min()), float(ends.max())


def calibration_feeds(
    card: ModelCard, fm: FloatModel, frames: Sequence[Frame]
) -> list[dict[str, np.ndarray]]:
    pre = Preprocessor(card.input)
    return [{fm.input_names[0]: pre(f.image)[0]} for f in frames]


@contextmanager
def _translated(model: Path) -> Iterator[None]:
    """AI Edge Quantizer and the interpreter raise bare ValueError, RuntimeError...: one line
    naming the model instead."""
    try:
        yield
    except EdgeAgentError:
        raise
    except Exception as exc:
        raise CompressError(f"{model}: AI Edge Quantizer could not quantize it: {exc}") from exc


def quantize_tflite(
    model: str | Path,
    out: str | Path,
    *,
    calib: str | Path | None,
    calib_frames: int = 32,
    keep_float: Sequence[str] | None = None,
    card: Path | None = None,
    threads: int = 2,
) -> TFLiteQuantizeResult:
    """Quantize ``model`` to the full-integer ``out`` and write ``out``'s card beside it.

    ``keep_float``: None finds the ops to keep in float; a list names exactly those ops (their
    first output tensor's name; empty: quantize every op AI Edge Quantizer can)."""
    model, out = Path(model), Path(out)
    check_paths(model, out, ".tflite", "a TFLite model quantizes to a .tflite file", "quantized")
    if calib is None:
        raise CompressError("static INT8 quantization needs --calib VIDEO|DIR")
    why = quantizer_available()
    if why:
        raise CompressError(f"{model}: TFLite quantization needs AI Edge Quantizer: {why}")
    try:
        src_card = model_card(model, card)
    except EdgeAgentError as exc:
        raise CompressError(f"{model}: {exc}") from exc
    frames = sample_frames(calib, calib_frames)
    with _translated(model):
        fm = float_model(model)
        feeds = calibration_feeds(src_card, fm, frames)
        qsvs = calibrate(fm, feeds, input_range(src_card), threads)
        ranges = clip_score_ranges(src_card, fm, qsvs)
        output_sqnr: dict[str, float] = {}
        checks: list[str] = []
        if keep_float is None:
            found = find_sensitive(fm, qsvs, feeds, src_card, threads)
            kept, output_sqnr, checks = found.kept, found.output_sqnr, found.notes
        else:
            known = op_types(fm)
            unknown = [n for n in keep_float if n not in known]
            if unknown:
                raise CompressError(
                    f"{model}: no op with output {unknown[0]!r} (see the model's graph, e.g. "
                    "in Model Explorer)"
                )
            kept = [KeptOp(n, known[n], "named with --keep-float") for n in keep_float]
        data = quantize_graph(fm, qsvs, [k.name for k in kept])
        data, io_ = integer_io(data, fm.output_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        staged.write_bytes(data)
        shutil.move(staged, out)
    card_out = write_card(src_card, model, out, kept, io_, fm, frames, calib, ranges)
    return TFLiteQuantizeResult(
        out,
        card_out,
        kept,
        io_,
        fm.folded,
        [f.name for f in frames],
        output_sqnr,
        fm.fused,
        ranges,
        checks,
    )


def write_card(
    src: ModelCard,
    model: Path,
    out: Path,
    kept: Sequence[KeptOp],
    io_: IntegerIO,
    fm: FloatModel,
    frames: Sequence[Frame],
    calib: str | Path,
    ranges: Sequence[str] = (),
) -> Path:
    from agent.compress.derived import write_derived_card

    steps = [f"{k} {n} folded" for n, k in fm.folded.items()]
    folded = ", ".join(steps + ([f"{fm.fused} RELU fused"] if fm.fused else []))
    how = (
        f"Full-integer INT8 (AI Edge Quantizer static_wi8_ai8: per-channel int8 weights, int8 "
        f"activations, min/max on {len(frames)} frames of {Path(calib).name}; {io_.input_dtype} "
        f"input scale {io_.input_scale:.6g} zero point {io_.input_zero_point}"
        + (f"; fp32 graph first: {folded}" if folded else "")
        + "".join(f"; {r}" for r in ranges)
        + ")"
    )
    kept_note = f"; {len(kept)} op(s) kept in float" if kept else "; every op quantized"
    quantization = Quantization(
        method="INT8 full-integer TFLite (AI Edge Quantizer), per-channel int8 weights, int8 "
        "activations" + kept_note.replace(";", ","),
        calibration=f"min/max on {len(frames)} frames of {Path(calib).name}"
        + ("; score logits set to +-16" if ranges else ""),
        reference=f"{model.name} (sha256 {file_sha256(model)})",
        input_dtype=io_.input_dtype,
        input_scale=io_.input_scale,
        input_zero_point=io_.input_zero_point,
    )
    return write_derived_card(src, model, out, f"{how}{kept_note}", "quantize", quantization)
