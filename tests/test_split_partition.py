"""Cutting ONNX models in two: which tensors cross each cut, and head followed by tail gives the
whole model's outputs (and, on the real person detector, its detections), coded or not."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.detection import Detector, load_card
from agent.detection.types import Detection
from agent.errors import SplitError
from agent.runtimes import load_runtime
from agent.split.codec import Method, decode, encode
from agent.split.partition import (
    PartitionedGraph,
    find_cut,
    list_cuts,
    partition,
    split_model,
    write_split,
)
from tests.conftest import iou
from tests.test_real_models import video_frame

# ------------------------------------------------------------------------- small graphs


def _model(
    nodes: Sequence[onnx.NodeProto],
    outputs: Sequence[str],
    *,
    initializers: Sequence[TensorProto] = (),
    batch: int | str = 1,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 8, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=list(initializers),
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, producer_name="test"
    )


def skip_model(batch: int | str = 1) -> onnx.ModelProto:
    """x -> a=Relu -> b=Sigmoid(a) -> c=Mul(b, k) -> y=Add(a, c): ``a`` skips over b and c;
    ``k`` is a Constant node's output, read after any cut."""
    k = numpy_helper.from_array(np.full((1, 4, 1, 1), 0.5, np.float32))
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Constant", [], ["k"], name="const", value=k),
        helper.make_node("Sigmoid", ["a"], ["b"], name="sigmoid"),
        helper.make_node("Mul", ["b", "k"], ["c"], name="mul"),
        helper.make_node("Add", ["a", "c"], ["y"], name="add"),
    ]
    return _model(nodes, ["y"], batch=batch)


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(r) for r in session.run(None, feed)]


def test_cuts_list_every_tensor_crossing_in_topological_order() -> None:
    cuts = list_cuts(skip_model())
    got = [(c.id, c.after, [t.name for t in c.tensors], c.bytes) for c in cuts]
    size = 4 * 8 * 8 * 4
    assert got == [
        ("input", None, ["x"], size),
        ("c1", "relu", ["a"], size),
        ("c2", "sigmoid", ["a", "b"], 2 * size),  # the skip connection crosses too
        ("c3", "mul", ["a", "c"], 2 * size),
        ("output", "add", ["y"], size),
    ]
    assert [c.kind for c in cuts] == ["remote", "split", "split", "split", "local"]
    assert cuts[2].tensors[1].shape == (1, 4, 8, 8)
    assert cuts[2].tensors[1].dtype == "float32"
    assert [c.id for c in list_cuts(skip_model(), max_tensors=1)] == ["input", "c1", "output"]
    assert cuts[2].to_dict()["tensors"] == [
        {"name": "a", "shape": [1, 4, 8, 8], "dtype": "float32"},
        {"name": "b", "shape": [1, 4, 8, 8], "dtype": "float32"},
    ]


@pytest.mark.parametrize("cut", ["c1", "c2", "c3", "sigmoid"])
def test_head_then_tail_equals_the_model_and_constants_are_copied(cut: str) -> None:
    model = skip_model()
    head, tail = split_model(model, cut)
    chosen = find_cut(list_cuts(model), cut)
    names = [t.name for t in chosen.tensors]
    assert [o.name for o in head.graph.output] == names
    assert [i.name for i in tail.graph.input] == names
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    middle = _run(head, {"x": x})
    (y,) = _run(tail, dict(zip(names, middle, strict=True)))
    np.testing.assert_allclose(y, _run(model, {"x": x})[0], rtol=1e-6)
    # The Constant node is never a cut tensor: the part that reads it has its own copy.
    assert "k" not in names
    mul_in_head = chosen.index >= 3
    assert ("Constant" in [n.op_type for n in head.graph.node]) == mul_in_head
    assert ("Constant" in [n.op_type for n in tail.graph.node]) != mul_in_head
    meta = {p.key: p.value for p in tail.metadata_props}
    assert json.loads(meta["edge_agent.split"])["cut"] == chosen.id


def test_nodes_out_of_order_are_sorted_and_a_symbolic_batch_becomes_one() -> None:
    model = skip_model(batch="N")
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    cuts = list_cuts(model)
    assert [c.after for c in cuts] == [None, "relu", "sigmoid", "mul", "add"]
    assert cuts[0].tensors[0].shape == (1, 4, 8, 8)


def test_cuts_whose_tensors_have_no_static_shape_are_not_listed() -> None:
    # NonZero's output size depends on the data: no cut may carry it.
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("NonZero", ["a"], ["nz"], name="nonzero"),
        helper.make_node("ReduceSum", ["nz"], ["s"], name="sum", keepdims=0),
        helper.make_node("Cast", ["s"], ["sf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "sf"], ["y"], name="add"),
    ]
    model = _model(nodes, ["y"])
    ids = [c.id for c in list_cuts(model)]
    assert "c1" in ids
    assert "c2" not in ids  # carries nz, of unknown length
    with pytest.raises(SplitError, match="no cut 'c2'"):
        split_model(model, "c2")


def test_cutting_at_an_end_or_nowhere_is_refused() -> None:
    graph = partition(skip_model())
    with pytest.raises(SplitError, match="whole model on the peer"):
        split_model(graph, "input")
    with pytest.raises(SplitError, match="whole model on the camera"):
        split_model(graph, "output")
    with pytest.raises(SplitError, match="no cut 'c99'"):
        split_model(graph, "c99")
    with pytest.raises(SplitError, match="cannot read"):
        partition("/nonexistent/model.onnx")


# ------------------------------------------------------------------ the real person model

PERSON = "person-yolov8s.onnx"
# An early single-tensor cut (backbone), a neck cut carrying three tensors (skip connections), and
# one after the detection head's last convolution.
PERSON_CUTS = ["c24", "c120", "c216"]


@pytest.fixture(scope="module")
def person_graph(assets: Path) -> PartitionedGraph:
    return partition(assets / PERSON)


@pytest.fixture(scope="module")
def person(assets: Path) -> Detector:
    return Detector.load(assets / PERSON, threads=2, warmup=False)


@pytest.fixture(scope="module")
def frames(person: Detector) -> list[tuple[np.ndarray, object, list[np.ndarray]]]:
    """Two bikes frames with a person in each (one standing, one the model calls fallen): the input
    tensor, its letterbox, the full model's outputs."""
    out = []
    for index in (45, 210):
        tensor, transform = person.preprocess(video_frame("bikes.mp4", index))
        out.append((tensor, transform, person.infer(tensor)))
    return out


def _same_detections(a: list[Detection], b: list[Detection], min_iou: float, score: float) -> None:
    assert len(a) == len(b), (a, b)
    for d in a:
        match = max(b, key=lambda e: iou(d.box, e.box))
        assert match.label == d.label
        assert iou(d.box, match.box) >= min_iou
        assert abs(match.score - d.score) <= score


@pytest.mark.parametrize("cut", PERSON_CUTS)
def test_person_model_split_matches_the_whole_model(
    cut: str,
    person_graph: PartitionedGraph,
    person: Detector,
    frames: list[tuple[np.ndarray, object, list[np.ndarray]]],
    tmp_path: Path,
) -> None:
    chosen = person_graph.cut(cut)
    if cut == "c120":
        assert len(chosen.tensors) == 3
    head_model, tail_model = split_model(person_graph, chosen)
    onnx.save(head_model, str(tmp_path / "head.onnx"))
    onnx.save(tail_model, str(tmp_path / "tail.onnx"))
    head = load_runtime(tmp_path / "head.onnx", threads=2)
    tail = load_runtime(tmp_path / "tail.onnx", threads=2)
    assert [s.name for s in head.outputs] == [t.name for t in chosen.tensors]
    assert [s.name for s in tail.inputs] == [t.name for t in chosen.tensors]
    found = 0
    for tensor, transform, full in frames:
        middle = head.infer([tensor])
        assert sum(m.nbytes for m in middle) == chosen.bytes
        out = tail.infer(middle)
        np.testing.assert_allclose(out[0], full[0], rtol=1e-3, atol=2e-3)
        want = person.postprocess(full, transform)  # type: ignore[arg-type]
        found += len(want)
        _same_detections(person.postprocess(out, transform), want, 0.99, 1e-3)  # type: ignore[arg-type]
        coded: dict[Method, tuple[float, float]] = {"fp16": (0.99, 0.005), "int8": (0.95, 0.03)}
        for method, (min_iou, score) in coded.items():
            names = [t.name for t in chosen.tensors]
            payload = encode({"cut": cut}, dict(zip(names, middle, strict=True)), method)
            _, got = decode(payload)
            out = tail.infer([got[t.name] for t in chosen.tensors])
            _same_detections(person.postprocess(out, transform), want, min_iou, score)  # type: ignore[arg-type]
    assert found >= 2  # the frames have people in them: the comparison compared something


def test_write_split_writes_parts_that_fit_and_a_tail_card(
    person_graph: PartitionedGraph, assets: Path, tmp_path: Path
) -> None:
    info = write_split(assets / PERSON, "c216", tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "head.onnx",
        "tail.onnx",
        "split.json",
        "tail.card.yaml",
    }
    assert json.loads((tmp_path / "split.json").read_text()) == info
    assert info["head"]["outputs"] == info["tail"]["inputs"] == info["cut"]["tensors"]
    assert info["head"]["inputs"][0]["name"] == "images"
    assert info["tail"]["outputs"] == [
        {"name": "output0", "shape": [1, 6, 8400], "dtype": "float32"}
    ]
    card = load_card(tmp_path / "tail.card.yaml")
    full = load_card(assets / "person-yolov8s.card.yaml")
    assert card.labels == full.labels
    assert card.thresholds == full.thresholds
    assert card.family == "yolo"
    assert card.sha256 == info["tail"]["sha256"]
    assert info["head"]["input"]["width"] == 640
