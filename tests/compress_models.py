"""A tiny YOLO-like detector with real convolutions, for the compression tests: two scales whose
box and class outputs are joined as Ultralytics exports do, then boxes in input pixels and sigmoid
scores joined in one output ``[1, 4+nc, N]``, so its final Concat mixes ranges as YOLOv8's does;
and publishing a compressed model to a folder registry with the real commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

SIZE = 64
N = 32 * 32 + 16 * 16  # places: two scales, strides 2 and 4
LABELS = ["person", "car"]


def tiny_yolo(directory: Path, name: str = "tiny", seed: int = 0) -> Path:
    """Write ``NAME.onnx`` and ``NAME.card.yaml``; deterministic for a seed."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    rng = np.random.default_rng(seed)
    nc = len(LABELS)

    def conv_w(cout: int, cin: int, k: int) -> np.ndarray:
        return (rng.standard_normal((cout, cin, k, k)) * (1.0 / np.sqrt(cin * k * k))).astype(
            np.float32
        )

    inits = {
        "w0": conv_w(16, 3, 3),
        "b0": np.zeros(16, np.float32),
        "w1": conv_w(16, 16, 3),
        "b1": np.zeros(16, np.float32),
        "box0": conv_w(4, 16, 1),
        "cls0": conv_w(nc, 16, 1) * 6,
        "box1": conv_w(4, 16, 1),
        "cls1": conv_w(nc, 16, 1) * 6,
        "clsb": np.full(nc, 0.8, np.float32),
        "n0": np.array([1, 4 + nc, -1], np.int64),
        "split": np.array([4, nc], np.int64),
        "pixels": np.array(float(SIZE), np.float32),
        # As in a real detector, most places are background: their scores are scaled down.
        "objectness": np.where(np.arange(N) % 37 == 0, 1.0, 0.05)
        .astype(np.float32)
        .reshape(1, 1, N),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["images", "w0", "b0"], ["c0"], name="stem", pads=[1] * 4, strides=[2, 2]),
        n("Relu", ["c0"], ["r0"], name="stem_act"),
        n("Conv", ["r0", "w1", "b1"], ["c1"], name="body", pads=[1] * 4),
        n("Relu", ["c1"], ["f0"], name="body_act"),  # scale 0: 32x32
        n("MaxPool", ["f0"], ["f1"], name="down", kernel_shape=[2, 2], strides=[2, 2]),  # 16x16
    ]
    joined = []
    for s, feat in enumerate(["f0", "f1"]):
        nodes += [
            n("Conv", [feat, f"box{s}"], [f"bx{s}"], name=f"head{s}_box"),
            n("Conv", [feat, f"cls{s}", "clsb"], [f"k{s}"], name=f"head{s}_cls"),
            n("Concat", [f"bx{s}", f"k{s}"], [f"o{s}"], name=f"head{s}_join", axis=1),
            n("Reshape", [f"o{s}", "n0"], [f"flat{s}"], name=f"head{s}_flat"),
        ]
        joined.append(f"flat{s}")
    nodes += [
        n("Concat", joined, ["all"], name="join_scales", axis=2),
        n("Split", ["all", "split"], ["raw_box", "raw_cls"], name="split", axis=1),
        n("Sigmoid", ["raw_box"], ["unit_box"], name="box_sigmoid"),
        n("Mul", ["unit_box", "pixels"], ["box"], name="box_pixels"),
        n("Sigmoid", ["raw_cls"], ["class_prob"], name="class_prob"),
        n("Mul", ["class_prob", "objectness"], ["scores"], name="scores"),
        n("Concat", ["box", "scores"], ["output0"], name="output_join", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + nc, N])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    checker.check_model(model, full_check=True)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.onnx"
    save(model, str(path))
    card = {
        "name": name,
        "version": "1.0.0",
        "format": "onnx",
        "family": "yolo",
        "yolo_version": "v8",
        "yolo_boxes": "pixels",
        "input": {"width": SIZE, "height": SIZE, "layout": "NCHW", "pad_value": 114},
        "labels": LABELS,
        "thresholds": {"score": 0.5, "iou": 0.45},
    }
    (directory / f"{name}.card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def image_folder(directory: Path, count: int = 8, seed: int = 1) -> Path:
    """``count`` smooth random pictures (blurred noise with shapes), as PNG files."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = rng.integers(0, 255, (48, 80, 3), np.uint8)
        img = cv2.GaussianBlur(img, (0, 0), 3)
        x, y = int(rng.integers(5, 50)), int(rng.integers(5, 25))
        cv2.rectangle(
            img, (x, y), (x + 20, y + 15), tuple(int(v) for v in rng.integers(0, 255, 3)), -1
        )
        cv2.imwrite(str(directory / f"img{i:02d}.png"), img)
    return directory


def run(model: Path, image: np.ndarray) -> np.ndarray:
    """The model's raw output on a preprocessed input."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"images": image})[0])


# ------------------------------------------------------------------ a tiny TFLite anchors model

ANCHORS_SIZE = 32
ANCHORS_N = 16 * 16  # one anchor per place of the stride-2 feature map
TWO_SCALES_N = 8 * 8  # two_scales: the pooled scale's anchors, after the first scale's


def tiny_anchors_tflite(
    directory: Path, name: str = "tiny-anchors", seed: int = 0, *, two_scales: bool = False
) -> Path:
    """Write ``NAME.tflite`` and its card: a MediaPipe-like detector with real convolutions
    (3x3 stride 2 + ReLU, 3x3 + ReLU, 1x1 box and score heads reshaped to ``[1, N, 4]`` and
    ``[1, N, 1]``), its weights stored fp16 behind DEQUANTIZE ops as MediaPipe's are, input in
    [-1, 1]. Deterministic for a seed.

    ``two_scales``: a second, 2x2 max-pooled scale whose heads are joined with the first's, as
    MediaPipe's are; the first scale's anchors all score about 0 (logits near -12) while their
    regressors span hundreds, the second's score high with regressors of a few units. One 8-bit
    scale over the joined regressors crushes the ones that matter (``TWO_SCALES_N`` anchors)."""
    from ai_edge_litert import schema_py_generated as s

    from tests.modelgen import _TFLiteGraph

    rng = np.random.default_rng(seed)
    g = _TFLiteGraph()
    side = ANCHORS_SIZE // 2

    def weights(label: str, cout: int, k: int, cin: int, gain: float = 1.0) -> int:
        w = rng.standard_normal((cout, k, k, cin)) * gain / np.sqrt(cin * k * k)
        half = g.const(f"{label}_fp16", w.astype(np.float16))
        real = g.tensor(f"{label}_dequantize", w.shape, np.float32)
        g.dequantize(half, real)
        return real

    def conv(label: str, x: int, cout: int, k: int, cin: int, stride: int, relu: bool,
             gain: float = 1.0, bias: float = 0.0, size: int = side) -> int:
        w = weights(label, cout, k, cin, gain)
        b = g.const(f"{label}_bias", np.full(cout, bias, np.float32))
        out = g.tensor(label, (1, size, size, cout), np.float32)
        options = s.Conv2DOptionsT()
        options.padding = s.Padding.SAME
        options.strideW = options.strideH = stride
        options.fusedActivationFunction = (
            s.ActivationFunctionType.RELU if relu else s.ActivationFunctionType.NONE
        )
        g.op(s.BuiltinOperator.CONV_2D, [x, w, b], [out], s.BuiltinOptions.Conv2DOptions, options)
        return out

    def reshape(label: str, x: int, shape: tuple[int, ...]) -> int:
        out = g.tensor(label, shape, np.float32)
        new = g.const(f"{label}_shape", np.asarray(shape, np.int32))
        options = s.ReshapeOptionsT()
        options.newShape = list(shape)
        g.op(s.BuiltinOperator.RESHAPE, [x, new], [out], s.BuiltinOptions.ReshapeOptions, options)
        return out

    x = g.tensor("input", (1, ANCHORS_SIZE, ANCHORS_SIZE, 3), np.float32)
    f0 = conv("stem", x, 8, 3, 3, 2, True)
    f1 = conv("body", f0, 8, 3, 8, 1, True)
    if not two_scales:
        box = conv("regressor", f1, 4, 1, 8, 1, False, gain=8.0)
        score = conv("classificator", f1, 1, 1, 8, 1, False, gain=4.0, bias=-2.0)
        outs = [reshape("regressors", box, (1, ANCHORS_N, 4)),
                reshape("classificators", score, (1, ANCHORS_N, 1))]
    else:
        small = side // 2
        f2 = g.tensor("pooled", (1, small, small, 8), np.float32)
        pool = s.Pool2DOptionsT()
        pool.padding = s.Padding.VALID
        pool.strideW = pool.strideH = pool.filterWidth = pool.filterHeight = 2
        g.op(s.BuiltinOperator.MAX_POOL_2D, [f1], [f2], s.BuiltinOptions.Pool2DOptions, pool)
        outs = []
        for role, k, heads in (
            ("regressors", 4, [(4000.0, 0.0), (20.0, 0.0)]),
            ("classificators", 1, [(1.0, -12.0), (4.0, 1.0)]),
        ):
            parts = []
            for level, (feat, size, (gain, bias)) in enumerate(
                zip((f1, f2), (side, small), heads, strict=True)
            ):
                label = f"{role[:-1]}_{level}"
                y = conv(label, feat, k, 1, 8, 1, False, gain=gain, bias=bias, size=size)
                parts.append(reshape(f"{label}_flat", y, (1, size * size, k)))
            joined = g.tensor(role, (1, TWO_SCALES_N + ANCHORS_N, k), np.float32)
            options = s.ConcatenationOptionsT()
            options.axis = 1
            g.op(s.BuiltinOperator.CONCATENATION, parts, [joined],
                 s.BuiltinOptions.ConcatenationOptions, options)
            outs.append(joined)
    path = g.save(Path(directory) / f"{name}.tflite", [x], outs)
    card = {
        "name": name,
        "format": "tflite",
        "family": "anchors",
        "input": {"width": ANCHORS_SIZE, "height": ANCHORS_SIZE, "layout": "NHWC",
                  "color": "RGB", "resize": "stretch", "scale": 1 / 127.5,
                  "mean": [1.0, 1.0, 1.0]},
        "labels": ["thing"],
        "anchors": {"num_layers": 1, "min_scale": 0.2, "max_scale": 0.2, "strides": [2],
                    "aspect_ratios": [1.0], "interpolated_scale_aspect_ratio": 0.0},
        "decode": {"box_scale": [ANCHORS_SIZE] * 4},
        "outputs": {"boxes": "regressors", "scores": "classificators"},
    }
    (Path(directory) / f"{name}.card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def publish_signed(model: Path, folder: Path, name: str, version: str = "1.0.0") -> Path:
    """``edge-agent registry keygen``, ``publish`` and ``verify`` run for real on ``model`` into
    the folder registry ``folder/registry``; returns the public key's path."""
    from tests.conftest import ROOT

    key = folder / "pub.key"
    registry = folder / "registry"
    for args in (
        ["keygen", "--out", str(key)],
        ["publish", str(model), "--registry", str(registry), "--name", name,
         "--version", version, "--key", str(key)],
        ["verify", str(registry), "--key", f"{key}.pub"],
    ):  # fmt: skip
        step = subprocess.run(
            [sys.executable, "-m", "agent", "registry", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert step.returncode == 0, (args[0], step.stderr)
    return Path(f"{key}.pub")
