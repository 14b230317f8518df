"""Which ops of a TFLite detector stay in float when the rest is quantized to INT8, found by
comparing the whole-graph INT8 model's tensors with the float model's on calibration frames.

Two checks:

- **Decoded outputs** (family ``anchors``): the score output as the decoder reads it (sigmoid)
  and the box regressors in input pixels, on the anchors the float model scores at least 0.01
  (those a detection or an evaluation can use). MediaPipe's score logits span about -300..10,
  so one 8-bit scale steps them by 1.4 logits: every score near the 0.5 threshold becomes
  exactly 0.5 or 0.8, though the tensor keeps 16 dB SQNR (the background dominates it). An
  output that strays more than ``MAX_SCORE_ERROR`` / ``MAX_BOX_ERROR`` keeps its head in float:
  the ops that lead to that output alone (the 1x1 head convolutions, their reshapes, the join).
- **Per-op loss** (any model): SQNR of every op's output over the frames; where an output keeps
  less than ``MIN_OUTPUT_SQNR_DB``, the walk goes back from it over the ops whose SQNR is below
  that, and keeps each op that loses ``MAX_OP_LOSS_DB`` or more against its worst activation
  input (one 8-bit scale cannot hold its range), and every op after it on the way to an output.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.compress.evaluate import EVAL_SCORE
from agent.compress.tflite_graph import FloatModel, op_name, read_model, tensor_name
from agent.compress.tflite_quantize import KeptOp, quantize_graph
from agent.detection.card import ModelCard

# An output keeping this much SQNR in INT8 needs nothing kept in float.
MIN_OUTPUT_SQNR_DB = 12.0
# An op that loses this much SQNR more than its inputs had is where quantization breaks.
MAX_OP_LOSS_DB = 3.0
SENSITIVE_FRAMES = 4  # calibration frames compared, spread over them
# anchors: largest score difference after the sigmoid, on the anchors that matter
MAX_SCORE_ERROR = 0.05
# anchors: mean box regressor difference, as a fraction of the input size
MAX_BOX_ERROR = 0.01


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


@dataclass
class Comparison:
    """Float against INT8 on the same frames: each shared tensor's SQNR, and the outputs."""

    sqnr: dict[str, float]
    float_outputs: list[dict[str, np.ndarray]]
    int8_outputs: list[dict[str, np.ndarray]]


def compare_tensors(
    float_data: bytes,
    quant_data: bytes,
    feeds: Sequence[np.ndarray],
    outputs: Sequence[str],
    threads: int = 2,
) -> Comparison:
    """SQNR in dB of every tensor the two models share by name, over ``feeds``, and both
    models' ``outputs`` on each feed."""
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    fouts, qouts = [], []
    for feed in feeds:
        a = _run_all(float_data, feed, threads)
        b = _run_all(quant_data, feed, threads)
        fouts.append({n: a[n] for n in outputs if n in a})
        qouts.append({n: b[n] for n in outputs if n in b})
        for name, ref in a.items():
            got = b.get(name)
            if got is None or got.shape != ref.shape:
                continue
            signal[name] = signal.get(name, 0.0) + float(np.sum(ref.astype(np.float64) ** 2))
            noise[name] = noise.get(name, 0.0) + float(np.sum((ref - got).astype(np.float64) ** 2))
    sqnr = {
        n: (math.inf if noise[n] == 0 else 10 * math.log10(signal[n] / noise[n]) if signal[n]
            else -math.inf)
        for n in signal
    }
    return Comparison(sqnr, fouts, qouts)


def anchors_output_errors(card: ModelCard, cmp: Comparison) -> dict[str, tuple[float, str]]:
    """Family ``anchors``: each output's error as the decoder reads it, on the anchors the float
    model scores at least ``EVAL_SCORE`` (none: over all), and a sentence saying so.
    Scores: the largest sigmoid difference; boxes: the mean regressor difference as a fraction
    of the input size."""
    from agent.detection.decoders.anchors import _score, _split

    if card.decode is None or not cmp.float_outputs:
        return {}
    names = list(cmp.float_outputs[0])
    box_name, score_name = _split_names(card, names, cmp.float_outputs[0])
    score_err, box_err = 0.0, []
    for fo, qo in zip(cmp.float_outputs, cmp.int8_outputs, strict=True):
        fb, fs = _split([fo[n] for n in names], card, names)
        qb, qs = _split([qo[n] for n in names], card, names)
        fp, qp = _score(fs, card.decode), _score(qs, card.decode)
        used = fp.max(axis=-1) >= EVAL_SCORE
        if not used.any():
            used = np.ones_like(used)
        score_err = max(score_err, float(np.abs(fp - qp)[used].max()))
        size = max(card.input.width, card.input.height)
        box_err.append(float(np.abs(fb - qb)[used].mean()) / size)
    box = float(np.mean(box_err))
    return {
        score_name: (
            score_err / MAX_SCORE_ERROR,
            f"scores off by up to {score_err:.3f} after the sigmoid (> {MAX_SCORE_ERROR}) on "
            f"the anchors the float model scores >= {EVAL_SCORE}",
        ),
        box_name: (
            box / MAX_BOX_ERROR,
            f"box regressors off by {box * 100:.2f}% of the input size on average "
            f"(> {MAX_BOX_ERROR * 100:.0f}%) on the anchors the float model scores >= "
            f"{EVAL_SCORE}",
        ),
    }


def _split_names(
    card: ModelCard, names: Sequence[str], outputs: dict[str, np.ndarray]
) -> tuple[str, str]:
    if card.outputs and {"boxes", "scores"} <= set(card.outputs):
        return card.outputs["boxes"], card.outputs["scores"]
    a, b = names
    return (a, b) if outputs[a].shape[-1] >= outputs[b].shape[-1] else (b, a)


@dataclass
class Sensitivity:
    """The ops to keep in float, and the SQNR of each output of the whole-graph INT8 model."""

    kept: list[KeptOp]
    output_sqnr: dict[str, float]


def find_sensitive(
    fm: FloatModel,
    qsvs: dict[str, Any],
    feeds: Sequence[dict[str, np.ndarray]],
    card: ModelCard,
    threads: int = 2,
) -> Sensitivity:
    """The ops to keep in float, each with its reason (see the module docstring)."""
    whole = quantize_graph(fm, qsvs, [])
    name = fm.input_names[0]
    picks = np.linspace(0, len(feeds) - 1, min(SENSITIVE_FRAMES, len(feeds))).round().astype(int)
    cmp = compare_tensors(
        fm.data, whole, [feeds[i][name] for i in picks], fm.output_names, threads
    )
    sqnr = cmp.sqnr
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
    if card.family == "anchors":
        for out_name, (ratio, why) in anchors_output_errors(card, cmp).items():
            if ratio > 1.0:
                for k in _head(g, names.index(out_name), producer, consumers):
                    kept.setdefault(k, f"head of {out_name}: {why}")
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


def _head(
    g: Any, out: int, producer: dict[int, int], consumers: dict[int, list[int]]
) -> list[int]:
    """The ops whose results reach graph output ``out`` and no other output: the output's own
    head (for an anchors detector, its 1x1 convolutions, reshapes and join)."""
    outputs = {int(i) for i in g.outputs}
    reach: dict[int, set[int]] = {}
    for k in reversed(range(len(g.operators))):  # operators are in execution order
        t = int(g.operators[k].outputs[0])
        r = {t} & outputs
        for j in consumers.get(t, []):
            r |= reach[j]
        reach[k] = r
    return [k for k, r in reach.items() if r == {out}]
