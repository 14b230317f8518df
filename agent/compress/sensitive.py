"""Which nodes of a detector must stay in float when the rest is quantized to INT8, and why.

Two checks, both automatic:

- **Range mixing** (any model, from calibration activations): a Concat quantizes all its inputs
  with one scale. When one input spans a far smaller range than another (YOLO's final Concat
  joins box coordinates in pixels, 0..640, with scores, 0..1) the small one is crushed to a few
  levels: every score becomes 0 and the model detects nothing. Such a Concat and every node
  after it stay in float.
- **Box decoding** (family ``yolo``): the nodes after the per-scale head outputs are joined
  (DFL softmax and its fixed Conv, the Sub/Add/Div/Mul making x, y, w, h, the Sigmoid of the
  scores, the final Concat), plus the Reshape/Concat nodes that join them. Their values are
  coordinates and probabilities whose quantization error moves boxes and shifts scores across
  the threshold, for little speed gain: they hold almost no arithmetic.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.compress.graph import LAYOUT_OPS, Graph

# A Concat input quantized at the Concat's scale with less signal-to-noise than this is crushed.
MIN_SQNR_DB = 20.0


@dataclass(frozen=True)
class KeptNode:
    """A node left in float, and the reason."""

    name: str
    op_type: str
    reason: str


def yolo_decode_tail(model: Any) -> list[KeptNode]:
    """The box-decoding tail of a YOLO export: from the Concat that joins the per-scale outputs
    (the earliest node every path to the output passes through with at most one Conv, DFL's,
    after it) to the output, plus the Reshape/Concat nodes feeding that join."""
    g = Graph(model.graph)
    if len(g.outputs) != 1 or g.outputs[0] not in g.producer:
        return []
    out = g.producer[g.outputs[0]]
    start = None
    for d in reversed(g.dominators_of(out)):  # nearest the output first
        after = g.descendants([d])
        if sum(g.has_weights(i) for i in after) > 1:
            break
        if g.nodes[d].op_type == "Concat" and len(g.predecessors(d)) >= 2:
            start = d  # a join of branches: the earliest one wins
    if start is None:
        return []
    tail = {start} | g.descendants([start])
    todo = [start]
    while todo:  # the layout-only nodes that gather the per-scale outputs into the join
        for prev in g.predecessors(todo.pop()):
            if prev not in tail and g.nodes[prev].op_type in LAYOUT_OPS:
                tail.add(prev)
                todo.append(prev)
    join = g.nodes[start].name
    return [
        KeptNode(
            g.nodes[i].name,
            g.nodes[i].op_type,
            f"yolo box decoding (joins and follows the per-scale outputs at {join})",
        )
        for i in sorted(tail)
    ]


def _sqnr_db(values: np.ndarray, lo: float, hi: float) -> float:
    """Signal-to-noise ratio of ``values`` quantized to 256 levels spanning ``lo..hi``."""
    step = (hi - lo) / 255 or 1.0
    q = np.clip(np.round((values - lo) / step), 0, 255) * step + lo
    noise = float(np.sum((values - q) ** 2))
    signal = float(np.sum(values**2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def range_mixing(model_path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> list[KeptNode]:
    """Concats (and all after them) whose inputs' ranges differ so much that one shared 8-bit
    scale crushes an input; measured on the float activations of ``feeds``."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    model = onnx.load(str(model_path))
    g = Graph(model.graph)
    if not any(n.op_type == "Concat" for n in g.nodes):
        return []
    with tempfile.TemporaryDirectory() as tmp:
        augmented = Path(tmp) / "concat_outputs.onnx"
        modify_model_output_intermediate_tensors(
            str(model_path), str(augmented), op_types_for_saving=["Concat"]
        )
        acts = collect_activations(str(augmented), FeedReader(feeds))
    flagged: dict[int, str] = {}
    for i, node in enumerate(g.nodes):
        if node.op_type != "Concat" or node.output[0] not in acts:
            continue
        out = np.concatenate([a.ravel() for a in acts[node.output[0]]])
        lo, hi = min(float(out.min()), 0.0), max(float(out.max()), 0.0)
        for name in node.input:
            if name not in acts:
                continue
            values = np.concatenate([a.ravel() for a in acts[name]])
            sqnr = _sqnr_db(values, lo, hi)
            if sqnr < MIN_SQNR_DB:
                flagged[i] = (
                    f"joins ranges too different for one 8-bit scale: input {name} "
                    f"[{values.min():.3g}, {values.max():.3g}] in output [{lo:.3g}, {hi:.3g}] "
                    f"keeps {sqnr:.0f} dB SQNR (< {MIN_SQNR_DB:.0f})"
                )
                break
    kept: dict[int, str] = dict(flagged)
    for i, reason in flagged.items():
        for j in g.descendants([i]):
            kept.setdefault(j, f"after {g.nodes[i].name}, which {reason.split(':')[0]}")
    return [KeptNode(g.nodes[i].name, g.nodes[i].op_type, kept[i]) for i in sorted(kept)]


def find_sensitive(
    model_path: Path, family: str, feeds: Sequence[dict[str, np.ndarray]]
) -> list[KeptNode]:
    """Every node to keep in float: range mixing, then the family's rule; first reason wins."""
    import onnx

    found: dict[str, KeptNode] = {k.name: k for k in range_mixing(model_path, feeds)}
    if family == "yolo":
        for k in yolo_decode_tail(onnx.load(str(model_path))):
            found.setdefault(k.name, k)
    order = {n.name: i for i, n in enumerate(onnx.load(str(model_path)).graph.node)}
    return sorted(found.values(), key=lambda k: order.get(k.name, -1))


class FeedReader:
    """The CalibrationDataReader protocol (get_next / rewind / iteration) over ready feeds, and
    the ranges (``set_range``, ``len``) onnxruntime's strided calibration reads in chunks."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._i = 0
        self._end = len(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= self._end:
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def rewind(self) -> None:
        self._i, self._end = 0, len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._i, self._end = start_index, min(end_index, len(self._feeds))

    def __iter__(self) -> FeedReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed
