"""A model the toolchain derives from another (quantized, pruned): the check of the two paths,
and its card: the original's input, labels, family and thresholds, the new file's digest, and
how it was made."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent.detection.card import ModelCard, Quantization, card_path_for
from agent.detection.detector import file_sha256
from agent.errors import CompressError


def check_paths(model: Path, out: Path, suffix: str, wrong_out: str, verb: str) -> None:
    """Raise CompressError unless ``model`` is a file and ``out`` another path ending in
    ``suffix``: ``wrong_out`` says what ``out`` must be, ``verb`` what is done to the model."""
    if not model.is_file():
        raise CompressError(f"{model}: no such model file")
    if out.suffix.lower() != suffix:
        raise CompressError(f"{out}: {wrong_out}")
    if out.resolve() == model.resolve():
        raise CompressError(f"{out}: would overwrite the model being {verb}")


def write_derived_card(
    src: ModelCard,
    model: Path,
    out: Path,
    how: str,
    tool: str,
    quantization: Quantization | None = None,
) -> Path:
    """Write ``<out>.card.yaml``: ``src`` with ``out``'s sha256 and a note that ``out`` is ``how``
    of ``model``; ``tool`` is the command that wrote it; ``quantization`` says how ``out`` was
    quantized (the original's, if any, does not describe ``out``). Returns the card's path."""
    data = src.model_dump(mode="json", exclude_none=True)
    data.pop("quantization", None)
    if quantization is not None:
        data["quantization"] = quantization.model_dump(mode="json", exclude_none=True)
    data.update(
        format="tflite" if out.suffix.lower() == ".tflite" else "onnx",
        sha256=file_sha256(out),
        notes=f"{how} of {model.name} (sha256 {file_sha256(model)[:16]}...)."
        + (f" Original's notes: {src.notes}" if src.notes else ""),
    )
    data.pop("assumed", None)
    path = card_path_for(out)
    path.write_text(
        f"# Written by `edge-agent model {tool}`.\n" + yaml.safe_dump(data, sort_keys=False),
        encoding="utf-8",
    )
    return path
