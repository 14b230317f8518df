"""TFLite flatbuffer surgery for the INT8 quantizer, with the schema ai-edge-litert ships: fold
the constant DEQUANTIZE (fp16 weights) and DENSIFY (sparse weights) ops into fp32 constants, add
the signature AI Edge Quantizer calibrates through, and make the quantized graph take and give
integers (drop the QUANTIZE after the input and the DEQUANTIZE before each output)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import CompressError

SIGNATURE = "serving_default"


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def read_model(path: str | Path | bytes) -> Any:
    """The model as the schema's object API (``ModelT``), buffers stored after the flatbuffer
    (AI Edge Quantizer writes them so) read into it."""
    from ai_edge_litert.tools import flatbuffer_utils

    data = Path(path).read_bytes() if isinstance(path, str | Path) else path
    try:
        return flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    except Exception as exc:  # a truncated or foreign file raises anything from struct to index
        where = path if isinstance(path, str | Path) else "model"
        raise CompressError(f"{where}: not a TFLite flatbuffer: {exc}") from exc


def to_bytes(model: Any) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def op_name(model: Any, op: Any) -> str:
    """The builtin name of ``op`` (CONV_2D, DEQUANTIZE...); old files only fill the deprecated
    byte."""
    s = _schema()
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    names: dict[int, str] = {
        v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")
    }
    return names.get(builtin, f"op{builtin}")


def tensor_name(t: Any) -> str:
    name = t.name
    return name.decode() if isinstance(name, bytes) else str(name)


def _is_constant(model: Any, t: Any) -> bool:
    buf = model.buffers[t.buffer]
    return buf.data is not None and len(buf.data) > 0


# Ops that only decode stored weights: run once, their outputs become plain fp32 constants.
FOLDED_OPS = ("DEQUANTIZE", "DENSIFY")


@dataclass(frozen=True)
class FloatModel:
    """A float graph ready for the quantizer: its bytes, and what was done to get there."""

    data: bytes
    folded: dict[str, int]  # op name -> how many were folded into constants
    input_names: list[str]
    output_names: list[str]
    fused: int = 0  # standalone RELU/RELU6 ops fused into the op before them


def float_model(path: Path) -> FloatModel:
    """``path`` as an fp32 graph with a signature: every DEQUANTIZE/DENSIFY whose inputs are
    constants replaced by its result (computed by the interpreter, so sparse and fp16 formats are
    decoded by LiteRT itself), unused tensors and buffers dropped."""
    model = read_model(path)
    if len(model.subgraphs) != 1:
        raise CompressError(f"{path}: expected one subgraph, this model has {len(model.subgraphs)}")
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1:
        raise CompressError(f"{path}: detectors take one image input, this model has "
                            f"{len(graph.inputs)}")
    for code in model.operatorCodes:
        # Files from older converters fill only the deprecated byte; AI Edge Quantizer reads
        # builtinCode alone and would take every op for ADD (code 0).
        code.builtinCode = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    folded: dict[str, int] = {}
    constant = {i for i, t in enumerate(graph.tensors) if _is_constant(model, t)}
    fold: list[Any] = []
    for op in graph.operators:  # operators are stored in execution order
        name = op_name(model, op)
        if name in FOLDED_OPS and all(i in constant for i in op.inputs if i >= 0):
            fold.append(op)
            constant.update(op.outputs)
            folded[name] = folded.get(name, 0) + 1
    if fold:
        values = _evaluate(path, [op.outputs[0] for op in fold])
        s = _schema()
        for op in fold:
            index = op.outputs[0]
            t = graph.tensors[index]
            buf = s.BufferT()
            buf.data = np.frombuffer(values[index].astype(np.float32).tobytes(), np.uint8)
            model.buffers.append(buf)
            t.buffer = len(model.buffers) - 1
            t.type = s.TensorType.FLOAT32
            t.sparsity = None
            t.quantization = None
        dropped = {id(op) for op in fold}
        graph.operators = [op for op in graph.operators if id(op) not in dropped]
    fused = _fuse_activations(model)
    _compact(model)
    _add_signature(model)
    graph = model.subgraphs[0]
    return FloatModel(
        to_bytes(model),
        folded,
        [tensor_name(graph.tensors[i]) for i in graph.inputs],
        [tensor_name(graph.tensors[i]) for i in graph.outputs],
        fused,
    )


# Standalone activations fused into the op before them: with its 17 standalone int8 RELUs the
# INT8 BlazeFace ran at 8.3 ms against 1.6 for the float model (1.4 with them fused, or with
# only them kept float). Same arithmetic in float.
_FUSABLE = ("ADD", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MUL", "SUB")


def _fuse_activations(model: Any) -> int:
    """Fold each RELU/RELU6 into the op that makes its input, when that op has no activation
    of its own and nothing else reads its output. Returns how many were fused."""
    s = _schema()
    graph = model.subgraphs[0]
    kinds = {"RELU": s.ActivationFunctionType.RELU, "RELU6": s.ActivationFunctionType.RELU6}
    outputs = {int(i) for i in graph.outputs}
    readers: dict[int, int] = {}
    for op in graph.operators:
        for i in op.inputs:
            readers[int(i)] = readers.get(int(i), 0) + 1
    producer = {int(op.outputs[0]): op for op in graph.operators}
    dropped = []
    for op in graph.operators:
        kind = kinds.get(op_name(model, op))
        if kind is None:
            continue
        src = int(op.inputs[0])
        prev = producer.get(src)
        options: Any = getattr(prev, "builtinOptions", None)
        if (
            prev is None
            or op_name(model, prev) not in _FUSABLE
            or readers.get(src) != 1
            or src in outputs
            or options is None
            or getattr(options, "fusedActivationFunction", None) != s.ActivationFunctionType.NONE
        ):
            continue
        options.fusedActivationFunction = kind
        prev.outputs = [int(op.outputs[0])]
        producer[int(op.outputs[0])] = prev
        dropped.append(op)
    graph.operators = [op for op in graph.operators if all(op is not d for d in dropped)]
    return len(dropped)


def _evaluate(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The values of tensors ``indices`` of ``path`` after one run (they are constants: any input
    gives them)."""
    from ai_edge_litert import interpreter as litert

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": it is, here
        warnings.simplefilter("ignore")
        it = litert.Interpreter(
            model_path=str(path),
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    return {i: np.array(it.get_tensor(i)) for i in indices}


def _compact(model: Any) -> None:
    """Drop tensors no op, input or output uses, then buffers no tensor uses."""
    graph = model.subgraphs[0]
    used = set(graph.inputs) | set(graph.outputs)
    for op in graph.operators:
        used.update(i for i in op.inputs if i >= 0)
        used.update(i for i in op.outputs if i >= 0)
        used.update(i for i in (op.intermediates if op.intermediates is not None else []))
    order = sorted(used)
    new = {old: k for k, old in enumerate(order)}
    graph.tensors = [graph.tensors[i] for i in order]

    def remap(indices: Any) -> list[int]:
        return [new[i] if i >= 0 else i for i in indices]

    graph.inputs, graph.outputs = remap(graph.inputs), remap(graph.outputs)
    for op in graph.operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
        if op.intermediates is not None:
            op.intermediates = remap(op.intermediates)
    keep = sorted({0} | {t.buffer for t in graph.tensors}
                  | {m.buffer for m in (model.metadata or [])})
    bnew = {old: k for k, old in enumerate(keep)}
    model.buffers = [model.buffers[i] for i in keep]
    for t in graph.tensors:
        t.buffer = bnew[t.buffer]
    for m in model.metadata or []:
        m.buffer = bnew[m.buffer]
    model.signatureDefs = None  # indices changed: rebuilt by _add_signature


def _add_signature(model: Any) -> None:
    s = _schema()
    graph = model.subgraphs[0]

    def maps(indices: list[int]) -> list[Any]:
        out = []
        for i in indices:
            m = s.TensorMapT()
            m.name = tensor_name(graph.tensors[i])
            m.tensorIndex = i
            out.append(m)
        return out

    sig = s.SignatureDefT()
    sig.inputs, sig.outputs = maps(graph.inputs), maps(graph.outputs)
    sig.signatureKey = SIGNATURE
    sig.subgraphIndex = 0
    model.signatureDefs = [sig]


@dataclass(frozen=True)
class IntegerIO:
    """What `integer_io` changed: the input's type and parameters, outputs made integer."""

    input_dtype: str
    input_scale: float
    input_zero_point: int
    integer_outputs: list[str]


def integer_io(data: bytes, names: Sequence[str] = ()) -> tuple[bytes, IntegerIO]:
    """The quantized graph taking its input as integers (AI Edge Quantizer gives the graph input
    the int8 type itself; a QUANTIZE right after a float input is dropped) and giving each output
    that ends in a DEQUANTIZE as its integers (the runtime dequantizes them). An output made by
    ops kept in float stays float (the QUANTIZE the quantizer puts after it is dropped).
    ``names``: the float model's output names, which the outputs get back (AI Edge Quantizer
    suffixes those it puts a QUANTIZE or DEQUANTIZE before), so the card's roles match."""
    s = _schema()
    model = read_model(data)
    graph = model.subgraphs[0]
    (inp,) = (int(i) for i in graph.inputs)
    drop = []
    if graph.tensors[inp].type == s.TensorType.FLOAT32:
        consumers = [op for op in graph.operators if inp in op.inputs]
        if len(consumers) != 1 or op_name(model, consumers[0]) != "QUANTIZE":
            raise CompressError(
                "the quantized model's input stays float (are the ops of its first layer kept "
                "in float?)"
            )
        q_index = int(consumers[0].outputs[0])
        graph.tensors[q_index].name = graph.tensors[inp].name  # the input keeps its name
        graph.inputs = [q_index]
        drop.append(consumers[0])
    outputs = [int(i) for i in graph.outputs]
    for k, out in enumerate(outputs):
        producer = next((op for op in graph.operators if out in op.outputs), None)
        if (
            producer is not None
            and op_name(model, producer) == "QUANTIZE"
            and graph.tensors[int(producer.inputs[0])].type == s.TensorType.FLOAT32
        ):
            # An output whose ops were kept in float: AI Edge Quantizer still quantizes it at
            # the end, at the scale float was kept to avoid; the float tensor is the output.
            src = int(producer.inputs[0])
            if src not in outputs and not any(
                src in op.inputs for op in graph.operators if op is not producer
            ):
                outputs[k] = src
                drop.append(producer)
        elif producer is not None and op_name(model, producer) == "DEQUANTIZE":
            src = int(producer.inputs[0])
            if src in outputs or any(src in op.inputs for op in graph.operators
                                     if op is not producer):
                continue  # the integer tensor also feeds the graph: leave it
            # The output keeps its name, so the card's roles (outputs: boxes/scores) still match.
            graph.tensors[src].name = graph.tensors[out].name
            outputs[k] = src
            drop.append(producer)
    graph.outputs = outputs
    for k, name in enumerate(names):
        if k < len(outputs) and tensor_name(graph.tensors[outputs[k]]).startswith(name):
            graph.tensors[outputs[k]].name = name
    integer_outputs = [
        tensor_name(graph.tensors[i]) for i in outputs
        if graph.tensors[i].type != s.TensorType.FLOAT32
    ]
    graph.operators = [op for op in graph.operators if all(op is not d for d in drop)]
    _compact(model)
    _add_signature(model)
    graph = model.subgraphs[0]
    t = graph.tensors[graph.inputs[0]]
    dtype = {s.TensorType.INT8: "int8", s.TensorType.UINT8: "uint8"}.get(t.type)
    if dtype is None or t.quantization is None or not len(t.quantization.scale):
        raise CompressError(f"the quantized model's input has type {t.type}, not int8 or uint8")
    return to_bytes(model), IntegerIO(
        dtype, float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0]), integer_outputs
    )
