"""Where an ONNX model can be cut in two, and the cutting: a head that runs on the camera device,
a tail that runs on a peer, and the tensors that cross between them.

Cut points are positions in a topological order of the graph's *activation* nodes (nodes that
depend on a graph input). The graph's own node order is used when it is topological (the ONNX
spec asks for it), so the cut ids of a model file never change. Cut ``cK`` puts the first ``K``
activation nodes in the head; ``input`` (K = 0, the head is empty: all remote) and ``output``
(K = all nodes, the tail is empty: all local) are the two ends. Everything that does not depend on
an input (initializers, ``Constant`` nodes and what is computed from them alone) never crosses:
each part gets its own copy of what it needs.

A cut carries every tensor produced before it and used after it (skip connections make several),
and is listed only when all of them have static shapes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.detection.detector import file_sha256
from agent.errors import SplitError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "Cut",
    "CutTensor",
    "PartitionedGraph",
    "find_cut",
    "list_cuts",
    "load_model",
    "partition",
    "split_model",
    "write_split",
]

# ONNX TensorProto element types -> numpy dtype names (the ones activations come in).
_ELEM_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
}
_ITEMSIZE = {
    "float32": 4,
    "uint8": 1,
    "int8": 1,
    "uint16": 2,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "bool": 1,
    "float16": 2,
    "float64": 8,
    "uint32": 4,
    "uint64": 8,
}

SPLIT_METADATA_KEY = "edge_agent.split"  # metadata_props key of head.onnx / tail.onnx


@dataclass(frozen=True)
class CutTensor:
    """One tensor that crosses a cut: name, static shape, numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Cut:
    """A place to cut the model: the head is the first ``index`` activation nodes.

    ``id`` is ``input`` (index 0, all remote), ``output`` (all local) or ``c<index>``; ``after``
    names the last head node. ``tensors`` are in the order the tail takes them as inputs (and the
    head gives them as outputs): by producing node, then output slot. ``bytes`` is their raw size.
    """

    id: str
    index: int
    after: str | None
    tensors: tuple[CutTensor, ...]
    bytes: int
    kind: Literal["remote", "split", "local"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cut": self.id,
            "index": self.index,
            "after": self.after,
            "kind": self.kind,
            "tensors": [t.to_dict() for t in self.tensors],
            "bytes": self.bytes,
        }


@dataclass
class PartitionedGraph:
    """A model prepared for cutting: shapes inferred, activation nodes in order, every cut."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]  # activation nodes, topological order
    inputs: list[str]  # graph inputs that are not initializers
    outputs: list[str]
    cuts: list[Cut]  # every cut with static crossing tensors, in order

    def cut(self, at: str) -> Cut:
        return find_cut(self.cuts, at)


def load_model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except Exception as exc:  # OSError, or protobuf's DecodeError (not in its public API)
        raise SplitError(f"{model}: cannot read it as an ONNX model: {exc}") from exc


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names an If/Loop/Scan body reads: implicit inputs of ``node``."""
    import onnx

    used: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs)
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        for g in graphs:
            defined = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                used |= {name for name in n.input if name and name not in defined}
                used |= _subgraph_inputs(n) - defined
                defined |= set(n.output)
    return used


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    names = [n for n in node.input if n]
    return names + sorted(_subgraph_inputs(node) - set(names))


def _topological(nodes: Sequence[onnx.NodeProto]) -> list[int]:
    """Positions of ``nodes`` in an order where each comes after its producers: the given order
    when it is already one (so cut ids stay those of the file), else Kahn's, stable by position."""
    import heapq

    produced: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.output:
            if name:
                produced[name] = i
    deps = [{produced[n] for n in _node_inputs(node) if n in produced} for node in nodes]
    if all(j < i for i, d in enumerate(deps) for j in d):
        return list(range(len(nodes)))
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise SplitError("the graph has a cycle; it cannot be cut")
    return order


def _fix_batch(model: onnx.ModelProto, inputs: Iterable[str]) -> None:
    """A symbolic first dimension of an input becomes 1: the agent runs one frame at a time."""
    wanted = set(inputs)
    for vi in model.graph.input:
        if vi.name in wanted and vi.type.tensor_type.shape.dim:
            dim = vi.type.tensor_type.shape.dim[0]
            if not dim.dim_value:
                dim.Clear()
                dim.dim_value = 1


def _value_types(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...] | None, str | None]]:
    types: dict[str, tuple[tuple[int, ...] | None, str | None]] = {}
    g = model.graph
    for vi in [*g.value_info, *g.input, *g.output]:
        tt = vi.type.tensor_type
        dtype = _ELEM_TYPES.get(tt.elem_type)
        shape: tuple[int, ...] | None = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            if all(d >= 0 for d in dims):  # unknown dims are -1
                shape = tuple(dims)
        types[vi.name] = (shape, dtype)
    return types


def partition(model: onnx.ModelProto | str | Path) -> PartitionedGraph:
    """Prepare ``model`` for cutting and find every cut with static crossing tensors."""
    import onnx

    source = load_model(model)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(source)
    g = prepared.graph
    initializers = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    inputs = [i.name for i in g.input if i.name not in initializers]
    outputs = [o.name for o in g.output]
    if not inputs:
        raise SplitError("the model has no inputs: nothing flows through it to cut")
    _fix_batch(prepared, inputs)
    order = _topological(g.node)
    if order != list(range(len(order))):
        # Shape inference and onnx's Extractor both read nodes in graph order.
        copies = [onnx.NodeProto.FromString(g.node[i].SerializeToString()) for i in order]
        del g.node[:]
        g.node.extend(copies)
    try:
        prepared = onnx.shape_inference.infer_shapes(prepared, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and plain RuntimeErrors
        raise SplitError(f"onnx shape inference failed: {exc}") from exc
    g = prepared.graph
    types = _value_types(prepared)

    live = set(inputs)  # tensors that depend on an input: activations
    nodes: list[onnx.NodeProto] = []
    for node in g.node:
        if any(name in live for name in _node_inputs(node)):
            nodes.append(node)
            live |= {name for name in node.output if name}
    n = len(nodes)
    if not nodes:
        raise SplitError("no node of the model depends on its inputs: nothing to cut")

    produced_at: dict[str, tuple[int, int]] = {name: (-1, i) for i, name in enumerate(inputs)}
    last_use: dict[str, int] = {}
    for k, node in enumerate(nodes):
        for slot, name in enumerate(node.output):
            if name:
                produced_at[name] = (k, slot)
        for name in _node_inputs(node):
            if name in live:
                last_use[name] = k
    for name in outputs:
        if name in live:
            last_use[name] = n  # a model output must reach the end of the tail

    # Tensor t crosses cut K (head = nodes[:K]) when produced before K and used at or after K.
    by_start: dict[int, list[str]] = {}
    for name in last_use:
        by_start.setdefault(produced_at[name][0] + 1, []).append(name)
    crossing: set[str] = set()
    cuts: list[Cut] = []
    for k in range(n + 1):
        crossing |= set(by_start.get(k, []))
        crossing = {t for t in crossing if last_use[t] >= k}
        if k == n:
            crossing = {t for t in outputs if t in live}
        names = sorted(crossing, key=lambda t: produced_at[t])
        tensors: list[CutTensor] = []
        for name in names:
            shape, dtype = types.get(name, (None, None))
            if shape is None or dtype is None:
                break
            tensors.append(CutTensor(name, shape, dtype))
        else:
            kind: Literal["remote", "split", "local"] = (
                "remote" if k == 0 else "local" if k == n else "split"
            )
            cut_id = "input" if k == 0 else "output" if k == n else f"c{k}"
            after = (nodes[k - 1].name or f"{nodes[k - 1].op_type}#{k - 1}") if k else None
            cuts.append(Cut(cut_id, k, after, tuple(tensors), sum(t.nbytes for t in tensors), kind))
            continue
        if k in (0, n):
            raise SplitError(
                f"the model's {'inputs' if k == 0 else 'outputs'} have no static shape after "
                "shape inference; the cut tensors must have one"
            )
    return PartitionedGraph(prepared, nodes, inputs, outputs, cuts)


def list_cuts(
    model: onnx.ModelProto | str | Path | PartitionedGraph, *, max_tensors: int | None = None
) -> list[Cut]:
    """Every cut of ``model`` whose crossing tensors all have static shapes, in topological order,
    from ``input`` (all remote) to ``output`` (all local). With ``max_tensors``, only the inner cuts
    that carry at most that many tensors (the two ends are always listed)."""
    graph = model if isinstance(model, PartitionedGraph) else partition(model)
    if max_tensors is None:
        return list(graph.cuts)
    return [c for c in graph.cuts if c.kind != "split" or len(c.tensors) <= max_tensors]


def find_cut(cuts: Sequence[Cut], at: str) -> Cut:
    """The cut with id ``at``, or the cut right after the node named ``at``."""
    for cut in cuts:
        if cut.id == at:
            return cut
    for cut in cuts:
        if cut.after == at and cut.kind == "split":
            return cut
    inner = [c.id for c in cuts if c.kind == "split"]
    shown = ", ".join(inner[:8]) + (", ..." if len(inner) > 8 else "")
    raise SplitError(
        f"no cut {at!r}: use a cut id from `edge-agent model plan-split` ({shown}) or the name of "
        "a node whose outputs all have static shapes"
    )


def split_model(
    model: onnx.ModelProto | str | Path | PartitionedGraph, cut: str | Cut
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(head, tail) of ``model`` cut at ``cut``: the head's outputs are ``cut.tensors`` in order,
    the tail's inputs the same names in the same order, the tail's outputs the model's outputs.
    Both pass ``onnx.checker``."""
    import onnx
    import onnx.utils

    graph = model if isinstance(model, PartitionedGraph) else partition(model)
    chosen = graph.cut(cut) if isinstance(cut, str) else graph.cut(cut.id)
    if chosen.kind != "split":
        where = "peer" if chosen.kind == "remote" else "camera device"
        raise SplitError(
            f"cut {chosen.id!r} runs the whole model on the {where}: there is nothing to split"
        )
    names = [t.name for t in chosen.tensors]
    extractor = onnx.utils.Extractor(graph.model)
    try:
        head = extractor.extract_model(graph.inputs, names)
        tail = extractor.extract_model(names, graph.outputs)
    except ValueError as exc:
        raise SplitError(f"cannot cut at {chosen.id!r}: {exc}") from exc
    # Extractor keeps every named input even when a part does not read it; that is what we
    # want for the tail (its inputs are exactly the cut), and the head needs all the model's.
    for part, role in ((head, "head"), (tail, "tail")):
        part.graph.name = f"{graph.model.graph.name or 'model'} {role} at {chosen.id}"
        part.producer_name = "edge-agent split"
        for prop in graph.model.metadata_props:
            part.metadata_props.add(key=prop.key, value=prop.value)
        meta = {"part": role, "cut": chosen.id, "tensors": [t.to_dict() for t in chosen.tensors]}
        part.metadata_props.add(key=SPLIT_METADATA_KEY, value=json.dumps(meta))
        try:
            onnx.checker.check_model(part)
        except onnx.checker.ValidationError as exc:
            raise SplitError(f"the {role} at {chosen.id!r} is not a valid model: {exc}") from exc
    if [o.name for o in head.graph.output] != names or [i.name for i in tail.graph.input] != names:
        raise SplitError(f"head and tail at {chosen.id!r} do not fit together")  # pragma: no cover
    return head, tail


def write_split(
    model_path: str | Path, cut: str, out_dir: str | Path, *, card: str | Path | None = None
) -> dict[str, Any]:
    """Write ``head.onnx``, ``tail.onnx``, ``split.json`` (how they fit) and, when the model has a
    card, ``tail.card.yaml`` (the model's card: the tail's outputs are the model's outputs, so its
    family, labels and thresholds decode them; its ``input`` still describes the frame the head
    took). Returns what ``split.json`` holds."""
    import onnx
    import yaml

    from agent.detection.card import card_path_for, load_card

    model_path = Path(model_path)
    graph = partition(model_path)
    chosen = graph.cut(cut)
    head, tail = split_model(graph, chosen)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        onnx.save(head, str(out / "head.onnx"))
        onnx.save(tail, str(out / "tail.onnx"))
    except OSError as exc:
        raise SplitError(f"{out}: cannot write the parts: {exc}") from exc
    card_file = Path(card) if card else card_path_for(model_path)
    if card and not card_file.is_file():
        raise SplitError(f"{card_file}: no such model card")
    model_card = load_card(card_file) if card_file.is_file() else None
    tensors = [t.to_dict() for t in chosen.tensors]
    info: dict[str, Any] = {
        "model": {"file": model_path.name, "sha256": file_sha256(model_path)},
        "cut": chosen.to_dict(),
        "head": {
            "file": "head.onnx",
            "sha256": file_sha256(out / "head.onnx"),
            "inputs": [_io(vi) for vi in head.graph.input],
            "outputs": tensors,
            "nodes": len(head.graph.node),
            "input": model_card.input.model_dump() if model_card else None,
        },
        "tail": {
            "file": "tail.onnx",
            "sha256": file_sha256(out / "tail.onnx"),
            "inputs": tensors,
            "outputs": [_io(vi) for vi in tail.graph.output],
            "nodes": len(tail.graph.node),
            "card": "tail.card.yaml" if model_card else None,
        },
    }
    if model_card is not None:
        tail_card = model_card.model_copy(
            update={
                "sha256": info["tail"]["sha256"],
                "notes": f"tail of {model_path.name} cut at {chosen.id} (after {chosen.after}); "
                f"its inputs are head.onnx's outputs, by name; see split.json",
            }
        )
        text = yaml.safe_dump(tail_card.model_dump(exclude_none=True), sort_keys=False)
        (out / "tail.card.yaml").write_text(text, encoding="utf-8")
    (out / "split.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _io(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    tt = vi.type.tensor_type
    return {
        "name": vi.name,
        "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim],
        "dtype": _ELEM_TYPES.get(tt.elem_type, str(tt.elem_type)),
    }
