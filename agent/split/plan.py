"""Which cut is fastest for a link: Neurosurgeon's rule (Kang et al., ASPLOS 2017) on a profile.

For each cut, end-to-end latency = head time here + encoding + transfer + decoding and tail time
on the peer, where transfer = coded bytes / bandwidth + round trip, and the peer's times are this
device's divided by the peer's speed-up (or the peer's own published profile). The all-local row
sends nothing (detections are published from here either way); the all-remote row sends the input
tensor. Pure functions: the runtime calls them again when the link or the peer changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.errors import SplitError
from agent.split.codec import Method
from agent.split.profile import Profile

__all__ = ["PlanRow", "best", "keep_or_switch", "predict", "render_table", "should_replan"]


@dataclass(frozen=True)
class PlanRow:
    """The predicted cost of one cut, in milliseconds; ``coded_bytes`` is what goes on the wire."""

    cut: str
    kind: str  # remote (all on the peer), split, local (all here)
    tensors: list[dict[str, Any]]
    bytes: int
    coded_bytes: int
    head_ms: float
    encode_ms: float
    transfer_ms: float
    decode_ms: float
    tail_ms: float
    total_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _link_ms(nbytes: int, bandwidth_mbps: float, rtt_ms: float) -> float:
    return nbytes * 8 / (bandwidth_mbps * 1e3) + rtt_ms  # bits / (bits per ms) + round trip


def predict(
    profile: Profile,
    bandwidth_mbps: float,
    rtt_ms: float = 0.0,
    peer_speedup: float = 1.0,
    codec: Method = "int8",
    *,
    peer_profile: Profile | None = None,
    max_tensors: int | None = None,
) -> list[PlanRow]:
    """Predicted latency of every cut of ``profile`` (this device is the head), in cut order.

    ``peer_speedup``: how many times faster the peer runs the model than this device (ignored for
    the tail when ``peer_profile``, the peer's own measurements of the same model, is given)."""
    if bandwidth_mbps <= 0:
        raise SplitError(f"bandwidth must be > 0 Mbit/s, not {bandwidth_mbps}")
    if peer_speedup <= 0:
        raise SplitError(f"peer speed-up must be > 0, not {peer_speedup}")
    if rtt_ms < 0:
        raise SplitError(f"round trip must be >= 0 ms, not {rtt_ms}")
    rows = []
    for c in profile.cuts:
        if max_tensors is not None and c.kind == "split" and len(c.tensors) > max_tensors:
            continue
        if c.kind == "local":
            rows.append(
                PlanRow(
                    c.cut, c.kind, c.tensors, c.bytes, 0, c.head_ms, 0.0, 0.0, 0.0, 0.0, c.head_ms
                )
            )
            continue
        if codec not in c.coded_bytes:
            raise SplitError(f"the profile has no {codec} sizes (it has {sorted(c.coded_bytes)})")
        coded = c.coded_bytes[codec]
        if peer_profile is not None:
            peer = peer_profile.cut(c.cut)
            tail, decode = peer.tail_ms, peer.decode_ms.get(codec, 0.0)
        else:
            tail, decode = c.tail_ms / peer_speedup, c.decode_ms.get(codec, 0.0) / peer_speedup
        encode = c.encode_ms.get(codec, 0.0)
        transfer = _link_ms(coded, bandwidth_mbps, rtt_ms)
        total = c.head_ms + encode + transfer + decode + tail
        rows.append(
            PlanRow(
                c.cut,
                c.kind,
                c.tensors,
                c.bytes,
                coded,
                c.head_ms,
                encode,
                transfer,
                decode,
                tail,
                total,
            )
        )
    return rows


def best(rows: Sequence[PlanRow]) -> PlanRow:
    """The fastest row; on a tie the one that sends less (all local sends nothing)."""
    if not rows:
        raise SplitError("no cut to choose from")
    return min(
        rows, key=lambda r: (round(r.total_ms, 6), r.coded_bytes if r.kind != "local" else -1)
    )


def keep_or_switch(rows: Sequence[PlanRow], current: str, margin: float = 0.2) -> PlanRow:
    """The best row, unless the ``current`` cut is predicted within ``margin`` (a fraction) of it:
    then the current one, so noise in the measurements does not make the cut flap."""
    top = best(rows)
    for row in rows:
        if row.cut == current:
            return row if row.total_ms <= top.total_ms * (1 + margin) else top
    return top


def _drifted(planned: float, measured: float, margin: float) -> bool:
    if planned <= 0:
        return measured > 0
    return abs(measured - planned) / planned > margin


def should_replan(
    planned_bandwidth_mbps: float,
    planned_peer_speedup: float,
    bandwidth_mbps: float,
    peer_speedup: float,
    margin: float = 0.2,
) -> bool:
    """True when the measured bandwidth or peer speed-up moved more than ``margin`` (a fraction)
    away from what the current plan assumed."""
    return _drifted(planned_bandwidth_mbps, bandwidth_mbps, margin) or _drifted(
        planned_peer_speedup, peer_speedup, margin
    )


def render_table(rows: Sequence[PlanRow], chosen: str | None = None) -> str:
    """A plain-text table of ``rows``, the ``chosen`` cut marked with ``*``."""
    header = (
        f"{'cut':<8} {'n':>2} {'raw KB':>8} {'coded KB':>9} {'head ms':>8} {'code ms':>8} "
        f"{'xfer ms':>8} {'tail ms':>8} {'total ms':>9}"
    )
    lines = [header]
    for r in rows:
        name = {"remote": "input", "local": "output"}.get(r.kind, r.cut)
        lines.append(
            f"{name:<8} {len(r.tensors):>2} {r.bytes / 1e3:>8.0f} {r.coded_bytes / 1e3:>9.1f} "
            f"{r.head_ms:>8.1f} {r.encode_ms + r.decode_ms:>8.1f} {r.transfer_ms:>8.1f} "
            f"{r.tail_ms:>8.1f} {r.total_ms:>9.1f}{'  *' if r.cut == chosen else ''}"
        )
    return "\n".join(lines)
