"""`edge-agent model quantize MODEL.tflite -o OUT.tflite --calib DATA`: the full-integer TFLite
path of `model quantize` (AI Edge Quantizer, the `tflite-quant` extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.errors import CompressError


def quantize_tflite_command(args: argparse.Namespace, keep: list[str] | None) -> int:
    from agent.compress.tflite_quantize import quantize_tflite

    if args.mode != "static":
        raise CompressError(
            f"{args.model}: TFLite models are quantized static (full-integer) only; "
            "--mode dynamic is for ONNX"
        )
    result = quantize_tflite(
        args.model,
        args.output,
        calib=args.calib,
        calib_frames=args.calib_frames,
        keep_float=keep,
        card=Path(args.card) if args.card else None,
        threads=args.threads,
    )
    io = result.io
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(result.model),
                    "card": str(result.card),
                    "mode": "static",
                    "format": "tflite",
                    "calib_frames": len(result.calib_frames),
                    "calib_names": result.calib_frames,  # to hold them out of evaluation
                    "input": {
                        "dtype": io.input_dtype,
                        "scale": io.input_scale,
                        "zero_point": io.input_zero_point,
                    },
                    "integer_outputs": io.integer_outputs,
                    "folded": result.folded,
                    "fused_activations": result.fused,
                    "output_sqnr_db": result.output_sqnr,
                    "ranges": result.ranges,
                    "checks": result.checks,
                    "kept_float": [
                        {"name": k.name, "op_type": k.op_type, "reason": k.reason}
                        for k in result.kept
                    ],
                }
            )
        )
    else:
        print(
            f"{args.model} -> {result.model} (INT8 full-integer, AI Edge Quantizer, min/max "
            f"calibration on {len(result.calib_frames)} frames of {args.calib})"
        )
        if result.folded or result.fused:
            done = ", ".join(f"{k} {n}" for n, k in result.folded.items())
            fused = f"; fused {result.fused} RELU op(s) into the op before" if result.fused else ""
            print(f"fp32 graph first: folded {done or 'no'} constant op(s) into weights{fused}")
        print(
            f"input: {io.input_dtype}, scale {io.input_scale:.6g}, zero point "
            f"{io.input_zero_point}; integer outputs: {', '.join(io.integer_outputs) or 'none'}"
        )
        for r in result.ranges:
            print(f"ranges: {r}")
        if result.output_sqnr:
            print(
                "whole-graph INT8 outputs against float (SQNR): "
                + ", ".join(f"{n} {v:.1f} dB" for n, v in result.output_sqnr.items())
                + (" (a score output's counts its clipped background)" if result.ranges else "")
            )
        for c in result.checks:
            print(f"tried: {c}")
        if not result.kept:
            print("kept in float: none (every op quantized)")
        else:
            groups: dict[str, list[str]] = {}
            for k in result.kept:
                groups.setdefault(k.reason, []).append(f"{k.name} ({k.op_type})")
            print(f"kept in float: {len(result.kept)} op(s)")
            for reason, names in groups.items():
                print(f"  {reason}:\n    {', '.join(names)}")
        print(f"card: {result.card}")
    if args.eval:
        from agent.compress.cli import eval_against_float

        eval_against_float(args, result.model, result.card, "int8", result.calib_frames)
    return 0
