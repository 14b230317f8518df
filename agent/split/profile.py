"""What each cut of a model costs on this device: head and tail compute time, and the bytes that
cross it, raw and coded (measured on real activations), with the time to code them.

Per-node times come from onnxruntime's profiler, run with basic graph optimizations so every
kernel keeps its ONNX node's name (the full optimizations fuse and rename nodes); they are then
scaled so they add up to the whole model's latency measured as the agent runs it (all
optimizations on). ``head_ms`` of a cut is the sum over its head's nodes, ``tail_ms`` the rest.
A profile is JSON: a peer can publish its own and the head can plan with it.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import SplitError
from agent.runtimes.onnx import open_session
from agent.split.codec import METHODS, Method, encode
from agent.split.partition import PartitionedGraph, partition

log = logging.getLogger(__name__)

__all__ = ["CutProfile", "Profile", "profile_model", "sample_input"]

PROFILE_VERSION = 1
_HEADER_BYTES = 160  # magic, lengths and the JSON header of a payload: names, shapes, scales


@dataclass(frozen=True)
class CutProfile:
    """One cut measured: ``head_ms``/``tail_ms`` on the profiled device; per codec, the payload
    size and the time to encode (head side) and decode (tail side) it."""

    cut: str
    index: int
    tensors: list[dict[str, Any]]
    bytes: int
    head_ms: float
    tail_ms: float
    coded_bytes: dict[str, int] = field(default_factory=dict)
    encode_ms: dict[str, float] = field(default_factory=dict)
    decode_ms: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "remote" if self.cut == "input" else "local" if self.cut == "output" else "split"


@dataclass(frozen=True)
class Profile:
    """Every cut of one model measured on one device (``device`` says which)."""

    model: str
    device: str
    threads: int
    runs: int
    total_ms: float
    cuts: list[CutProfile]
    version: int = PROFILE_VERSION

    def cut(self, cut_id: str) -> CutProfile:
        for c in self.cuts:
            if c.cut == cut_id:
                return c
        raise SplitError(f"the profile of {self.model} has no cut {cut_id!r}")

    def head_ms(self, cut_id: str) -> float:
        return self.cut(cut_id).head_ms

    def tail_ms(self, cut_id: str) -> float:
        return self.cut(cut_id).tail_ms

    def scaled(self, factor: float, device: str | None = None) -> Profile:
        """The same model on a device ``factor`` times slower (compute and coding times)."""
        cuts = [
            replace(
                c,
                head_ms=c.head_ms * factor,
                tail_ms=c.tail_ms * factor,
                encode_ms={k: v * factor for k, v in c.encode_ms.items()},
                decode_ms={k: v * factor for k, v in c.decode_ms.items()},
            )
            for c in self.cuts
        ]
        return replace(
            self,
            total_ms=self.total_ms * factor,
            cuts=cuts,
            device=device or f"{self.device} x{factor:g} slower",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        try:
            if data.get("version") != PROFILE_VERSION:
                raise SplitError(
                    f"profile version {data.get('version')!r} is not {PROFILE_VERSION}"
                )
            cuts = [CutProfile(**c) for c in data["cuts"]]
            fields = {k: data[k] for k in ("model", "device", "threads", "runs", "total_ms")}
            return cls(**fields, cuts=cuts)
        except (KeyError, TypeError) as exc:
            raise SplitError(f"not a split profile: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Profile:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SplitError(f"not a split profile: {exc}") from exc
        if not isinstance(data, dict):
            raise SplitError("not a split profile: not a JSON object")
        return cls.from_dict(data)


def ort_session(
    model: bytes | str, threads: int, *, basic: bool = False, profile_dir: str | None = None
) -> Any:
    """The agent's CPU session (``agent.runtimes.onnx.open_session``), errors as SplitError."""
    try:
        return open_session(
            model,
            threads,
            basic=basic,
            profile_prefix=str(Path(profile_dir) / "ort") if profile_dir is not None else None,
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise SplitError(f"onnxruntime cannot load the model: {exc}") from exc


def _node_times(trace: list[dict[str, Any]], skip_runs: int = 1) -> dict[str, float]:
    """Median kernel time per node name (ms) over the runs after the first ``skip_runs``."""
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in trace
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[skip_runs:]
    per_node: dict[str, list[float]] = {}
    for e in trace:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        if not any(start <= e["ts"] <= end for start, end in runs):
            continue
        per_node.setdefault(name[: -len("_kernel_time")], []).append(e["dur"] / 1e3)
    # A node can run more than once per run only inside a loop: add them up per run.
    n = max(len(runs), 1)
    return {k: sum(v) / n if len(v) > n else statistics.median(v) for k, v in per_node.items()}


def sample_input(model_path: str | Path, graph: PartitionedGraph | None = None) -> np.ndarray:
    """A realistic input for the model: a frame of the sample video through the model card's
    preprocessing when there is a card and the video, else uniform noise in [0, 1)."""
    from agent.detection.card import card_path_for, load_card
    from agent.detection.preprocess import Preprocessor

    graph = graph or partition(model_path)
    first = graph.cuts[0].tensors[0]
    card_file = card_path_for(model_path)
    from agent.config import DEFAULT_VIDEO

    video = DEFAULT_VIDEO
    if card_file.is_file() and video.is_file():
        import cv2

        cap = cv2.VideoCapture(str(video))
        cap.set(cv2.CAP_PROP_POS_FRAMES, 125)
        ok, frame = cap.read()
        cap.release()
        if ok:
            tensor, _ = Preprocessor(load_card(card_file).input)(frame)
            if tensor.shape == first.shape:
                return tensor.astype(first.dtype)
    return np.random.default_rng(0).random(first.shape).astype(first.dtype)


_CODING_REPEATS = 3


def profile_model(
    model: str | Path,
    runs: int = 3,
    threads: int = 2,
    *,
    methods: Sequence[Method] = METHODS,
    sample: np.ndarray | None = None,
    max_tensors: int | None = None,
    level: int = 3,
    graph: PartitionedGraph | None = None,
) -> Profile:
    """Measure every cut of ``model`` (those with at most ``max_tensors`` tensors, and the two
    ends) on this device, ``runs`` timed runs after one warm-up, on ``threads`` threads."""
    model_path = Path(model)
    graph = graph or partition(model_path)
    cuts = [
        c
        for c in graph.cuts
        if max_tensors is None or c.kind != "split" or len(c.tensors) <= max_tensors
    ]
    x = sample if sample is not None else sample_input(model_path, graph)
    input_name = graph.cuts[0].tensors[0].name
    if len(graph.inputs) != 1:
        raise SplitError(f"{model_path}: profiling takes models with one input")
    runs = max(runs, 1)
    if not methods:
        raise SplitError("profile_model needs at least one codec in methods")

    # 1. The whole model as the agent runs it: the latency to match.
    fast = ort_session(str(model_path), threads)
    fast.run(None, {input_name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fast.run(None, {input_name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    total_ms = statistics.median(times)
    del fast

    # 2. Per-node shares from the profiler, and every crossing tensor's value on the sample.
    crossing = list(dict.fromkeys(t.name for c in cuts for t in c.tensors))
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(graph.model)
    known = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    value_info = {vi.name: vi for vi in probe.graph.value_info}
    for name in crossing:
        if name not in known:
            probe.graph.output.append(value_info[name])
    with tempfile.TemporaryDirectory(prefix="edge-agent-profile-") as tmp:
        session = ort_session(probe.SerializeToString(), threads, basic=True, profile_dir=tmp)
        names = [o.name for o in session.get_outputs()]
        values: dict[str, np.ndarray] = {}
        for _ in range(runs + 1):
            values = dict(zip(names, session.run(None, {input_name: x}), strict=True))
        values[input_name] = x
        trace_file = session.end_profiling()
        with open(trace_file, encoding="utf-8") as fh:
            node_ms = _node_times(json.load(fh))
        del session
    per_node = [node_ms.get(n.name, 0.0) for n in graph.nodes]
    measured = sum(per_node)
    if measured <= 0:
        raise SplitError(f"{model_path}: the profiler recorded no node times")
    scale = total_ms / measured
    cumulative = np.concatenate([[0.0], np.cumsum(per_node)]) * scale

    # 3. Coded size and coding time of each crossing tensor, per method.
    coded: dict[tuple[str, str], tuple[int, float, float]] = {}
    from agent.split.codec import decode

    decode(encode({}, {"warm-up": np.zeros(16, np.float32)}, methods[0], level))  # imports
    for name in crossing:
        one = {name: np.asarray(values[name])}
        for method in methods:
            # The median of three codings: one timing alone can catch a preemption or a garbage
            # collection and make a cut look tens of milliseconds dearer than it is.
            enc_ms, dec_ms = [], []
            for _ in range(_CODING_REPEATS):
                t0 = time.perf_counter()
                payload = encode({}, one, method, level)
                t1 = time.perf_counter()
                decode(payload)
                t2 = time.perf_counter()
                enc_ms.append((t1 - t0) * 1e3)
                dec_ms.append((t2 - t1) * 1e3)
            body = len(payload) - 9 - int.from_bytes(payload[5:9], "little")
            coded[name, method] = (body, statistics.median(enc_ms), statistics.median(dec_ms))

    profiled = []
    for c in cuts:
        head = float(cumulative[c.index])
        entry = CutProfile(
            cut=c.id,
            index=c.index,
            tensors=[t.to_dict() for t in c.tensors],
            bytes=c.bytes,
            head_ms=round(head, 3),
            tail_ms=round(max(total_ms - head, 0.0), 3),
            coded_bytes={
                m: _HEADER_BYTES + sum(coded[t.name, m][0] for t in c.tensors) for m in methods
            },
            encode_ms={m: round(sum(coded[t.name, m][1] for t in c.tensors), 3) for m in methods},
            decode_ms={m: round(sum(coded[t.name, m][2] for t in c.tensors), 3) for m in methods},
        )
        profiled.append(entry)
    return Profile(
        model=model_path.name,
        device=f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        threads=threads,
        runs=runs,
        total_ms=round(total_ms, 3),
        cuts=profiled,
    )
