"""Small real model files whose outputs are known exactly, so decoders are tested against truth.

Every model takes an image and returns planned constant arrays: ``output = constant + 0 * mean(input)``,
so the input really flows through the runtime (quantization included) while the outputs stay exact.
Run ``python tests/modelgen.py OUTDIR`` to write one of each.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Size = tuple[int, int]  # width, height, as model cards say it

ONNX_OPSET = 13
# onnxruntime 1.32 reads IR up to 11; 8 is what opset 13 first shipped with.
ONNX_IR_VERSION = 8


# --------------------------------------------------------------------------------------- ONNX


def _onnx_constant_model(
    path: Path,
    input_shape: Sequence[int],
    outputs: Sequence[tuple[str, np.ndarray]],
    *,
    dtype: type[np.floating[Any]] = np.float32,
    input_name: str = "images",
    metadata: dict[str, str] | None = None,
) -> Path:
    """``outputs[i] = constant_i + 0 * ReduceMean(input)``, all in ``dtype`` (float32 or float16)."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    nodes = [
        helper.make_node(
            "ReduceMean", [input_name], ["mean"], axes=list(range(len(input_shape))), keepdims=0
        ),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    initializers = [numpy_helper.from_array(np.zeros((), dtype), "zero")]
    graph_outputs = []
    for name, array in outputs:
        const = np.asarray(array, dtype)
        initializers.append(numpy_helper.from_array(const, f"{name}_const"))
        nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, elem, list(const.shape)))
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(input_name, elem, list(input_shape))],
        graph_outputs,
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
        producer_name="edge-agent tests/modelgen.py",
    )
    if metadata:
        helper.set_model_props(model, metadata)
    checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def yolo_v8_onnx(
    directory: str | Path,
    outputs: np.ndarray,
    size: Size = (64, 64),
    *,
    name: str = "yolo_v8",
    dtype: type[np.floating[Any]] = np.float32,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Ultralytics v8/v11 export: input NCHW ``[1, 3, H, W]``, output ``[1, 4+nc, N]``."""
    if outputs.ndim != 3 or outputs.shape[0] != 1:
        raise ValueError(f"yolo v8 outputs are [1, 4+nc, N], got {outputs.shape}")
    w, h = size
    return _onnx_constant_model(
        Path(directory) / f"{name}.onnx",
        (1, 3, h, w),
        [("output0", outputs)],
        dtype=dtype,
        metadata=metadata,
    )


def yolo_v5_onnx(
    directory: str | Path, outputs: np.ndarray, size: Size = (64, 64), *, name: str = "yolo_v5"
) -> Path:
    """Ultralytics v5 export: input NCHW ``[1, 3, H, W]``, output ``[1, N, 5+nc]``."""
    if outputs.ndim != 3 or outputs.shape[0] != 1:
        raise ValueError(f"yolo v5 outputs are [1, N, 5+nc], got {outputs.shape}")
    w, h = size
    return _onnx_constant_model(
        Path(directory) / f"{name}.onnx", (1, 3, h, w), [("output0", outputs)]
    )


SSD_ORDER = ("boxes", "classes", "scores", "count")


@dataclass(frozen=True)
class SsdOutputs:
    """The four arrays of a TFLite detection post-process, shaped as the op emits them."""

    boxes: np.ndarray  # [1, N, 4] ymin, xmin, ymax, xmax normalised
    classes: np.ndarray  # [1, N]
    scores: np.ndarray  # [1, N]
    count: np.ndarray  # [1]

    @classmethod
    def of(
        cls,
        boxes: np.ndarray | Sequence[Sequence[float]],
        classes: np.ndarray | Sequence[float],
        scores: np.ndarray | Sequence[float],
        count: int | None = None,
    ) -> SsdOutputs:
        b = np.asarray(boxes, np.float32).reshape(1, -1, 4)
        n = b.shape[1]
        return cls(
            b,
            np.asarray(classes, np.float32).reshape(1, n),
            np.asarray(scores, np.float32).reshape(1, n),
            np.asarray([n if count is None else count], np.float32),
        )

    def named(
        self, order: Sequence[str], names: Sequence[str] | None
    ) -> list[tuple[str, np.ndarray]]:
        names = list(names) if names is not None else list(order)
        return [(n, getattr(self, role)) for n, role in zip(names, order, strict=True)]


def ssd_onnx(
    directory: str | Path,
    boxes: np.ndarray | Sequence[Sequence[float]],
    classes: np.ndarray | Sequence[float],
    scores: np.ndarray | Sequence[float],
    count: int | None = None,
    *,
    size: Size = (64, 64),
    order: Sequence[str] = SSD_ORDER,
    names: Sequence[str] | None = None,
    name: str = "ssd",
) -> Path:
    """SSD post-process outputs in ``order`` (roles), called ``names``; input NHWC float32."""
    w, h = size
    ssd = SsdOutputs.of(boxes, classes, scores, count)
    return _onnx_constant_model(
        Path(directory) / f"{name}.onnx", (1, h, w, 3), ssd.named(order, names), input_name="image"
    )


def anchors_onnx(
    directory: str | Path,
    regressors: np.ndarray,
    scores: np.ndarray,
    size: Size = (16, 16),
    *,
    name: str = "anchors",
) -> Path:
    """MediaPipe-style detector: input NHWC float32, outputs regressors ``[1, N, K]`` and scores
    ``[1, N, C]``."""
    w, h = size
    return _onnx_constant_model(
        Path(directory) / f"{name}.onnx",
        (1, h, w, 3),
        [("regressors", regressors), ("classificators", scores)],
        input_name="input",
    )


def fp16_onnx(
    directory: str | Path, outputs: np.ndarray, size: Size = (64, 64), *, name: str = "yolo_fp16"
) -> Path:
    """A half-precision export (float16 input, weights and output), as ``model.half()`` gives."""
    return yolo_v8_onnx(directory, outputs, size, name=name, dtype=np.float16)


# ------------------------------------------------------------------------------------- TFLite

_TFL_TYPES: dict[np.dtype[Any], int] = {
    np.dtype(np.float32): 0,  # FLOAT32
    np.dtype(np.float16): 1,
    np.dtype(np.int32): 2,
    np.dtype(np.uint8): 3,
    np.dtype(np.int8): 9,
}

Quant = tuple[float, int]  # scale, zero point


class _TFLiteGraph:
    """Just enough of a TFLite flatbuffer writer for a one-subgraph model."""

    def __init__(self) -> None:
        from ai_edge_litert import schema_py_generated as s

        self.s = s
        self.buffers: list[Any] = [s.BufferT()]  # buffer 0: the empty sentinel every model has
        self.tensors: list[Any] = []
        self.operators: list[Any] = []
        self.opcodes: list[int] = []

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: np.dtype[Any] | type[Any],
        *,
        data: np.ndarray | None = None,
        quant: Quant | None = None,
    ) -> int:
        s = self.s
        t = s.TensorT()
        t.name = name
        t.shape = np.asarray(shape, np.int32)
        t.type = _TFL_TYPES[np.dtype(dtype)]
        t.buffer = 0
        if data is not None:
            buf = s.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data, dtype).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = [float(quant[0])]
            q.zeroPoint = [int(quant[1])]
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, array: np.ndarray) -> int:
        return self.tensor(name, array.shape, array.dtype, data=array)

    def op(
        self,
        code: int,
        inputs: Sequence[int],
        outputs: Sequence[int],
        options_type: int = 0,
        options: Any = None,
    ) -> None:
        if code not in self.opcodes:
            self.opcodes.append(code)
        o = self.s.OperatorT()
        o.opcodeIndex = self.opcodes.index(code)
        o.inputs = list(inputs)
        o.outputs = list(outputs)
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.operators.append(o)

    def save(self, path: Path, inputs: Sequence[int], outputs: Sequence[int]) -> Path:
        import flatbuffers  # type: ignore[import-untyped]

        s = self.s
        graph = s.SubGraphT()
        graph.tensors = self.tensors
        graph.inputs = list(inputs)
        graph.outputs = list(outputs)
        graph.operators = self.operators
        graph.name = "main"
        model = s.ModelT()
        model.version = 3
        model.description = "edge-agent tests/modelgen.py"
        model.buffers = self.buffers
        model.subgraphs = [graph]
        codes = []
        for code in self.opcodes:
            c = s.OperatorCodeT()
            c.builtinCode = code
            # Codes above 127 live only in builtinCode; old readers look at the deprecated byte.
            c.deprecatedBuiltinCode = min(code, 127)
            c.version = 1
            codes.append(c)
        model.operatorCodes = codes
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(builder.Output()))
        return path

    # ops ---------------------------------------------------------------------------------

    def add(self, a: int, b: int, out: int) -> None:
        s = self.s
        self.op(s.BuiltinOperator.ADD, [a, b], [out], s.BuiltinOptions.AddOptions, s.AddOptionsT())

    def mul(self, a: int, b: int, out: int) -> None:
        s = self.s
        self.op(s.BuiltinOperator.MUL, [a, b], [out], s.BuiltinOptions.MulOptions, s.MulOptionsT())

    def mean(self, x: int, axes: int, out: int) -> None:
        s = self.s
        options = s.ReducerOptionsT()
        options.keepDims = False
        self.op(s.BuiltinOperator.MEAN, [x, axes], [out], s.BuiltinOptions.ReducerOptions, options)

    def dequantize(self, x: int, out: int) -> None:
        s = self.s
        self.op(
            s.BuiltinOperator.DEQUANTIZE,
            [x],
            [out],
            s.BuiltinOptions.DequantizeOptions,
            s.DequantizeOptionsT(),
        )

    def quantize(self, x: int, out: int) -> None:
        s = self.s
        self.op(
            s.BuiltinOperator.QUANTIZE,
            [x],
            [out],
            s.BuiltinOptions.QuantizeOptions,
            s.QuantizeOptionsT(),
        )


def _tflite_constant_model(
    path: Path,
    input_shape: Sequence[int],
    outputs: Sequence[tuple[str, np.ndarray]],
    *,
    input_dtype: type[Any] = np.float32,
    input_quant: Quant | None = None,
    output_quant: Quant | None = None,
    output_dtype: type[Any] = np.int8,
) -> Path:
    """``outputs[i] = constant_i + 0 * MEAN(DEQUANTIZE?(input))``, then QUANTIZE when
    ``output_quant`` is given (to ``output_dtype``)."""
    g = _TFLiteGraph()
    dtype = np.dtype(input_dtype)
    x = g.tensor("image", input_shape, dtype, quant=input_quant)
    real = x
    if dtype != np.float32:
        if input_quant is None:
            raise ValueError("an integer input needs quant=(scale, zero_point)")
        real = g.tensor("image_float", input_shape, np.float32)
        g.dequantize(x, real)
    axes = g.const("axes", np.arange(1, len(input_shape), dtype=np.int32))
    mean = g.tensor("mean", [input_shape[0]], np.float32)
    g.mean(real, axes, mean)
    zero = g.const("zero", np.zeros([1], np.float32))
    nothing = g.tensor("nothing", [input_shape[0]], np.float32)
    g.mul(mean, zero, nothing)
    results = []
    for name, array in outputs:
        const = np.asarray(array, np.float32)
        c = g.const(f"{name}_const", const)
        if output_quant is None:
            out = g.tensor(name, const.shape, np.float32)
            g.add(c, nothing, out)
        else:
            real_out = g.tensor(f"{name}_float", const.shape, np.float32)
            g.add(c, nothing, real_out)
            out = g.tensor(name, const.shape, output_dtype, quant=output_quant)
            g.quantize(real_out, out)
        results.append(out)
    return g.save(path, [x], results)


def ssd_tflite(
    directory: str | Path,
    boxes: np.ndarray | Sequence[Sequence[float]],
    classes: np.ndarray | Sequence[float],
    scores: np.ndarray | Sequence[float],
    count: int | None = None,
    *,
    size: Size = (64, 64),
    input_dtype: type[Any] = np.float32,
    quant: Quant | None = None,
    order: Sequence[str] = SSD_ORDER,
    names: Sequence[str] | None = None,
    name: str = "ssd",
) -> Path:
    """TF Object Detection API style SSD: input NHWC (float32, or uint8/int8 quantized with
    ``quant``), outputs boxes ``[1,N,4]``, classes ``[1,N]``, scores ``[1,N]``, count ``[1]``."""
    w, h = size
    ssd = SsdOutputs.of(boxes, classes, scores, count)
    if names is None:
        names = [
            f"TFLite_Detection_PostProcess:{i}" if i else "TFLite_Detection_PostProcess"
            for i in range(len(order))
        ]
    return _tflite_constant_model(
        Path(directory) / f"{name}.tflite",
        (1, h, w, 3),
        ssd.named(order, names),
        input_dtype=input_dtype,
        input_quant=quant,
    )


def anchors_tflite(
    directory: str | Path,
    regressors: np.ndarray,
    scores: np.ndarray,
    size: Size = (16, 16),
    *,
    name: str = "anchors",
) -> Path:
    """MediaPipe-style detector: input NHWC float32, outputs regressors ``[1, N, K]`` and scores
    ``[1, N, C]`` (named as in face_detection_short_range.tflite)."""
    w, h = size
    return _tflite_constant_model(
        Path(directory) / f"{name}.tflite",
        (1, h, w, 3),
        [("regressors", regressors), ("classificators", scores)],
    )


def yolo_tflite(
    directory: str | Path,
    outputs: np.ndarray,
    size: Size = (64, 64),
    *,
    output_quant: Quant | None = None,
    output_dtype: type[Any] = np.int8,
    name: str = "yolo",
) -> Path:
    """Ultralytics TFLite export: input NHWC float32, output ``[1, 4+nc, N]`` (float32, or
    quantized to ``output_dtype`` with ``output_quant`` as int8 exports are)."""
    w, h = size
    return _tflite_constant_model(
        Path(directory) / f"{name}.tflite",
        (1, h, w, 3),
        [("Identity", outputs)],
        output_quant=output_quant,
        output_dtype=output_dtype,
    )


def dequantize_tflite(
    directory: str | Path,
    size: Size = (8, 8),
    dtype: type[Any] = np.int8,
    scale: float = 1 / 64,
    zero_point: int = 0,
    *,
    name: str | None = None,
) -> Path:
    """Quantized image input (``dtype`` with ``scale``/``zero_point``) -> float32 output that is
    its DEQUANTIZE: shows exactly what the runtime fed the model."""
    w, h = size
    g = _TFLiteGraph()
    x = g.tensor("image", (1, h, w, 3), dtype, quant=(scale, zero_point))
    y = g.tensor("real", (1, h, w, 3), np.float32)
    g.dequantize(x, y)
    path = Path(directory) / f"{name or 'dequantize_' + np.dtype(dtype).name}.tflite"
    return g.save(path, [x], [y])


def quantize_tflite(
    directory: str | Path,
    size: Size = (8, 8),
    dtype: type[Any] = np.int8,
    scale: float = 1 / 64,
    zero_point: int = 0,
    *,
    name: str | None = None,
) -> Path:
    """Float32 input -> its QUANTIZE (``dtype`` with ``scale``/``zero_point``) as the output:
    the runtime must dequantize it back."""
    w, h = size
    g = _TFLiteGraph()
    x = g.tensor("image", (1, h, w, 3), np.float32)
    y = g.tensor("quantized", (1, h, w, 3), dtype, quant=(scale, zero_point))
    g.quantize(x, y)
    path = Path(directory) / f"{name or 'quantize_' + np.dtype(dtype).name}.tflite"
    return g.save(path, [x], [y])


# ---------------------------------------------------------------------------------- examples


def example_yolo_v8(nc: int = 2, n: int = 8) -> np.ndarray:
    out = np.zeros((1, 4 + nc, n), np.float32)
    out[0, :4, 0] = [32, 32, 16, 8]
    out[0, 4, 0] = 0.9
    return out


def write_all(directory: str | Path) -> list[Path]:
    """One of each model, for a look with netron or a quick run."""
    d = Path(directory)
    v8 = example_yolo_v8()
    v5 = np.zeros((1, 8, 7), np.float32)
    v5[0, 0] = [32, 32, 16, 8, 0.9, 1.0, 0.0]
    ssd = ([[0.1, 0.2, 0.5, 0.6]], [0], [0.8])
    regressors = np.zeros((1, 8, 8), np.float32)
    scores = np.full((1, 8, 1), -5, np.float32)
    return [
        yolo_v8_onnx(d, v8),
        yolo_v5_onnx(d, v5),
        fp16_onnx(d, v8),
        ssd_onnx(d, *ssd),
        anchors_onnx(d, regressors, scores),
        ssd_tflite(d, *ssd),
        ssd_tflite(d, *ssd, input_dtype=np.uint8, quant=(1 / 128, 128), name="ssd_uint8"),
        ssd_tflite(d, *ssd, input_dtype=np.int8, quant=(1 / 128, 0), name="ssd_int8"),
        anchors_tflite(d, regressors, scores),
        yolo_tflite(d, v8),
        yolo_tflite(d, v8, output_quant=(0.25, -10), name="yolo_int8_output"),
        dequantize_tflite(d, dtype=np.int8),
        dequantize_tflite(d, dtype=np.uint8, zero_point=128),
        quantize_tflite(d, dtype=np.int8),
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/modelgen.py OUTDIR")
    for written in write_all(sys.argv[1]):
        print(written)
