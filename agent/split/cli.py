"""`edge-agent model split|plan-split|bench-split`: where a model can be cut, what each cut costs,
which cut is fastest for a link, and the parts themselves."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.errors import SplitError

CODECS = ("int8", "fp16", "raw")


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def cmd_split(args: argparse.Namespace) -> int:
    from agent.split.partition import write_split

    info = write_split(args.model, args.at, args.output, card=args.card)
    if args.json:
        print(json.dumps(info))
        return 0
    cut = info["cut"]
    out = Path(args.output)
    print(
        f"cut {cut['cut']} after node {cut['after']}: {len(cut['tensors'])} tensor(s), "
        f"{cut['bytes']} bytes raw"
    )
    for t in cut["tensors"]:
        print(f"  {t['name']} {t['dtype']} {t['shape']}")
    print(f"wrote {out / 'head.onnx'} ({info['head']['nodes']} nodes)")
    print(f"wrote {out / 'tail.onnx'} ({info['tail']['nodes']} nodes)")
    if info["tail"]["card"]:
        print(f"wrote {out / 'tail.card.yaml'}")
    print(f"wrote {out / 'split.json'}")
    return 0


def _load_profile(path: str) -> Any:
    from agent.split.profile import Profile

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SplitError(f"{path}: cannot read the profile: {exc.strerror}") from exc
    return Profile.from_json(text)


def cmd_plan_split(args: argparse.Namespace) -> int:
    from agent.split.partition import list_cuts, partition

    graph = partition(args.model)
    if args.no_profile:
        for cut in list_cuts(graph, max_tensors=args.max_tensors):
            if args.json:
                print(json.dumps(cut.to_dict()))
            else:
                names = ", ".join(f"{t.name} {list(t.shape)}" for t in cut.tensors)
                print(f"{cut.id:<8} {cut.bytes:>10}  {names}")
        return 0

    from agent.split.plan import best, predict, render_table
    from agent.split.profile import profile_model

    if args.profile:
        profile = _load_profile(args.profile)
    else:
        from agent.split.codec import METHODS, Method

        methods: tuple[Method, ...] = (args.codec,) if args.bandwidth_mbps else METHODS
        profile = profile_model(
            args.model,
            runs=args.profile_runs,
            threads=args.threads,
            methods=methods,
            max_tensors=args.max_tensors,
            graph=graph,
        )
    if args.save_profile:
        Path(args.save_profile).write_text(profile.to_json() + "\n", encoding="utf-8")
    peer = _load_profile(args.peer_profile) if args.peer_profile else None
    after = {c.id: c.after for c in graph.cuts}

    if args.bandwidth_mbps is None:
        for c in profile.cuts:
            if (
                args.max_tensors is not None
                and c.kind == "split"
                and len(c.tensors) > args.max_tensors
            ):
                continue
            if args.json:
                print(
                    json.dumps(
                        {
                            **_cut_fields(c, after),
                            "coded_bytes": c.coded_bytes,
                            "head_ms": c.head_ms,
                            "tail_ms": c.tail_ms,
                        }
                    )
                )
            else:
                sizes = " ".join(f"{m} {v / 1e3:.1f}" for m, v in c.coded_bytes.items())
                print(
                    f"{c.cut:<8} {len(c.tensors):>2} {c.bytes / 1e3:>8.0f} KB  head "
                    f"{c.head_ms:>7.1f} ms  tail {c.tail_ms:>7.1f} ms  coded KB: {sizes}"
                )
        if not args.json:
            print(
                f"{profile.model} on {profile.device}, {profile.threads} threads: "
                f"{profile.total_ms:.1f} ms whole; add --bandwidth-mbps to plan"
            )
        return 0

    rows = predict(
        profile,
        args.bandwidth_mbps,
        args.rtt_ms,
        args.peer_speedup,
        args.codec,
        peer_profile=peer,
        max_tensors=args.max_tensors,
    )
    top = best(rows)
    if args.json:
        for r in rows:
            print(json.dumps({**r.to_dict(), "after": after.get(r.cut)}))
        print(json.dumps({"best": {**top.to_dict(), "after": after.get(top.cut)}}))
        return 0
    print(render_table(rows, top.cut))
    where = {"local": "all local", "remote": "all remote: the input is sent"}.get(
        top.kind, f"after {after.get(top.cut)}"
    )
    print(
        f"best: {top.cut} ({where}), {top.total_ms:.1f} ms at {args.bandwidth_mbps:g} Mbit/s, "
        f"rtt {args.rtt_ms:g} ms, peer {args.peer_speedup:g}x, codec {args.codec}; "
        f"profiled on {profile.device}"
    )
    return 0


def _cut_fields(c: Any, after: dict[str, str | None]) -> dict[str, Any]:
    return {
        "cut": c.cut,
        "index": c.index,
        "after": after.get(c.cut),
        "kind": c.kind,
        "tensors": c.tensors,
        "bytes": c.bytes,
    }


def cmd_bench_split(args: argparse.Namespace) -> int:
    from agent.split.bench import bench_split, render_markdown

    def progress(trial: Any) -> None:
        if not args.json:
            print(
                f"  {trial.cut:<8} {trial.bandwidth_mbps:>6g} Mbit/s  predicted "
                f"{trial.predicted_ms:8.1f} ms  measured {trial.measured_ms:8.1f} ms",
                file=sys.stderr,
            )

    result, profile = bench_split(
        args.model,
        args.bandwidths,
        head_slowdown=args.head_slowdown,
        rtt_ms=args.rtt_ms,
        codec=args.codec,
        frames=args.frames,
        cuts=args.cuts,
        max_tensors=args.max_tensors,
        threads=args.threads,
        progress=progress,
    )
    if args.json:
        print(
            json.dumps(
                {
                    **result.to_dict(),
                    "profile_device": profile.device,
                    "profile_total_ms": profile.total_ms,
                }
            )
        )
    else:
        print(render_markdown(result))
        print(
            f"\nhead {args.head_slowdown:g}x slower than this machine ({profile.total_ms:.0f} ms "
            f"whole model here, {profile.threads} threads), peer = this machine, rtt "
            f"{args.rtt_ms:g} ms, codec {args.codec}, median of {args.frames} frames"
        )
    gaps = [s["gap"] for s in result.per_bandwidth().values()]
    return 0 if max(gaps) <= args.tolerance else 1


def add_split_commands(model_sub: Any) -> None:
    """Add split, plan-split and bench-split to `edge-agent model`."""
    sp = model_sub.add_parser("split", help="cut an ONNX model into head.onnx and tail.onnx")
    sp.add_argument("model", help="ONNX model to cut")
    sp.add_argument(
        "--at", required=True, metavar="CUT", help="cut id (see plan-split) or node name"
    )
    sp.add_argument(
        "-o",
        "--output",
        "--out",
        required=True,
        metavar="DIR",
        help="folder to write head.onnx, tail.onnx and split.json into",
    )
    sp.add_argument("--card", help="model card (default: <model>.card.yaml)")
    sp.add_argument("--json", action="store_true", help="print split.json's content")
    sp.set_defaults(func=cmd_split)

    plan = model_sub.add_parser(
        "plan-split", help="cut points of an ONNX model, their cost, and the best for a link"
    )
    plan.add_argument("model", help="ONNX model")
    plan.add_argument("--json", action="store_true", help="one JSON object per cut, then the best")
    plan.add_argument(
        "--bandwidth-mbps",
        type=_positive,
        help="link bandwidth: plan for it (default: only list the cuts' costs)",
    )
    plan.add_argument("--rtt-ms", type=float, default=2.0, help="link round trip (default 2)")
    plan.add_argument(
        "--peer-speedup",
        type=_positive,
        default=1.0,
        help="how many times faster the peer runs the model than this device (default 1)",
    )
    plan.add_argument("--peer-profile", metavar="FILE", help="the peer's profile (--save-profile)")
    plan.add_argument("--codec", choices=CODECS, default="int8", help="coding of the cut tensors")
    plan.add_argument(
        "--max-tensors", type=int, help="only cuts carrying at most K tensors (default: any)"
    )
    plan.add_argument("--profile-runs", type=int, default=3, help="timed runs (default 3)")
    plan.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    plan.add_argument("--profile", metavar="FILE", help="use this saved profile, measure nothing")
    plan.add_argument("--save-profile", metavar="FILE", help="write the profile as JSON")
    plan.add_argument("--no-profile", action="store_true", help="only list the cuts")
    plan.set_defaults(func=cmd_plan_split)

    bench = model_sub.add_parser(
        "bench-split", help="measured split latency under simulated links vs the planner"
    )
    bench.add_argument("model", help="ONNX model")
    bench.add_argument(
        "--bandwidths",
        type=_floats,
        default=[1.0, 5.0, 20.0, 100.0],
        help="Mbit/s, comma-separated (default 1,5,20,100)",
    )
    bench.add_argument(
        "--head-slowdown",
        type=_positive,
        default=4.0,
        help="simulated head device this many times slower (default 4)",
    )
    bench.add_argument("--rtt-ms", type=float, default=2.0, help="simulated link round trip")
    bench.add_argument(
        "--codec", choices=CODECS, default="int8", help="coding of the cut tensors"
    )
    bench.add_argument("--frames", type=int, default=2, help="frames per cut and link (median)")
    bench.add_argument("--cuts", type=int, default=12, help="about this many cuts measured")
    bench.add_argument("--max-tensors", type=int, default=1, help="candidate cuts' tensor limit")
    bench.add_argument("--threads", type=int, default=2, help="inference threads")
    bench.add_argument(
        "--tolerance",
        type=float,
        default=0.10,
        help="exit 1 when the planner's pick is slower than the fastest by more",
    )
    bench.add_argument("--json", action="store_true", help="one JSON object per result")
    bench.set_defaults(func=cmd_bench_split)
