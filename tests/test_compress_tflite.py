"""Full-integer TFLite quantization (AI Edge Quantizer): a generated fp16-weight model keeps its
outputs within tolerance with int8 weights, activations and input; the real BlazeFace model,
quantized here, finds the astronaut's face and carphone's where the float model does (the int8
input path on a real model); the card records the input's quantization and the detector holds
the model to it; the quantized model publishes, verifies and loads through the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent.compress.frames import sample_frames
from agent.compress.tflite_quantize import (
    TFLiteQuantizeResult,
    calibration_feeds,
    model_card,
    quantize_tflite,
    quantizer_available,
)
from agent.detection import Detector
from agent.detection.card import load_card
from agent.detection.detector import file_sha256
from agent.errors import CompressError, ModelCardError
from agent.runtimes.tflite import TFLiteRuntime
from tests import compress_models
from tests.conftest import MEDIA, MODELS, ROOT, iou

needs_quantizer = pytest.mark.skipif(
    quantizer_available() is not None, reason=str(quantizer_available())
)

# Tolerances on the generated model, held-out frames: box regressors spread over about 3 units,
# score logits around -2. Measured: max errors 0.088 and 0.072, mean errors 0.6 and 0.45 of one
# output quantization step; stated with room for other CPUs' rounding.
BOX_TOLERANCE = 0.15  # max abs error, 5% of the boxes' spread
SCORE_TOLERANCE = 0.12  # max abs error of a logit (0.03 on the sigmoid score at worst)
MEAN_STEPS = 1.0  # mean abs error, in output quantization steps
CARPHONE = MEDIA / "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("tiny-tflite")
    model = compress_models.tiny_anchors_tflite(d)
    images = compress_models.image_folder(d / "images", count=10)
    result = quantize_tflite(model, d / "tiny-int8.tflite", calib=images, calib_frames=6)
    return {"float": model, "images": images, "int8": result}


def _ops(path: Path) -> list[str]:
    from agent.compress.tflite_graph import op_name, read_model

    model = read_model(path)
    return [op_name(model, op) for op in model.subgraphs[0].operators]


def _float_tensors(path: Path) -> list[str]:
    from ai_edge_litert import schema_py_generated as s

    from agent.compress.tflite_graph import read_model, tensor_name

    graph = read_model(path).subgraphs[0]
    return [tensor_name(t) for t in graph.tensors if t.type == s.TensorType.FLOAT32]


@needs_quantizer
def test_generated_fp16_model_quantized_keeps_outputs_within_tolerance(
    tiny: dict[str, Any],
) -> None:
    result: TFLiteQuantizeResult = tiny["int8"]
    assert result.folded == {"DEQUANTIZE": 4}  # its fp16 weights, made fp32 first
    assert result.kept == [] and set(result.output_sqnr) == {"regressors", "classificators"}
    # full integer: no float op left, int8 input
    ops = _ops(result.model)
    assert "DEQUANTIZE" not in ops and ops.count("CONV_2D") == 4 and _float_tensors(result.model) == []
    runtime = TFLiteRuntime(str(result.model))
    assert runtime.inputs[0].dtype == np.int8 and runtime.inputs[0].quantized
    assert all(o.dtype == np.int8 for o in runtime.outputs)
    reference = TFLiteRuntime(str(tiny["float"]))
    card = model_card(tiny["float"], None)
    from agent.compress.tflite_graph import float_model

    held = [f for f in sample_frames(tiny["images"], 10) if f.name not in result.calib_frames]
    assert len(held) == 4
    for feed in calibration_feeds(card, float_model(tiny["float"]), held):
        want = reference.infer([feed["input"]])
        got = runtime.infer([feed["input"]])
        assert np.abs(got[0] - want[0]).max() < BOX_TOLERANCE
        assert np.abs(got[1] - want[1]).max() < SCORE_TOLERANCE
        for k in (0, 1):
            assert np.abs(got[k] - want[k]).mean() < MEAN_STEPS * runtime.outputs[k].scale
        assert np.ptp(want[0]) > 1.0  # the outputs carry signal, not constants


@needs_quantizer
def test_keep_float_names_ops_and_unknown_names_are_refused(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    result = quantize_tflite(
        tiny["float"], tmp_path / "k.tflite", calib=tiny["images"], calib_frames=4,
        keep_float=["regressor", "regressors"],
    )  # fmt: skip
    assert [k.name for k in result.kept] == ["regressor", "regressors"]
    assert result.io.integer_outputs == ["classificators"]  # the box output stays float
    runtime = TFLiteRuntime(str(result.model))
    assert {o.name: str(o.dtype) for o in runtime.outputs}["regressors"] == "float32"
    with pytest.raises(CompressError, match="no op with output 'nope'"):
        quantize_tflite(tiny["float"], tmp_path / "x.tflite", calib=tiny["images"],
                        keep_float=["nope"])  # fmt: skip
    with pytest.raises(CompressError, match=r"\.tflite file"):
        quantize_tflite(tiny["float"], tmp_path / "x.onnx", calib=tiny["images"])
    with pytest.raises(CompressError, match="--calib"):
        quantize_tflite(tiny["float"], tmp_path / "x.tflite", calib=None)


@pytest.fixture(scope="module")
def two_scales(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("two-scales")
    model = compress_models.tiny_anchors_tflite(d, "two", two_scales=True)
    images = compress_models.image_folder(d / "images", count=10)
    return {
        "float": model,
        "images": images,
        "auto": quantize_tflite(model, d / "auto.tflite", calib=images, calib_frames=6),
        "whole": quantize_tflite(
            model, d / "whole.tflite", calib=images, calib_frames=6, keep_float=[]
        ),
    }


# Box regressors of the anchors that score (the pooled scale's), held-out frames: measured max
# errors 0.12 with the regressor head in float, 2.6 to 5.0 with every op INT8.
HEAD_KEPT_BOX_TOLERANCE = 0.3


@needs_quantizer
def test_a_head_is_kept_in_float_where_that_mends_its_output(two_scales: dict[str, Any]) -> None:
    auto: TFLiteQuantizeResult = two_scales["auto"]
    kept = {k.name: k.reason for k in auto.kept}
    assert set(kept) == {"regressor_0", "regressor_0_flat", "regressor_1", "regressor_1_flat",
                         "regressors"}  # fmt: skip
    assert all(r.startswith("head of regressors: box regressors off by") for r in kept.values())
    (tried,) = auto.checks
    assert tried.startswith("regressors: 5 op(s) in float") and tried.endswith(", kept")
    assert auto.io.integer_outputs == ["classificators"]  # the box output is left float
    whole: TFLiteQuantizeResult = two_scales["whole"]
    reference = TFLiteRuntime(str(two_scales["float"]))
    runtimes = {k: TFLiteRuntime(str(two_scales[k].model)) for k in ("auto", "whole")}
    held = [f for f in sample_frames(two_scales["images"], 10) if f.name not in auto.calib_frames]
    from agent.compress.tflite_graph import float_model

    card = model_card(two_scales["float"], None)
    n = compress_models.ANCHORS_N  # the first scale's anchors come first; they score ~0
    for feed in calibration_feeds(card, float_model(two_scales["float"]), held):
        want = reference.infer([feed["input"]])[0][:, n:]
        errors = {k: np.abs(r.infer([feed["input"]])[0][:, n:] - want).max()
                  for k, r in runtimes.items()}  # fmt: skip
        assert errors["auto"] < HEAD_KEPT_BOX_TOLERANCE < 1.0 < errors["whole"], errors
    assert whole.kept == []


# --------------------------------------------------------------------- the real face model


@pytest.fixture(scope="module")
def face(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """BlazeFace short range quantized once, through the command, calibrated on carphone."""
    out = tmp_path_factory.mktemp("face") / "face-int8.tflite"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "model", "quantize", str(MODELS / "face-short-range.tflite"),
         "-o", str(out), "--calib", str(CARPHONE), "--calib-frames", "16", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return {"model": out, "report": report}


@needs_quantizer
def test_face_model_is_full_integer_with_its_score_range_set(face: dict[str, Any]) -> None:
    report = face["report"]
    assert report["folded"] == {"DEQUANTIZE": 74} and report["fused_activations"] == 17
    # The score logits were calibrated about -335..3 (a step of 1.3 logits); set to +-16.
    (ranges,) = report["ranges"]
    assert ranges.startswith("score logits (classificators and 4 tensor(s) behind it)")
    assert "set to +-16" in ranges
    scores = {o.name: o for o in TFLiteRuntime(str(face["model"])).outputs}["classificators"]
    assert scores.scale == pytest.approx(32 / 255) and scores.dtype == np.int8
    # Its score head in float was tried, and not kept: the error left comes from the backbone.
    (tried,) = [c for c in report["checks"] if c.startswith("classificators:")]
    assert "head of classificators" in tried
    assert tried.endswith("not kept (the error comes from before them)")
    assert report["kept_float"] == []
    assert report["integer_outputs"] == ["regressors", "classificators"]
    assert _float_tensors(face["model"]) == []  # full integer: what an Edge TPU compiler takes


@needs_quantizer
def test_quantized_face_model_finds_the_astronauts_face_and_carphones(
    face: dict[str, Any],
) -> None:
    fp = Detector.load(MODELS / "face-short-range.tflite", threads=2)
    q = Detector.load(face["model"], threads=2)
    assert q.runtime.inputs[0].dtype == np.int8  # frames go in quantized by the runtime
    # the photo, never calibrated on, and every carphone frame the 16 calibration ones left
    frames = sample_frames(MEDIA / "astronaut.png", 1)
    frames += sample_frames(CARPHONE, 1000, exclude=set(face["report"]["calib_names"]))
    assert len(frames) == 1 + 120 - 16
    for frame in frames:
        want, _ = fp.detect(frame.image)
        got, _ = q.detect(frame.image)
        assert len(want) == 1, frame.name  # one face in each
        assert len(got) == 1 and got[0].label == "face", f"frame {frame.name}: {got}"
        assert iou(want[0].box, got[0].box) >= 0.8, frame.name
        assert abs(got[0].score - want[0].score) < 0.1


@needs_quantizer
def test_card_records_the_input_quantization_and_the_detector_holds_to_it(
    face: dict[str, Any], tmp_path: Path
) -> None:
    card_path = face["model"].with_name("face-int8.card.yaml")
    card = load_card(card_path)
    assert card.format == "tflite" and card.sha256 == file_sha256(face["model"])
    q = card.quantization
    assert q is not None and q.input_dtype == "int8"
    spec = TFLiteRuntime(str(face["model"])).inputs[0]
    assert (q.input_scale, q.input_zero_point) == (pytest.approx(spec.scale), spec.zero_point)
    report = face["report"]["input"]
    assert (report["dtype"], report["zero_point"]) == ("int8", spec.zero_point)
    assert q.reference is not None and file_sha256(MODELS / "face-short-range.tflite") in q.reference
    # a card made for other input parameters is refused, naming both
    data = yaml.safe_load(card_path.read_text())
    data["quantization"]["input_zero_point"] = spec.zero_point + 5
    wrong = tmp_path / "wrong.card.yaml"
    wrong.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelCardError, match="zero point"):
        Detector.load(face["model"], card=wrong)


@needs_quantizer
def test_quantized_model_publishes_verifies_and_loads_through_the_registry(
    face: dict[str, Any], tmp_path: Path
) -> None:
    from agent.registry.manifest import load_manifest
    from agent.registry.signing import load_public_keys

    public = compress_models.publish_signed(face["model"], tmp_path, "face-int8")
    folder = tmp_path / "registry" / "face-int8" / "1.0.0"
    manifest = load_manifest(
        (folder / "manifest.json").read_bytes(),
        (folder / "manifest.json.sig").read_bytes(),
        load_public_keys([public]),
    )
    card = manifest.model_card()
    assert card.quantization is not None and card.quantization.input_dtype == "int8"
    artifact = folder / "face-int8.tflite"
    card_file = tmp_path / "manifest.card.yaml"
    card_file.write_text(yaml.safe_dump(card.model_dump(mode="json", exclude_none=True)))
    detector = Detector.load(artifact, card=card_file, threads=2)
    import cv2

    faces, _ = detector.detect(cv2.imread(str(MEDIA / "astronaut.png")))
    assert [d.label for d in faces] == ["face"]


def test_without_the_quantizer_the_command_says_what_to_install(tmp_path: Path) -> None:
    """Runs whether or not ai-edge-quantizer is installed: an import of it that fails (a stand-in
    package first on the path) gives one line naming the extra, exit 1, nothing written."""
    blocker = tmp_path / "site" / "ai_edge_quantizer"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked for this test')\n")
    out = tmp_path / "x.tflite"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "model", "quantize", str(MODELS / "face-short-range.tflite"),
         "-o", str(out), "--calib", str(MEDIA / "astronaut.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(ROOT)])},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("edge-agent: ") and "face-short-range.tflite" in line
    assert "edge-detection-agent[tflite-quant]" in line and "Traceback" not in done.stderr
    assert not out.exists()


@needs_quantizer
def test_model_eval_compares_the_quantized_model_with_the_float_one(face: dict[str, Any]) -> None:
    float_model_path = MODELS / "face-short-range.tflite"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "model", "eval", str(float_model_path), str(face["model"]),
         "--data", str(MEDIA / "astronaut.png"), "--reference", str(float_model_path),
         "--frames", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    fp, q = (json.loads(line) for line in done.stdout.splitlines())
    assert (fp["map50"], q["map50"]) == (1.0, 1.0) and q["detections"] == fp["detections"] == 1
    assert q["size_bytes"] == face["model"].stat().st_size < fp["size_bytes"]
    assert q["runtime"].startswith("tflite") and q["latency_ms_p50"] > 0
