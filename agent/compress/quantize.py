"""INT8 quantization of ONNX detectors with onnxruntime.quantization: static QDQ with per-channel
weights, calibrated on real frames through the model's own preprocessing, or dynamic; the nodes
that collapse under INT8 are found (``agent.compress.sensitive``) and kept in float."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from agent.compress.derived import check_paths, write_derived_card
from agent.compress.frames import Frame, sample_frames
from agent.compress.sensitive import KeptNode, find_sensitive
from agent.detection.card import ModelCard, Quantization, resolve_card
from agent.detection.detector import file_sha256
from agent.detection.preprocess import Preprocessor
from agent.errors import CompressError, EdgeAgentError

Mode = Literal["static", "dynamic"]
Calibration = Literal["percentile", "minmax", "entropy"]


@dataclass
class QuantizeResult:
    model: Path
    card: Path
    mode: Mode
    kept: list[KeptNode]
    calib_frames: list[str] = field(default_factory=list)  # names, to hold them out of evaluation


def model_card(model: Path, card: Path | None = None) -> ModelCard:
    """The card of ``model``: the one named, the one beside it, or one guessed from the file."""
    from agent.runtimes import load_runtime

    runtime = load_runtime(model)
    try:
        return resolve_card(model, runtime, card)
    finally:
        runtime.close()


def calibration_feeds(
    model: Path, card: ModelCard, frames: Sequence[Frame]
) -> list[dict[str, np.ndarray]]:
    """Frames as the model sees them: through its card's preprocessing, keyed by input name."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise CompressError(f"{model}: detectors take one image input, this model has {inputs}")
    pre = Preprocessor(card.input)
    return [{inputs[0]: pre(f.image)[0]} for f in frames]


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("consider pre-processing") through the root logger;
    keep it off the user's terminal, our own report says what matters."""

    def drop(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(drop)
    for handler in root.handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        for handler in root.handlers:
            handler.removeFilter(drop)


def quantize(
    model: str | Path,
    out: str | Path,
    *,
    calib: str | Path | None,
    calib_frames: int = 32,
    mode: Mode = "static",
    keep_float: Sequence[str] | None = None,
    card: Path | None = None,
    calibration: Calibration = "percentile",
) -> QuantizeResult:
    """Quantize ``model`` to ``out`` and write ``out``'s card beside it.

    ``keep_float``: None finds the sensitive nodes automatically; a list names exactly the nodes
    to keep in float (empty: quantize the whole graph). ``calibration``: how activation ranges
    are set from the calibration frames; percentile (99.999th) ignores rare outliers that MinMax
    stretches the 256 levels over (on the person model: fidelity 0.94 against 0.90).
    """
    model, out = Path(model), Path(out)
    if model.suffix.lower() == ".tflite":
        raise CompressError(
            f"{model}: a TFLite model is quantized by agent.compress.tflite_quantize (`model "
            "quantize MODEL.tflite -o OUT.tflite`), into a .tflite file"
        )
    if model.suffix.lower() != ".onnx":
        raise CompressError(f"{model}: expected an .onnx model")
    check_paths(model, out, ".onnx", "the output must be an .onnx file", "quantized")
    if mode not in ("static", "dynamic"):
        raise CompressError(f"mode must be static or dynamic, not {mode!r}")
    if calibration not in ("percentile", "minmax", "entropy"):
        raise CompressError(f"calibration must be percentile, minmax or entropy: {calibration!r}")
    try:
        src_card = model_card(model, card)
    except EdgeAgentError as exc:
        raise CompressError(f"{model}: {exc}") from exc

    frames: list[Frame] = []
    feeds: list[dict[str, np.ndarray]] = []
    if mode == "static" or keep_float is None:
        if calib is None:
            raise CompressError("static quantization and finding sensitive nodes need --calib")
        frames = sample_frames(calib, calib_frames)
        feeds = calibration_feeds(model, src_card, frames)
    known = _node_names(model)
    if keep_float is None:
        kept = find_sensitive(model, src_card.family, _spread_feeds(feeds, SENSITIVE_FRAMES))
    else:
        unknown = [n for n in keep_float if n not in known]
        if unknown:
            raise CompressError(f"{model}: no node named {unknown[0]!r} (see the model's graph)")
        kept = [KeptNode(n, known[n], "named with --keep-float") for n in keep_float]

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        _run_quantizer(model, staged, mode, [k.name for k in kept], feeds, calibration)
        shutil.move(staged, out)
    card_out = write_card(src_card, model, out, mode, kept, frames, calib, calibration)
    return QuantizeResult(out, card_out, mode, kept, [f.name for f in frames])


# Range mixing is judged on at most this many of the calibration frames, spread over them: it
# keeps every Concat activation of every frame it sees (32 frames of YOLOv8s: 5 GB), and the
# ranges it compares differ by orders of magnitude, which a few frames show as well as many.
SENSITIVE_FRAMES = 8
CALIB_CHUNK = 4  # calibration frames whose activations are held in memory at once


def _chunk(count: int) -> int:
    """The largest chunk of at most CALIB_CHUNK frames that divides ``count`` (onnxruntime's
    strided calibration wants equal chunks)."""
    return next(size for size in range(min(CALIB_CHUNK, max(count, 1)), 0, -1) if count % size == 0)


def _spread_feeds(
    feeds: Sequence[dict[str, np.ndarray]], count: int
) -> list[dict[str, np.ndarray]]:
    if len(feeds) <= count:
        return list(feeds)
    picks = np.linspace(0, len(feeds) - 1, count).round().astype(int)
    return [feeds[i] for i in picks]


def _node_names(model: Path) -> dict[str, str]:
    import onnx

    return {n.name: n.op_type for n in onnx.load(str(model)).graph.node}


def _run_quantizer(
    model: Path,
    out: Path,
    mode: Mode,
    exclude: list[str],
    feeds: list[dict[str, np.ndarray]],
    calibration: Calibration,
) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from agent.compress.sensitive import FeedReader

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    # The calibrators print progress to stdout, where --json output goes.
    with _quiet_quantizer(), contextlib.redirect_stdout(io.StringIO()):
        try:
            if mode == "static":
                quantize_static(
                    str(model),
                    str(out),
                    FeedReader(feeds),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    # u8 activations, s8 weights: the pairing onnxruntime's x86 and Arm
                    # kernels are fastest with.
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[calibration],
                    nodes_to_exclude=exclude,
                    # Calibrate CALIB_CHUNK frames at a time: the calibrators keep every
                    # activation of the frames they are given (YOLOv8s at 640: about 0.4 GB a
                    # frame), so 32 frames in one go took 14 GB; ranges and histograms merge
                    # across chunks.
                    extra_options={"CalibStridedMinMax": _chunk(len(feeds))},
                )
            else:
                quantize_dynamic(
                    str(model),
                    str(out),
                    per_channel=True,
                    weight_type=QuantType.QUInt8,
                    nodes_to_exclude=exclude,
                )
        except Exception as exc:  # the quantizer raises bare ValueError/RuntimeError/...
            raise CompressError(f"{model}: onnxruntime could not quantize it: {exc}") from exc


def write_card(
    src: ModelCard,
    model: Path,
    out: Path,
    mode: Mode,
    kept: Sequence[KeptNode],
    frames: Sequence[Frame],
    calib: str | Path | None,
    calibration: Calibration = "percentile",
) -> Path:
    """The float model's card for ``out``: same input, labels, family and thresholds; its own
    sha256, and notes saying how it was made."""
    how = (
        f"INT8 static QDQ (per-channel s8 weights, u8 activations, {calibration} calibration on "
        f"{len(frames)} frames of {Path(calib).name if calib else '?'})"
        if mode == "static"
        else "INT8 dynamic (weights quantized, activations at run time)"
    )
    kept_note = f"; {len(kept)} node(s) kept in float" if kept else "; whole graph quantized"
    quantization = Quantization(
        method=(
            "INT8 static QDQ, per-channel s8 weights, u8 activations"
            if mode == "static"
            else "INT8 dynamic, weights only"
        )
        + kept_note.replace(";", ","),
        calibration=(
            f"{calibration} on {len(frames)} frames of {Path(calib).name if calib else '?'}"
            if mode == "static"
            else None
        ),
        reference=f"{model.name} (sha256 {file_sha256(model)})",
    )
    return write_derived_card(src, model, out, f"{how}{kept_note}", "quantize", quantization)
