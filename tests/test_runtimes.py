"""Runtimes on generated models: what goes in is quantized or cast as the model says, what comes
out is float32 and dequantized, and files that cannot be loaded raise ModelLoadError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import ModelLoadError
from agent.runtimes import load_runtime
from agent.runtimes.base import TensorSpec, dequantize, quantize
from tests import modelgen

SIZE = (8, 4)  # width, height: [1, 4, 8, 3] inputs


def ramp(shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    return np.linspace(low, high, int(np.prod(shape)), dtype=np.float32).reshape(shape)


QUANTIZED = [
    (np.int8, 1 / 64, 0),
    (np.int8, 1 / 64, -5),
    (np.uint8, 1 / 64, 128),
    (np.uint8, 0.02, 3),
]
QUANT_IDS = ["int8", "int8-zp-5", "uint8-zp128", "uint8-scale.02"]


@pytest.mark.parametrize(("dtype", "scale", "zero_point"), QUANTIZED, ids=QUANT_IDS)
def test_tflite_quantized_input_gets_the_float_input_quantized(
    tmp_path: Path, dtype: type[Any], scale: float, zero_point: int
) -> None:
    info = np.iinfo(dtype)
    low = (info.min - zero_point) * np.float32(scale)
    high = (info.max - zero_point) * np.float32(scale)
    runtime = load_runtime(modelgen.dequantize_tflite(tmp_path, SIZE, dtype, scale, zero_point))
    spec = runtime.inputs[0]
    x = ramp(spec.shape, float(low), float(high))
    (out,) = runtime.infer([x])
    assert out.dtype == np.float32
    assert out.shape == x.shape
    # The model outputs what it was fed, dequantized: within half a step of the float input.
    assert np.abs(out - x).max() <= np.float32(scale) / 2 + 1e-6
    # and exactly on the quantization grid
    steps = out / np.float32(scale) + zero_point
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-3)
    runtime.close()


@pytest.mark.parametrize(("dtype", "scale", "zero_point"), QUANTIZED, ids=QUANT_IDS)
def test_tflite_quantized_input_clips_values_out_of_range(
    tmp_path: Path, dtype: type[Any], scale: float, zero_point: int
) -> None:
    info = np.iinfo(dtype)
    runtime = load_runtime(modelgen.dequantize_tflite(tmp_path, SIZE, dtype, scale, zero_point))
    x = np.zeros(runtime.inputs[0].shape, np.float32)
    x[..., 0], x[..., 1] = -1e6, 1e6
    (out,) = runtime.infer([x])
    np.testing.assert_allclose(out[..., 0], (info.min - zero_point) * scale, rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], (info.max - zero_point) * scale, rtol=1e-6)
    np.testing.assert_allclose(out[..., 2], 0.0, atol=1e-7)  # zero is always exact
    runtime.close()


def test_tflite_tensor_spec_reports_scale_and_zero_point(tmp_path: Path) -> None:
    runtime = load_runtime(modelgen.dequantize_tflite(tmp_path, SIZE, np.uint8, 0.02, 3))
    (spec,) = runtime.inputs
    assert spec.dtype == np.uint8
    assert spec.shape == (1, 4, 8, 3)
    assert spec.scale == pytest.approx(0.02, rel=1e-7)  # stored as float32
    assert spec.zero_point == 3
    assert spec.quantized
    (out,) = runtime.outputs
    assert out.dtype == np.float32
    assert not out.quantized
    runtime.close()


@pytest.mark.parametrize(
    ("dtype", "scale", "zero_point"),
    [(np.int8, 1 / 64, 0), (np.uint8, 1 / 32, 100)],
    ids=["int8", "uint8"],
)
def test_tflite_quantized_output_is_dequantized_to_float32(
    tmp_path: Path, dtype: type[Any], scale: float, zero_point: int
) -> None:
    runtime = load_runtime(modelgen.quantize_tflite(tmp_path, SIZE, dtype, scale, zero_point))
    (spec,) = runtime.outputs
    assert (spec.dtype, spec.zero_point) == (np.dtype(dtype), zero_point)
    assert spec.scale == pytest.approx(scale)
    info = np.iinfo(dtype)
    x = ramp(
        runtime.inputs[0].shape, (info.min - zero_point) * scale, (info.max - zero_point) * scale
    )
    (out,) = runtime.infer([x])
    assert out.dtype == np.float32
    assert np.abs(out - x).max() <= scale / 2 + 1e-6
    runtime.close()


def test_tflite_int8_output_of_planned_values_comes_back_exact(tmp_path: Path) -> None:
    planned = modelgen.example_yolo_v8()
    planned[0, 4, 0] = 1.0  # 0.9 is not on the 0.25 grid; everything else is
    runtime = load_runtime(modelgen.yolo_tflite(tmp_path, planned, output_quant=(0.25, -10)))
    (out,) = runtime.infer([np.zeros(runtime.inputs[0].shape, np.float32)])
    np.testing.assert_array_equal(out, planned)
    runtime.close()


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_constant_models_return_exactly_the_planned_outputs(tmp_path: Path, suffix: str) -> None:
    planned = modelgen.example_yolo_v8()
    planned[0, :4, 1] = [1.5e-3, -7.25, 123456.0, 0.1]
    build = modelgen.yolo_v8_onnx if suffix == ".onnx" else modelgen.yolo_tflite
    runtime = load_runtime(build(tmp_path, planned))
    x = np.random.default_rng(0).random(runtime.inputs[0].shape, np.float32)
    (out,) = runtime.infer([x])
    np.testing.assert_array_equal(out, planned)
    # The input really flows through the graph: a NaN pixel reaches every output.
    (poisoned,) = runtime.infer([np.full_like(x, np.nan)])
    assert np.isnan(poisoned).all()
    runtime.close()


def test_onnx_fp16_model_takes_float32_and_returns_float32(tmp_path: Path) -> None:
    planned = modelgen.example_yolo_v8()
    runtime = load_runtime(modelgen.fp16_onnx(tmp_path, planned))
    assert runtime.inputs[0].dtype == np.float16
    assert runtime.outputs[0].dtype == np.float16
    x = np.random.default_rng(1).random(runtime.inputs[0].shape, np.float32)
    (out,) = runtime.infer([x])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, planned.astype(np.float16).astype(np.float32))
    runtime.close()


def test_onnx_tensor_specs_name_shapes_and_float_types(tmp_path: Path) -> None:
    boxes = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.6]]
    runtime = load_runtime(modelgen.ssd_onnx(tmp_path, boxes, [1, 2], [0.9, 0.8]))
    assert runtime.inputs == [TensorSpec("image", (1, 64, 64, 3), np.dtype(np.float32))]
    assert [(o.name, o.shape) for o in runtime.outputs] == [
        ("boxes", (1, 2, 4)),
        ("classes", (1, 2)),
        ("scores", (1, 2)),
        ("count", (1,)),
    ]
    assert not any(o.quantized for o in runtime.outputs)
    runtime.close()


# ------------------------------------------------------------------------ quantize/dequantize


def test_quantize_leaves_matching_dtypes_alone_and_rounds_unquantized_integers() -> None:
    x = np.array([-3.0, 0.4, 0.6, 254.6, 300.0], np.float32)
    assert quantize(x, TensorSpec("x", (5,), np.dtype(np.float32))) is x
    raw = quantize(x, TensorSpec("x", (5,), np.dtype(np.uint8)))
    np.testing.assert_array_equal(raw, np.array([0, 0, 1, 255, 255], np.uint8))
    half = quantize(x, TensorSpec("x", (5,), np.dtype(np.float16)))
    assert half.dtype == np.float16


def test_dequantize_applies_scale_and_zero_point() -> None:
    spec = TensorSpec("y", (3,), np.dtype(np.int8), scale=0.5, zero_point=-4)
    out = dequantize(np.array([-128, -4, 127], np.int8), spec)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-62.0, 0.0, 65.5])


# ----------------------------------------------------------------------------------- errors


def test_unknown_suffix_raises_model_load_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="unknown model format") as info:
        load_runtime(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["absent.onnx", "absent.tflite", "folder.onnx"])
def test_missing_model_file_raises_model_load_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.startswith("folder"):
        path.mkdir()
    with pytest.raises(ModelLoadError, match="no such model file") as info:
        load_runtime(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
@pytest.mark.parametrize("content", ["random", "empty", "truncated"])
def test_corrupt_model_file_raises_model_load_error(
    tmp_path: Path, suffix: str, content: str
) -> None:
    path = tmp_path / f"x{suffix}"
    if content == "random":
        data = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    elif content == "empty":
        data = b""
    else:
        build = modelgen.ssd_onnx if suffix == ".onnx" else modelgen.ssd_tflite
        good = build(tmp_path / "good", [[0.1, 0.1, 0.2, 0.2]], [0], [0.5]).read_bytes()
        data = good[: len(good) // 2]
    path.write_bytes(data)
    with pytest.raises(ModelLoadError) as info:
        load_runtime(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("suffix", "runtime"), [(".onnx", "tflite"), (".tflite", "onnx")])
def test_forcing_the_wrong_runtime_raises_model_load_error(
    tmp_path: Path, suffix: str, runtime: str
) -> None:
    build = modelgen.ssd_onnx if suffix == ".onnx" else modelgen.ssd_tflite
    path = build(tmp_path, [[0.1, 0.1, 0.2, 0.2]], [0], [0.5])
    with pytest.raises(ModelLoadError) as info:
        load_runtime(path, runtime=runtime)
    assert str(path) in str(info.value)
