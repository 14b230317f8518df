"""Split inference measured against the planner: end-to-end latency at candidate cuts under
simulated links, in one process, compared with what ``plan.predict`` said.

One machine plays both devices. The head is made ``head_slowdown`` times slower than this machine
by sleeping ``(head_slowdown - 1)`` times its measured compute (and encoding) time after each;
a Raspberry Pi 4 runs such models roughly 4-8x slower than a desktop x86 core. The link is a token
bucket with no burst credit (each payload waits bytes / rate) plus a sleep of one round trip. The
peer is this machine at full speed, so the planner is given ``peer_speedup = head_slowdown``.
A frame: head session -> encode -> link -> decode -> tail session.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.split.codec import Method, decode, encode
from agent.split.link import TokenBucket
from agent.split.partition import Cut, PartitionedGraph, partition, split_model
from agent.split.plan import PlanRow, best, predict
from agent.split.profile import Profile, ort_session, profile_model, sample_input

__all__ = ["BenchResult", "Trial", "bench_split", "candidate_cuts", "render_markdown"]


@dataclass(frozen=True)
class Trial:
    """One cut under one link: predicted and measured end-to-end milliseconds."""

    bandwidth_mbps: float
    cut: str
    coded_bytes: int
    predicted_ms: float
    measured_ms: float


@dataclass(frozen=True)
class BenchResult:
    model: str
    head_slowdown: float
    rtt_ms: float
    codec: str
    frames: int
    trials: list[Trial]

    def per_bandwidth(self) -> dict[float, dict[str, Any]]:
        """Per link: the planner's pick, the fastest cut measured, and how far apart they are."""
        out: dict[float, dict[str, Any]] = {}
        for bw in dict.fromkeys(t.bandwidth_mbps for t in self.trials):
            trials = [t for t in self.trials if t.bandwidth_mbps == bw]
            planned = min(trials, key=lambda t: t.predicted_ms)
            fastest = min(trials, key=lambda t: t.measured_ms)
            out[bw] = {
                "planned_cut": planned.cut,
                "planned_measured_ms": round(planned.measured_ms, 1),
                "best_cut": fastest.cut,
                "best_measured_ms": round(fastest.measured_ms, 1),
                "gap": round(planned.measured_ms / fastest.measured_ms - 1, 4),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = {str(k): v for k, v in self.per_bandwidth().items()}
        return d


def candidate_cuts(rows: Sequence[PlanRow], count: int = 12) -> list[str]:
    """The cuts worth measuring: both ends, every cut no other cut beats on both head time and
    bytes sent (only those can be fastest for some link when the peer is at least as fast), then
    evenly spread others, ``count`` in all (more if the frontier alone is larger)."""
    frontier = []
    for r in rows:
        dominated = any(
            o.head_ms <= r.head_ms
            and o.coded_bytes <= r.coded_bytes
            and (o.head_ms, o.coded_bytes) != (r.head_ms, r.coded_bytes)
            for o in rows
        )
        if not dominated or r.kind != "split":
            frontier.append(r.cut)
    rest = [r.cut for r in rows if r.cut not in frontier]
    extra = max(count - len(frontier), 0)
    if extra and rest:
        step = len(rest) / extra
        frontier += [rest[int(i * step)] for i in range(min(extra, len(rest)))]
    order = {r.cut: i for i, r in enumerate(rows)}
    return sorted(set(frontier), key=order.__getitem__)


def _slow(seconds: float, factor: float) -> None:
    if factor > 1:
        time.sleep(seconds * (factor - 1))


def _frame(
    cut: Cut,
    head: Any,
    tail: Any,
    x: np.ndarray,
    codec: Method,
    bucket: TokenBucket,
    head_slowdown: float,
    rtt_ms: float,
) -> tuple[float, int]:
    """One frame end to end: (seconds, payload bytes)."""
    names = [t.name for t in cut.tensors]
    feed = {head.get_inputs()[0].name: x}
    t0 = time.perf_counter()
    if cut.kind == "local":
        head.run(None, feed)
        _slow(time.perf_counter() - t0, head_slowdown)
        return time.perf_counter() - t0, 0
    middle = [x] if cut.kind == "remote" else head.run(None, feed)
    payload = encode({"cut": cut.id}, dict(zip(names, middle, strict=True)), codec)
    _slow(time.perf_counter() - t0, head_slowdown)  # head compute and encoding, on the head
    bucket.consume(len(payload))
    time.sleep(rtt_ms / 1e3)
    _, got = decode(payload)
    tail.run(None, {n: got[n] for n in names})
    return time.perf_counter() - t0, len(payload)


def bench_split(
    model: str | Path,
    bandwidths: Sequence[float] = (1, 5, 20, 100),
    *,
    head_slowdown: float = 4.0,
    rtt_ms: float = 2.0,
    codec: Method = "int8",
    frames: int = 2,
    cuts: int = 12,
    max_tensors: int | None = 1,
    threads: int = 2,
    profile: Profile | None = None,
    graph: PartitionedGraph | None = None,
    progress: Any = None,
) -> tuple[BenchResult, Profile]:
    """Measure each candidate cut under each bandwidth; returns the result and the profile used."""
    model_path = Path(model)
    graph = graph or partition(model_path)
    profile = profile or profile_model(
        model_path, runs=3, threads=threads, methods=[codec], graph=graph, max_tensors=max_tensors
    )
    head_profile = profile.scaled(head_slowdown)
    rows = {bw: predict(head_profile, bw, rtt_ms, head_slowdown, codec) for bw in bandwidths}
    picks = {best(r).cut for r in rows.values()}  # always measured, whatever the frontier says
    wanted = picks | set(candidate_cuts(rows[bandwidths[0]], count=cuts))
    chosen = [r.cut for r in rows[bandwidths[0]] if r.cut in wanted]
    predicted = {bw: {r.cut: r for r in bw_rows} for bw, bw_rows in rows.items()}
    x = sample_input(model_path, graph)
    input_name = graph.inputs[0]
    trials: list[Trial] = []
    for cut_id in chosen:
        cut = graph.cut(cut_id)
        if cut.kind == "split":
            head_model, tail_model = split_model(graph, cut)
            head = ort_session(head_model.SerializeToString(), threads)
            tail = ort_session(tail_model.SerializeToString(), threads)
        else:
            head = tail = ort_session(str(model_path), threads)
        names = [t.name for t in cut.tensors]
        middle = head.run(None, {input_name: x})  # warm-up
        if cut.kind == "split":
            tail.run(None, dict(zip(names, middle, strict=True)))

        for bw in bandwidths:
            bucket = TokenBucket(bw, burst_bytes=0)
            samples = [
                _frame(cut, head, tail, x, codec, bucket, head_slowdown, rtt_ms)
                for _ in range(frames)
            ]
            measured = statistics.median(s[0] for s in samples) * 1e3
            row = predicted[bw][cut_id]
            trials.append(
                Trial(bw, cut_id, samples[-1][1], round(row.total_ms, 1), round(measured, 1))
            )
            if progress is not None:
                progress(trials[-1])
        del head, tail
    result = BenchResult(model_path.name, head_slowdown, rtt_ms, codec, frames, trials)
    return result, profile


def render_markdown(result: BenchResult) -> str:
    """The trials as a markdown table (cuts down, bandwidths across: predicted / measured ms),
    then the pick per bandwidth."""
    bws = list(dict.fromkeys(t.bandwidth_mbps for t in result.trials))
    cuts = list(dict.fromkeys(t.cut for t in result.trials))
    cell = {(t.cut, t.bandwidth_mbps): t for t in result.trials}
    summary = result.per_bandwidth()
    lines = [
        "| cut | coded KB | "
        + " | ".join(f"{bw:g} Mbit/s: predicted / measured ms" for bw in bws)
        + " |",
        "|---|---:|" + "---:|" * len(bws),
    ]
    for c in cuts:
        coded = cell[c, bws[0]].coded_bytes / 1e3
        values = []
        for bw in bws:
            t = cell[c, bw]
            mark = " **best**" if summary[bw]["best_cut"] == c else ""
            mark += " (planned)" if summary[bw]["planned_cut"] == c else ""
            values.append(f"{t.predicted_ms:.0f} / {t.measured_ms:.0f}{mark}")
        lines.append(f"| {c} | {coded:.1f} | " + " | ".join(values) + " |")
    lines.append("")
    lines.append("| link | planner's cut (measured) | fastest measured cut | gap |")
    lines.append("|---|---|---|---:|")
    for bw, s in summary.items():
        lines.append(
            f"| {bw:g} Mbit/s | {s['planned_cut']} ({s['planned_measured_ms']:.0f} ms) | "
            f"{s['best_cut']} ({s['best_measured_ms']:.0f} ms) | {s['gap'] * 100:.1f}% |"
        )
    return "\n".join(lines)
