"""Which ops of a TFLite detector stay in float when the rest is quantized to INT8, found by
comparing the whole-graph INT8 model's tensors with the float model's on calibration frames;
and the anchors family's score logits, whose calibrated range is set (``clip_score_ranges``).

Candidates, from two checks:

- **Decoded outputs** (family ``anchors``): the score output as the decoder reads it (sigmoid)
  and the box regressors, on the anchors the float model scores at least 0.01 (those a
  detection or an evaluation can use). An output that strays more than ``MAX_SCORE_ERROR`` /
  ``MAX_BOX_ERROR`` makes its head a candidate: the ops that lead to that output alone (the
  head convolutions, their reshapes, the join).
- **Per-op loss** (outputs not judged decoded): SQNR of every op's output over the frames;
  where an output keeps less than ``MIN_OUTPUT_SQNR_DB``, the walk goes back from it over the
  ops whose SQNR is below that; each op that loses ``MAX_OP_LOSS_DB`` or more against its worst
  activation input (one 8-bit scale cannot hold its range), with every op after it, is a
  candidate.

Each candidate is then quantized with those ops in float and kept only if that at least halves
the output's error (or brings it under its limit): on MediaPipe's detectors the error left once
the score range is set comes from the backbone's INT8 features, which no head in float mends, so
they stay full-integer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.compress.evaluate import EVAL_SCORE
from agent.compress.tflite_aeq import KeptOp, quantize_graph
from agent.compress.tflite_graph import FloatModel, op_name, read_model, tensor_name
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
    notes: list[str]  # each candidate tried: the error before and with it in float, kept or not


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

    # Candidates: (output, ops to keep in float, why); each is tried and kept only if it helps.
    candidates: list[tuple[str, dict[int, str]]] = []
    outputs = {names[int(i)]: db(int(i)) for i in g.outputs}
    errors = anchors_output_errors(card, cmp) if card.family == "anchors" else {}
    for out in (int(i) for i in g.outputs):
        # outputs judged decoded need no SQNR (a score output's background, set to -16 for
        # INT8, is -300 in float: hardly any SQNR, no harm)
        if db(out) >= MIN_OUTPUT_SQNR_DB or names[out] in errors:
            continue
        flagged: dict[int, str] = {}
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
                flagged[k] = (
                    f"loses {lost:.1f} dB in INT8 (its output {mine:.1f} dB SQNR against "
                    f"{mine + lost:.1f} for its inputs; {names[out]} keeps {db(out):.1f} dB "
                    f"< {MIN_OUTPUT_SQNR_DB:.0f})"
                )
            todo.extend(producer[int(i)] for i in op.inputs if int(i) in producer)
        if flagged:
            candidates.append((names[out], _with_followers(g, flagged, names, consumers)))
    for out_name, (ratio, why) in errors.items():
        if ratio > 1.0:
            head = _head(g, names.index(out_name), producer, consumers)
            candidates.append((out_name, dict.fromkeys(head, f"head of {out_name}: {why}")))
    kept: dict[int, str] = {}
    notes: list[str] = []
    x = [feeds[i][name] for i in picks]
    for out_name, ops in candidates:
        before = _badness(out_name, card, cmp, errors)
        trial = quantize_graph(fm, qsvs, [names[g.operators[k].outputs[0]] for k in ops])
        after = _badness(out_name, card, compare_tensors(fm.data, trial, x, fm.output_names,
                                                         threads), errors)  # fmt: skip
        helps = after <= max(1.0, before / 2)
        notes.append(
            f"{out_name}: {len(ops)} op(s) in float ({next(iter(ops.values())).split(' (')[0]}): "
            f"{before:.2f} -> {after:.2f} of the limit, "
            + ("kept" if helps else "not kept (the error comes from before them)")
        )
        if helps:
            for k, why in ops.items():
                kept.setdefault(k, why)
    return Sensitivity(
        [
            KeptOp(names[g.operators[k].outputs[0]], op_name(model, g.operators[k]), kept[k])
            for k in sorted(kept)
        ],
        outputs,
        notes,
    )


def _with_followers(
    g: Any, ops: dict[int, str], names: list[str], consumers: dict[int, list[int]]
) -> dict[int, str]:
    """``ops`` and every op after them on the way to an output (their noise only passes on)."""
    out = dict(ops)
    for k in sorted(ops):
        stack = [k]
        while stack:
            for j in consumers.get(int(g.operators[stack.pop()].outputs[0]), []):
                if j not in out:
                    out[j] = f"after {names[g.operators[k].outputs[0]]}, kept in float"
                    stack.append(j)
    return out


def _badness(
    output: str, card: ModelCard, cmp: Comparison, errors: dict[str, tuple[float, str]]
) -> float:
    """How far ``output`` is off, as a multiple of its limit (1.0: at the limit): the anchors
    family's decoded error, else the noise amplitude against MIN_OUTPUT_SQNR_DB's."""
    if output in errors:
        found = anchors_output_errors(card, cmp)
        return found[output][0]
    sqnr = cmp.sqnr.get(output, math.inf)
    return float(10 ** ((MIN_OUTPUT_SQNR_DB - sqnr) / 20))


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


# Ops that move or join values without computing new ones: a logit stays a logit through them.
LAYOUT_OPS = ("RESHAPE", "CONCATENATION", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "TRANSPOSE",
              "SQUEEZE", "EXPAND_DIMS")  # fmt: skip
# Score logits are clipped to this range for INT8: sigmoid(-16) = 1e-7, sigmoid(16) = 1 - 1e-7.
LOGIT_LIMIT = 16.0


def clip_score_ranges(card: ModelCard, fm: FloatModel, qsvs: dict[str, Any]) -> list[str]:
    """Family ``anchors`` with sigmoid scores: the range of the score logits (the score output and
    the tensors behind it up to the ops that compute them) set to +-LOGIT_LIMIT, whatever the
    calibration saw. MediaPipe's background logits reach -350, which one 8-bit scale over
    -350..3 steps by 1.4: every score near the threshold became 0.5 or 0.8. And positives are
    rare in calibration frames: a branch whose largest logit there was 0.14 capped a held-out
    face's score at 0.53. At +-16 the step is 0.125 logit (scores within 0.016) and a logit
    beyond saturates at a score of 1e-7 or 1 - 1e-7. Returns what was set, in words."""
    if card.family != "anchors" or card.decode is None or not card.decode.sigmoid_score:
        return []
    model = read_model(fm.data)
    g = model.subgraphs[0]
    names = [tensor_name(t) for t in g.tensors]
    outputs = {n: int(i) for n, i in zip(fm.output_names, g.outputs, strict=True)}
    if len(outputs) != 2:
        return []
    ranges = {n: (float(np.min(qsvs[n]["min"])), float(np.max(qsvs[n]["max"]))) for n in outputs}
    if card.outputs and "scores" in card.outputs:
        score = card.outputs["scores"]
    else:  # as the decoder tells them apart: the scores have the fewer values per anchor
        a, b = fm.output_names
        shape = {n: tuple(g.tensors[i].shape) for n, i in outputs.items()}
        score = b if shape[a][-1] >= shape[b][-1] else a
    if score not in outputs:
        return []
    producer = {int(op.outputs[0]): op for op in g.operators}
    todo, logits = [outputs[score]], set()
    while todo:  # back through layout ops to the ops that compute the logits
        t = todo.pop()
        if t in logits:
            continue
        logits.add(t)
        op = producer.get(t)
        if op is not None and op_name(model, op) in LAYOUT_OPS:
            todo.extend(int(i) for i in op.inputs if int(i) in producer)
    lo, hi = ranges[score]
    for t in logits:
        q = qsvs.get(names[t])
        if q is None:
            continue
        dims = np.asarray(q["min"]).shape
        q["min"] = np.full(dims, -LOGIT_LIMIT, np.float32)
        q["max"] = np.full(dims, LOGIT_LIMIT, np.float32)
    return [
        f"score logits ({score} and {len(logits) - 1} tensor(s) behind it) calibrated "
        f"{lo:.1f}..{hi:.1f}, set to +-{LOGIT_LIMIT:.0f} (sigmoid 1e-7 .. 1 - 1e-7)"
    ]
