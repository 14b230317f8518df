"""`edge-agent model eval|quantize|prune`. The toolchain modules (onnx, pycocotools, zstandard)
are imported inside the commands, so the daemon never loads them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import CompressError
from agent.runtime_args import add_runtime_options

if TYPE_CHECKING:
    from agent.compress.evaluate import EvalReport
    from agent.compress.sensitive import KeptNode


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text}") from exc


def _print_reports(reports: Sequence[EvalReport], as_json: bool) -> None:
    from agent.compress.evaluate import markdown_table

    if as_json:
        for r in reports:
            print(json.dumps(r.to_dict()))
    else:
        print(markdown_table(reports))


# -------------------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    from agent.compress.evaluate import Candidate, compare
    from agent.runtime_args import spec_from_args

    card = Path(args.card) if args.card else None
    reference = (
        Candidate(Path(args.reference), name=Path(args.reference).stem) if args.reference else None
    )
    reports = compare(
        [Candidate(Path(m), card) for m in args.model],
        args.data,
        labels=Path(args.labels) if args.labels else None,
        reference=reference,
        frames=args.frames,
        threads=args.threads,
        spec=spec_from_args(args),
    )
    _print_reports(reports, args.json)
    return 0


# ---------------------------------------------------------------------------------- quantize


def _kept_lines(kept: Sequence[KeptNode]) -> list[str]:
    """Kept nodes grouped by reason, so 24 nodes read as two sentences."""
    if not kept:
        return ["kept in float: none (whole graph quantized)"]
    groups: dict[str, list[str]] = {}
    for k in kept:
        groups.setdefault(k.reason, []).append(k.name)
    lines = [f"kept in float: {len(kept)} node(s)"]
    for reason, names in groups.items():
        lines.append(f"  {reason}:")
        lines.append(f"    {', '.join(names)}")
    return lines


def cmd_quantize(args: argparse.Namespace) -> int:
    from agent.compress.quantize import quantize

    keep: list[str] | None
    if args.keep_float == "auto":
        keep = None
    elif args.keep_float == "none":
        keep = []
    else:
        keep = [n.strip() for n in args.keep_float.split(",") if n.strip()]
    if Path(args.model).suffix.lower() == ".tflite":
        from agent.compress.tflite_cli import quantize_tflite_command

        return quantize_tflite_command(args, keep)
    result = quantize(
        args.model,
        args.output,
        calib=args.calib,
        calib_frames=args.calib_frames,
        mode=args.mode,
        keep_float=keep,
        card=Path(args.card) if args.card else None,
        calibration=args.calibration,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(result.model),
                    "card": str(result.card),
                    "mode": result.mode,
                    "calib_frames": len(result.calib_frames),
                    "kept_float": [
                        {"name": k.name, "op_type": k.op_type, "reason": k.reason}
                        for k in result.kept
                    ],
                }
            )
        )
    else:
        what = (
            f"INT8 static QDQ, {args.calibration} calibration on {len(result.calib_frames)} "
            f"frames of {args.calib}"
            if result.mode == "static"
            else "INT8 dynamic"
        )
        print(f"{args.model} -> {result.model} ({what})")
        print("\n".join(_kept_lines(result.kept)))
        print(f"card: {result.card}")
    if args.eval:
        eval_against_float(args, result.model, result.card, result.mode, result.calib_frames)
    return 0


def eval_against_float(
    args: argparse.Namespace, model: Path, card: Path, mode: str, calib_frames: Sequence[str]
) -> None:
    """``quantize --eval DATA``: the quantized model's fidelity to the float one on DATA, the
    calibration frames held out when DATA is what it was calibrated on."""
    from agent.compress.evaluate import Candidate, compare

    src = Path(args.model)
    ref = Candidate(src, Path(args.card) if args.card else None, f"{src.stem} (float)")
    same = bool(args.calib) and Path(args.eval).resolve() == Path(args.calib).resolve()
    reports = compare(
        [ref, Candidate(model, card, f"{model.stem} ({mode})")],
        args.eval,
        reference=ref,
        frames=args.eval_frames,
        threads=args.threads,
        exclude=calib_frames if same else (),
    )
    if not args.json:
        held = " (calibration frames held out)" if same else ""
        print(f"\nfidelity on {reports[0].frames} frames of {args.eval}{held}:")
    _print_reports(reports, args.json)


# ------------------------------------------------------------------------------------- prune


def cmd_prune(args: argparse.Namespace) -> int:
    from agent.compress import prune as pr

    card = Path(args.card) if args.card else None
    if args.scan:
        if not args.data:
            raise CompressError("--scan needs --data (frames to measure fidelity on)")
        base, rows = pr.sparsity_scan(
            args.model,
            args.scan,
            args.data,
            per_layer=args.per_layer,
            int8=not args.no_int8,
            calib=args.calib,
            calib_frames=args.calib_frames,
            frames=args.frames,
            threads=args.threads,
            card=card,
            progress=None if args.json else lambda s: print(s, file=sys.stderr, flush=True),
        )
        if args.json:
            for row in rows:
                print(
                    json.dumps(
                        {
                            "sparsity": row.sparsity,
                            "fp32": row.fp32.to_dict(),
                            "int8": row.int8.to_dict() if row.int8 else None,
                            "original_size_bytes": base.size_bytes,
                        }
                    )
                )
        else:
            print(pr.scan_table(base, rows))
        return 0
    if not args.output:
        raise CompressError("give -o OUT.onnx (or --scan to only measure)")
    chosen = [args.threshold is not None, args.sparsity is not None, args.sensitivity]
    if sum(chosen) != 1:
        raise CompressError("give one of --threshold, --sparsity, --sensitivity (or --scan)")
    if args.sensitivity:
        if args.min_fidelity is None or not args.data:
            raise CompressError("--sensitivity needs --min-fidelity and --data")
        result = pr.sensitivity_prune(
            args.model,
            args.output,
            data=args.data,
            min_fidelity=args.min_fidelity,
            levels=args.levels,
            frames=args.frames,
            threads=args.threads,
            card=card,
            progress=None if args.json else lambda s: print(s, file=sys.stderr, flush=True),
        )
    else:
        result = pr.prune(
            args.model,
            args.output,
            threshold=args.threshold,
            sparsity=args.sparsity,
            per_layer=args.per_layer,
            card=card,
        )
    total = result.total
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(result.model),
                    "card": str(result.card),
                    "rule": result.rule,
                    "weights": total.size,
                    "zeros": total.zeros,
                    "sparsity": round(total.sparsity, 6),
                    "fidelity": result.fidelity,
                    "layers": [
                        {"node": x.node, "weight": x.weight, "size": x.size, "zeros": x.zeros}
                        for x in result.layers
                    ],
                    "skipped": result.skipped,
                }
            )
        )
        return 0
    print(f"{args.model} -> {result.model}: {result.rule}")
    print(pr.layer_table(result))
    for note in result.skipped:
        print(f"left dense: {note}")
    if result.fidelity is not None:
        print(f"fidelity of the pruned model: {result.fidelity:.3f} (mAP@0.5 vs the original)")
    print(f"card: {result.card}")
    return 0


# -------------------------------------------------------------------------------- wiring


def add_compress_commands(model_sub: Any) -> None:
    """Add eval, quantize and prune to `edge-agent model`."""
    ev = model_sub.add_parser(
        "eval", help="mAP (labels) or fidelity (reference model), latency, sizes, memory"
    )
    ev.add_argument("model", nargs="+", help="one or more models, evaluated on the same frames")
    ev.add_argument("--data", required=True, help="video, image folder or image")
    ev.add_argument("--labels", help="labels file (JSON; see README) for mAP against the truth")
    ev.add_argument("--reference", help="without labels: fidelity against this model's detections")
    ev.add_argument("--frames", type=int, default=50, help="frames evenly spread over --data")
    ev.add_argument("--threads", type=int, default=2, help="inference threads")
    ev.add_argument("--card", help="card of the model(s) (default: <model>.card.yaml)")
    add_runtime_options(ev)
    ev.add_argument("--json", action="store_true", help="one JSON object per model")
    ev.set_defaults(func=cmd_eval)

    q = model_sub.add_parser(
        "quantize", help="INT8 quantization (ONNX; TFLite full-integer) with sensitive ops kept"
    )
    q.add_argument("model", help="float ONNX model, or TFLite model (full-integer INT8)")
    q.add_argument(
        "-o", "--output", required=True, metavar="OUT.onnx|OUT.tflite", help="INT8 model to write"
    )
    q.add_argument("--calib", help="calibration video or image folder (needed for static)")
    q.add_argument(
        "--calib-frames", type=int, default=32, help="calibration frames spread over --calib"
    )
    q.add_argument(
        "--mode",
        choices=["static", "dynamic"],
        default="static",
        help="static: activation ranges from --calib; dynamic: computed per inference",
    )
    q.add_argument(
        "--calibration",
        choices=["percentile", "minmax", "entropy"],
        default="percentile",
        help="static: how activation ranges are chosen",
    )
    q.add_argument(
        "--keep-float",
        default="auto",
        metavar="auto|none|NODE,...",
        help="nodes kept in float: found automatically (default), none, or these",
    )
    q.add_argument("--eval", metavar="DATA", help="then compare float and INT8 on these frames")
    q.add_argument("--eval-frames", type=int, default=40, help="--eval: frames compared")
    q.add_argument("--threads", type=int, default=2, help="inference threads")
    q.add_argument("--card", help="the float model's card (default: <model>.card.yaml)")
    q.add_argument("--json", action="store_true", help="one JSON object")
    q.set_defaults(func=cmd_quantize)

    p = model_sub.add_parser("prune", help="magnitude pruning of Conv/Gemm/MatMul weights")
    p.add_argument("model", help="float ONNX model")
    p.add_argument(
        "-o", "--output", metavar="OUT.onnx", help="pruned model to write (not needed for --scan)"
    )
    p.add_argument("--threshold", type=float, help="weights with |w| < T become 0")
    p.add_argument("--sparsity", type=float, help="share of weights set to 0 (0..1)")
    p.add_argument("--per-layer", action="store_true", help="the same share in every layer")
    p.add_argument("--sensitivity", action="store_true", help="per-layer levels from a scan")
    p.add_argument("--min-fidelity", type=float, help="--sensitivity: fidelity to keep")
    p.add_argument(
        "--levels", type=_floats, default=[0.3, 0.5, 0.7, 0.9], help="--sensitivity: levels"
    )
    p.add_argument("--scan", type=_floats, metavar="S,S,...", help="measure these sparsities")
    p.add_argument("--no-int8", action="store_true", help="--scan: skip the INT8 column")
    p.add_argument("--data", help="frames to measure fidelity on")
    p.add_argument("--calib", help="--scan: INT8 calibration frames (default: --data)")
    p.add_argument(
        "--calib-frames", type=int, default=16, help="--scan: INT8 calibration frames used"
    )
    p.add_argument("--frames", type=int, default=20, help="frames to measure fidelity on")
    p.add_argument("--threads", type=int, default=2, help="inference threads")
    p.add_argument("--card", help="model card (default: <model>.card.yaml)")
    p.add_argument("--json", action="store_true", help="one JSON object per result")
    p.set_defaults(func=cmd_prune)
