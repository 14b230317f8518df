"""Which ops of a TFLite detector stay in float when the rest is quantized to INT8, found by
comparing per-tensor outputs of the whole-graph INT8 model with the float model's on
calibration frames.

Every op's output is compared: SQNR (signal-to-quantization-noise ratio) over the frames. An
output that keeps at least ``MIN_OUTPUT_SQNR_DB`` is usable as it is (BlazeFace's scores keep
15 dB and every detection). Below that, the walk goes back from the output over the ops whose
own SQNR is below it, and keeps in float each op that loses ``MAX_OP_LOSS_DB`` or more against
its worst activation input (where one 8-bit scale cannot hold the op's range), and every op
after it on the way to the output (their noise only passes on).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.compress.tflite_graph import FloatModel, op_name, read_model, tensor_name
from agent.compress.tflite_quantize import KeptOp, quantize_graph

# An output keeping this much SQNR in INT8 needs nothing kept in float.
MIN_OUTPUT_SQNR_DB = 12.0
# An op that loses this much SQNR more than its inputs had is where quantization breaks.
MAX_OP_LOSS_DB = 3.0
SENSITIVE_FRAMES = 4  # calibration frames compared, spread over them


def op_types(fm: FloatModel) -> dict[str, str]:
    """Each op's first output tensor name -> its type (CONV_2D...)."""
    model = read_model(fm.data)
    g = model.subgraphs[0]
    return {tensor_name(g.tensors[op.outputs[0]]): op_name(model, op) for op in g.operators}


def _run_all(data: bytes, feed: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Every tensor of one run of ``data`` on ``feed`` (float; integer tensors dequantized)."""
    from ai_edge_litert import interpreter as litert

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": it is, here
        warnings.simplefilter("ignore")
        it = litert.Interpreter(
            model_content=data,
            num_threads=threads,
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = feed
    if d["dtype"] != np.float32:
        scale, zero = d["quantization"]
        info = np.iinfo(d["dtype"])
        x = np.clip(np.rint(feed / scale) + zero, info.min, info.max).astype(d["dtype"])
    it.set_tensor(d["index"], x)
    it.invoke()
    out: dict[str, np.ndarray] = {}
    for t in it.get_tensor_details():
        try:
            v = it.get_tensor(t["index"])
        except ValueError:  # tensors without data (scratch buffers)
            continue
        scale, zero = t["quantization"]
        if scale and np.issubdtype(v.dtype, np.integer):
            v = (v.astype(np.float32) - zero) * np.float32(scale)
        out[str(t["name"])] = np.asarray(v, np.float32)
    return out


def tensor_sqnr(
    float_data: bytes, quant_data: bytes, feeds: Sequence[np.ndarray], threads: int = 2
) -> dict[str, float]:
    """SQNR in dB of every tensor the two models share by name, over ``feeds``."""
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    for feed in feeds:
        a = _run_all(float_data, feed, threads)
        b = _run_all(quant_data, feed, threads)
        for name, ref in a.items():
            got = b.get(name)
            if got is None or got.shape != ref.shape:
                continue
            signal[name] = signal.get(name, 0.0) + float(np.sum(ref.astype(np.float64) ** 2))
            noise[name] = noise.get(name, 0.0) + float(np.sum((ref - got).astype(np.float64) ** 2))
    return {
        n: (math.inf if noise[n] == 0 else 10 * math.log10(signal[n] / noise[n]) if signal[n]
            else -math.inf)
        for n in signal
    }


@dataclass
class Sensitivity:
    """The ops to keep in float, and the SQNR of each output of the whole-graph INT8 model."""

    kept: list[KeptOp]
    output_sqnr: dict[str, float]


def find_sensitive(
    fm: FloatModel,
    qsvs: dict[str, Any],
    feeds: Sequence[dict[str, np.ndarray]],
    threads: int = 2,
) -> Sensitivity:
    """The ops to keep in float, each with its reason (see the module docstring)."""
    whole = quantize_graph(fm, qsvs, [])
    name = fm.input_names[0]
    picks = np.linspace(0, len(feeds) - 1, min(SENSITIVE_FRAMES, len(feeds))).round().astype(int)
    sqnr = tensor_sqnr(fm.data, whole, [feeds[i][name] for i in picks], threads)
    model = read_model(fm.data)
    g = model.subgraphs[0]
    names = [tensor_name(t) for t in g.tensors]
    producer = {int(op.outputs[0]): k for k, op in enumerate(g.operators)}
    activations = set(producer) | {int(i) for i in g.inputs}
    consumers: dict[int, list[int]] = {}
    for k, op in enumerate(g.operators):
        for i in op.inputs:
            consumers.setdefault(int(i), []).append(k)

    def db(index: int) -> float:
        return sqnr.get(names[index], math.inf)

    kept: dict[int, str] = {}
    outputs = {names[int(i)]: db(int(i)) for i in g.outputs}
    for out in (int(i) for i in g.outputs):
        if db(out) >= MIN_OUTPUT_SQNR_DB:
            continue
        todo, seen = [producer[out]] if out in producer else [], set()
        while todo:
            k = todo.pop()
            if k in seen:
                continue
            seen.add(k)
            op = g.operators[k]
            mine = db(int(op.outputs[0]))
            if mine >= MIN_OUTPUT_SQNR_DB:
                continue  # the damage is after this op
            ins = [db(int(i)) for i in op.inputs if int(i) in activations]
            lost = min(ins, default=math.inf) - mine
            if lost >= MAX_OP_LOSS_DB:
                kept.setdefault(
                    k,
                    f"loses {lost:.1f} dB in INT8 (its output {mine:.1f} dB SQNR against "
                    f"{mine + lost:.1f} for its inputs; {names[out]} keeps {db(out):.1f} dB "
                    f"< {MIN_OUTPUT_SQNR_DB:.0f})",
                )
            todo.extend(producer[int(i)] for i in op.inputs if int(i) in producer)
    for k in sorted(kept):  # what follows a kept op on the way to an output stays float too
        stack = [k]
        while stack:
            for j in consumers.get(int(g.operators[stack.pop()].outputs[0]), []):
                if j not in kept:
                    kept[j] = f"after {names[g.operators[k].outputs[0]]}, kept in float"
                    stack.append(j)
    return Sensitivity(
        [
            KeptOp(names[g.operators[k].outputs[0]], op_name(model, g.operators[k]), kept[k])
            for k in sorted(kept)
        ],
        outputs,
    )
