"""The ``--runtime``, ``--device`` and ``--precision`` options of the commands that load models
(``detect``, ``bench``, ``model eval``), and the ``RuntimeSpec`` they make: a command runs a model
the way the daemon's ``model:`` section would."""

from __future__ import annotations

import argparse
from typing import Any

from agent.runtimes import RUNTIME_KINDS
from agent.serving import RuntimeSpec

PRECISIONS = ("f32", "bf16", "f16")


def runtime_list(text: str) -> list[str]:
    """``onnx,openvino`` -> ``["onnx", "openvino"]``; an unknown name is a usage error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("auto", *RUNTIME_KINDS)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown runtime {(unknown or [text])[0]!r}; expected "
            + ", ".join(("auto", *RUNTIME_KINDS))
        )
    return names


def add_runtime_options(parser: Any, *, several: bool = False) -> None:
    """``--runtime`` (``several``: a comma list), ``--device`` and ``--precision``."""
    if several:
        parser.add_argument(
            "--runtime",
            type=runtime_list,
            default=["auto"],
            metavar="R[,R...]",
            help="runtime(s): auto (by file suffix), onnx, tflite, openvino; several separated "
            "by commas give one row each (default: auto)",
        )
    else:
        parser.add_argument(
            "--runtime",
            choices=["auto", *RUNTIME_KINDS],
            default="auto",
            help="runtime: auto (by file suffix), onnx, tflite or openvino",
        )
    parser.add_argument(
        "--device",
        default="CPU",
        help="--runtime openvino: CPU, GPU (GPU.N), NPU or AUTO",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="f32",
        help="--runtime openvino: inference precision",
    )


def spec_from_args(args: argparse.Namespace, runtime: str | None = None) -> RuntimeSpec:
    """The options as the daemon would take them; ``runtime``: one of a comma list (``--device``
    and ``--precision`` apply to its openvino rows)."""
    kinds = args.runtime if isinstance(args.runtime, list) else [args.runtime]
    if "openvino" not in kinds and (args.device != "CPU" or args.precision != "f32"):
        from agent.errors import ConfigError

        raise ConfigError(
            "--device and --precision are OpenVINO options: add --runtime openvino "
            f"(not {','.join(kinds)})"
        )
    kind = runtime or kinds[0]
    openvino = kind == "openvino"
    return RuntimeSpec(
        runtime=kind,
        threads=args.threads,
        device=args.device if openvino else "CPU",
        precision=args.precision if openvino else "f32",
    )
