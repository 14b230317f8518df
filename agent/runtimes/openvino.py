"""OpenVINO backend (Intel CPUs, GPUs and NPUs): ``.onnx`` directly, ``.tflite`` through
OpenVINO's TFLite frontend.

Options (``model.device``, ``model.precision``, ``model.performance_hint``, ``model.threads``)
become OpenVINO properties; f32 is the default precision on purpose: the outputs then match
onnxruntime's, where OpenVINO's own default on a CPU with AVX512_BF16 or AMX is bf16.

With a cache folder the compiled model is kept on disk (OpenVINO's ``CACHE_DIR``) so a restart
imports it instead of compiling again. OpenVINO keys a model compiled from a file by its path,
not its content: a file replaced in place would be served from the stale blob. So each model
file gets its own subfolder, named by its identity (real path, inode, size, modification and
change times), and only the most recently used few are kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import agent  # noqa: F401  (blocks openvino_telemetry before openvino is imported)
from agent.errors import ModelLoadError, RuntimeUnavailableError
from agent.runtimes.base import TensorSpec, dequantize, quantize

log = logging.getLogger("agent.runtimes.openvino")

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
PRECISIONS = ("f32", "bf16", "f16")
HINTS = ("LATENCY", "THROUGHPUT")
CACHE_KEEP = 4  # compiled models kept: the one serving, the previous (rollback), a trial, one more


def openvino_module() -> Any:
    """The ``openvino`` package, or RuntimeUnavailableError saying how to get it."""
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "model.runtime openvino: the openvino package is not installed "
            "(pip install 'edge-detection-agent[openvino]')"
        ) from exc
    return openvino


def device_found(device: str, available: Sequence[str]) -> bool:
    """Whether ``device`` (``GPU``, ``GPU.1``, ``AUTO``...) names one of OpenVINO's
    ``available_devices`` (``CPU``, ``GPU`` for a lone GPU, ``GPU.0`` and ``GPU.1`` for two)."""
    if device == "AUTO" or device in available:
        return True
    family, _, index = device.partition(".")
    for name in available:
        other, _, other_index = name.partition(".")
        if other == family and (not index or (not other_index and index == "0")):
            return True
    return False


def one_line(exc: BaseException) -> str:
    """OpenVINO's errors carry a stack of 'Exception from FILE:LINE' lines: the message only."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [
        line
        for line in lines
        if line and not line.startswith(("Exception from ", "Check '")) and line != "]"
    ]
    return " ".join(kept) or " ".join(line for line in lines if line) or type(exc).__name__


def _static_shape(shape: Any) -> tuple[int, ...]:
    # Dynamic dims become 1: the agent always runs one frame at a time.
    return tuple(d.get_length() if d.is_static and d.get_length() > 0 else 1 for d in shape)


def _spec(port: Any, quant: dict[str, tuple[float, int]] | None = None) -> TensorSpec:
    try:
        dtype = np.dtype(port.get_element_type().to_dtype())
    except (RuntimeError, TypeError):
        dtype = np.dtype(np.float32)
    name = port.get_any_name()
    # OpenVINO's TFLite frontend keeps an integer tensor at the model's edge but not its
    # quantization: that comes from the file (an integer dtype makes the spec quantized).
    scale, zero_point = (quant or {}).get(name, (0.0, 0))
    return TensorSpec(name, _static_shape(port.get_partial_shape()), dtype, scale, zero_point)


def _tflite_quantization(path: str) -> dict[str, tuple[float, int]]:
    """Scale and zero point of a TFLite model's quantized inputs and outputs, by name, as the
    TFLite interpreter reads them (nothing is allocated or run); empty without an interpreter."""
    from agent.runtimes.tflite import _interpreter_module

    try:
        interpreter = _interpreter_module().Interpreter(model_path=path)
        details = interpreter.get_input_details() + interpreter.get_output_details()
    except (RuntimeUnavailableError, ValueError, RuntimeError):
        return {}
    found = {}
    for d in details:
        scale, zero_point = d.get("quantization", (0.0, 0))
        if scale:
            found[str(d["name"])] = (float(scale), int(zero_point))
    return found


def cache_folder(root: str | Path, model: str | Path) -> Path:
    """The cache subfolder of one model file: it changes whenever the file does."""
    real = Path(os.path.realpath(model))
    st = real.stat()
    identity = f"{real}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return Path(root) / f"{real.stem[:40]}-{key}"


def _prune_cache(root: Path, keep: int = CACHE_KEEP) -> None:
    """Remove all but the ``keep`` most recently used model folders of the cache."""
    try:
        folders = sorted(
            (p for p in root.iterdir() if p.is_dir()),
            key=lambda p: p.stat().st_mtime_ns,
            reverse=True,
        )
    except OSError:
        return
    for old in folders[keep:]:
        log.debug("removing the compiled model cache %s", old)
        shutil.rmtree(old, ignore_errors=True)


class OpenVinoRuntime:
    """A model compiled by OpenVINO for one device."""

    def __init__(
        self,
        path: str | bytes,
        threads: int = 0,
        *,
        device: str = "CPU",
        precision: str = "f32",
        hint: str = "LATENCY",
        cache_dir: str | Path | None = None,
    ) -> None:
        ov = openvino_module()
        # An ONNX model in memory (a split part) has no file to name, to cache or to read again.
        self._source = path
        path = path if isinstance(path, str) else "<ONNX model in memory>"
        if precision not in PRECISIONS:
            raise ModelLoadError(f"{path}: unknown precision {precision!r}; expected {PRECISIONS}")
        if hint not in HINTS:
            raise ModelLoadError(f"{path}: unknown performance hint {hint!r}; expected {HINTS}")
        self.path = path
        self.device = device
        self._core = ov.Core()
        available = list(self._core.available_devices)
        if not device_found(device, available):
            raise RuntimeUnavailableError(
                f"model.device {device}: OpenVINO finds no such device here "
                f"(available: {', '.join(available) or 'none'})"
            )
        config = self._properties(device, threads, precision, hint, available)
        self.cache: Path | None = None
        if cache_dir is not None and isinstance(self._source, str):
            self.cache = self._cache_for(Path(cache_dir), path)
            if self.cache is not None:
                config["CACHE_DIR"] = str(self.cache)
        try:
            if isinstance(self._source, str):
                compiled = self._core.compile_model(path, device, config)
            else:
                compiled = self._compile_static(device, config)
            if any(port.get_partial_shape().is_dynamic for port in compiled.inputs):
                compiled = self._compile_static(device, config)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: OpenVINO cannot load it: {one_line(exc)}") from exc
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        quant = _tflite_quantization(path) if path.lower().endswith(".tflite") else {}
        self.inputs = [_spec(p, quant) for p in compiled.inputs]
        self.outputs = [_spec(p, quant) for p in compiled.outputs]
        self.loaded_from_cache = self._property("LOADED_FROM_CACHE") is True
        if hint == "THROUGHPUT":
            self._warn_throughput(path)
        precision_now = self._property("INFERENCE_PRECISION_HINT")
        # What the device really runs at (a CPU without bf16 runs f32 whatever was asked).
        self.precision = (
            str(precision_now.to_string()) if hasattr(precision_now, "to_string") else precision
        )
        log.debug(
            "%s compiled for %s (%s)%s",
            path,
            device,
            self.precision,
            " from the cache" if self.loaded_from_cache else "",
        )
        self._metadata: dict[str, str] | None = None

    def _warn_throughput(self, path: str) -> None:
        requests = self._property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        if isinstance(requests, int) and requests > 1:
            log.warning(
                "%s: model.performance_hint THROUGHPUT makes OpenVINO expect %d requests in "
                "flight, but the agent runs one at a time (its cameras take turns on the model): "
                "each inference gets a share of the device (0.5-0.7x of LATENCY's inferences/s "
                "measured on a 2-core x86 CPU); LATENCY is the better hint for the agent",
                path,
                requests,
            )

    @staticmethod
    def _cache_for(root: Path, model: str) -> Path | None:
        """This model file's cache folder, made and marked as just used (the least recently used
        beyond ``CACHE_KEEP`` go); None where it cannot be written: then the model is compiled
        at every load."""
        try:
            folder = cache_folder(root, model)
            folder.mkdir(parents=True, exist_ok=True)
            os.utime(folder)
        except OSError as exc:
            log.warning("no compiled-model cache in %s: %s", root, exc.strerror or exc)
            return None
        _prune_cache(root)
        return folder

    def _properties(
        self, device: str, threads: int, precision: str, hint: str, available: list[str]
    ) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if device.startswith("AUTO"):
            # AUTO passes device-specific properties on through DEVICE_PROPERTIES.
            per_device = {
                name: props
                for name in available
                if (props := self._device_properties(name, threads, precision))
            }
            if per_device:
                config["DEVICE_PROPERTIES"] = per_device
            return config
        config.update(self._device_properties(device, threads, precision))
        return config

    def _device_properties(self, device: str, threads: int, precision: str) -> dict[str, Any]:
        try:
            supported = set(self._core.get_property(device, "SUPPORTED_PROPERTIES"))
        except RuntimeError:
            supported = set()
        props: dict[str, Any] = {}
        if "INFERENCE_PRECISION_HINT" in supported:
            props["INFERENCE_PRECISION_HINT"] = precision
        elif precision != "f32":
            log.warning("OpenVINO device %s takes no precision hint: %s ignored", device, precision)
        if threads > 0 and "INFERENCE_NUM_THREADS" in supported:
            props["INFERENCE_NUM_THREADS"] = threads
        return props

    def _compile_static(self, device: str, config: dict[str, Any]) -> Any:
        """The model read, its dynamic dims set to 1, compiled."""
        model = self._core.read_model(self._source)
        if any(i.get_partial_shape().is_dynamic for i in model.inputs):
            model.reshape({i.get_any_name(): list(_spec(i).shape) for i in model.inputs})
        return self._core.compile_model(model, device, config)

    def _property(self, name: str) -> Any:
        try:
            return self._compiled.get_property(name)
        except RuntimeError:
            return None

    @property
    def metadata(self) -> dict[str, str]:
        """The model file's metadata (an ONNX file's metadata_props), read on first use: only
        a model without a card needs it."""
        if self._metadata is None:
            self._metadata = {}
            try:
                info = self._core.read_model(self._source).get_rt_info()
                if "framework" in info:
                    framework = info["framework"]
                    items = framework.items() if isinstance(framework, dict) else []
                    self._metadata = {str(k): str(v.astype(str)) for k, v in items}
            except (RuntimeError, TypeError, AttributeError) as exc:
                log.debug("%s: no metadata from OpenVINO: %s", self.path, exc)
        return self._metadata

    def infer(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = [quantize(a, spec) for spec, a in zip(self.inputs, arrays, strict=True)]
        # share_outputs=False (the default): the results are copies, valid after the next run.
        results = self._request.infer(feed)
        return [
            dequantize(np.asarray(results[port]), spec)
            for port, spec in zip(self._compiled.outputs, self.outputs, strict=True)
        ]

    def close(self) -> None:
        del self._request
        del self._compiled
