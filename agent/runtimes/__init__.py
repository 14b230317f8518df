"""Inference backends, chosen by file suffix (or ``model.runtime`` in the config)."""

from __future__ import annotations

from pathlib import Path

from agent.errors import ModelLoadError
from agent.runtimes.base import Runtime, TensorSpec

__all__ = [
    "RUNTIMES",
    "RUNTIME_KINDS",
    "Runtime",
    "TensorSpec",
    "describe",
    "load_runtime",
    "runtime_kind",
]

# suffix -> runtime name; the classes are imported only when asked for, so a device
# without one backend can still run models of the other.
RUNTIMES = {".onnx": "onnx", ".tflite": "tflite"}
#: what ``model.runtime`` (and ``--runtime``) may name besides ``auto``
RUNTIME_KINDS = ("onnx", "tflite", "openvino")


def runtime_kind(path: str | Path, runtime: str | None = None) -> str:
    if runtime and runtime != "auto":
        return runtime
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIMES:
        raise ModelLoadError(
            f"{path}: unknown model format {suffix!r}; expected one of {sorted(RUNTIMES)}"
        )
    return RUNTIMES[suffix]


def describe(runtime: Runtime) -> str:
    """Which runtime runs a model, for logs and reports: ``onnx``, ``tflite``, or
    ``openvino CPU f32`` (the device and the precision it really runs at)."""
    kind = type(runtime).__module__.rsplit(".", 1)[-1]
    if kind == "openvino":
        return f"openvino {getattr(runtime, 'device', '?')} {getattr(runtime, 'precision', '?')}"
    return kind


def load_runtime(
    path: str | Path,
    *,
    threads: int = 0,
    runtime: str | None = None,
    providers: list[str] | None = None,
    delegate: str | None = None,
    device: str = "CPU",
    precision: str = "f32",
    hint: str = "LATENCY",
    cache_dir: str | Path | None = None,
) -> Runtime:
    """Open ``path`` with the runtime its suffix (or ``runtime``) names. ``device``,
    ``precision``, ``hint`` and ``cache_dir`` (the compiled-model cache) are OpenVINO's."""
    path = str(path)
    if not Path(path).is_file():
        raise ModelLoadError(f"{path}: no such model file")
    kind = runtime_kind(path, runtime)
    if kind == "onnx":
        from agent.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(path, threads=threads, providers=providers)
    if kind == "tflite":
        from agent.runtimes.tflite import TFLiteRuntime

        return TFLiteRuntime(path, threads=threads, delegate=delegate)
    if kind == "openvino":
        from agent.runtimes.openvino import OpenVinoRuntime

        return OpenVinoRuntime(
            path,
            threads=threads,
            device=device,
            precision=precision,
            hint=hint,
            cache_dir=cache_dir,
        )
    raise ModelLoadError(
        f"{path}: unknown runtime {kind!r}; expected one of {', '.join(RUNTIME_KINDS)}"
    )
