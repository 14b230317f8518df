"""`edge-agent model distill`: its arguments, and the lazy import that keeps torch out of the
daemon (and out of every other command)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Any

from agent.errors import CompressError

log = logging.getLogger("agent.compress.distill")

# What the distill extra brings; a missing one is the user's to install, not a crash.
EXTRA_MODULES = ("torch", "onnxscript", "onnx", "pycocotools", "zstandard")


def add_distill_command(model_sub: Any) -> None:
    """Add `distill` to `edge-agent model`."""
    p = model_sub.add_parser(
        "distill",
        help="train a smaller student detector to mimic a YOLO teacher on unlabeled frames "
        "(needs the distill extra: torch)",
        description="Train a student on the teacher's detections (pseudo-labels) and softened "
        "class scores, export it to ONNX with its card, and report its fidelity to the teacher "
        "on held-out frames, its latency and size.",
    )
    p.add_argument("teacher", help="YOLOv8-format ONNX or TFLite model ([1, 4+nc, N] output)")
    p.add_argument("--data", required=True, metavar="VIDEO|DIR", help="unlabeled frames")
    p.add_argument(
        "-o", "--output", required=True, metavar="STUDENT.onnx", help="student model to write"
    )
    p.add_argument("--card", help="the teacher's card (default: <teacher>.card.yaml)")
    p.add_argument("--input-size", type=int, default=320, help="student input side (x32)")
    p.add_argument("--width", type=int, default=16, help="student's first-layer channels")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training frames")
    p.add_argument("--batch", type=int, default=16, help="frames per training step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the softened term")
    p.add_argument("--temperature", type=float, default=2.0, help="softening temperature")
    p.add_argument("--frames", type=int, default=200, help="training frames")
    p.add_argument("--holdout", type=int, default=50, help="last frames kept out, for fidelity")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same student)")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_distill)


def _import_distill() -> Any:
    try:
        return importlib.import_module("agent.compress.distill")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in EXTRA_MODULES:
            raise CompressError(
                f"model distill needs {exc.name.split('.')[0]}, which is not installed: "
                "pip install 'edge-detection-agent[distill]'"
            ) from exc
        raise


def cmd_distill(args: argparse.Namespace) -> int:
    distill = _import_distill()
    options = distill.DistillOptions(
        input_size=args.input_size,
        width=args.width,
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        alpha=args.alpha,
        temperature=args.temperature,
        frames=args.frames,
        holdout=args.holdout,
        seed=args.seed,
        threads=args.threads,
    )

    def on_epoch(e: Any) -> None:
        log.info(
            "epoch %d/%d: loss %.4f (cls %.4f, box %.4f, soft %.4f) %.1f s",
            e.epoch,
            options.epochs,
            e.total,
            e.cls,
            e.box,
            e.soft,
            e.seconds,
        )

    result = distill.distill(
        args.teacher, args.data, args.output, options, teacher_card=args.card, on_epoch=on_epoch
    )
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(
        f"student: {result.student} (card {result.card})\n"
        f"teacher labelled {result.train_frames} training frames in "
        f"{result.teacher_seconds:.0f} s: {result.pseudo_boxes} boxes on "
        f"{result.frames_with_boxes} frames; training took {result.train_seconds:.0f} s, "
        f"loss {result.epochs[0].total:.4f} -> {result.epochs[-1].total:.4f}\n"
        f"held out: the last {result.holdout_frames} frames\n",
        file=sys.stdout,
    )
    print(result.table())
    return 0
