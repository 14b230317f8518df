"""The wire format of the tensors that cross a cut: one self-describing binary payload.

    b"EASP" | version (1 byte) | header length (uint32 LE) | header (UTF-8 JSON) | body

The header holds the caller's ``meta`` and, per tensor, its name, dtype, shape, coding ``method``,
``scale``/``zero_point`` and the ``offset``/``length`` of its coded bytes in the decompressed body;
the body is the coded tensors, concatenated, in one zstd frame. Methods:

- ``int8``: per-tensor affine 8-bit (``x = scale * (q - zero_point)``, q in 0..255, the range taken
  from the tensor's min and max, zero exactly representable); a quarter of fp32 before zstd.
- ``fp16``: half precision; half of fp32, near lossless for activations.
- ``raw``: the tensor as it is.

Integer and bool tensors, and float tensors with non-finite values, always go ``raw``. Anything
malformed (truncated, wrong magic, sizes that do not add up) is refused with ``SplitError``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from agent.errors import SplitError

__all__ = ["MAGIC", "METHODS", "VERSION", "Method", "decode", "encode", "quantize_uint8"]

MAGIC = b"EASP"  # Edge-Agent Split Payload
VERSION = 1
Method = Literal["int8", "fp16", "raw"]
METHODS: tuple[Method, ...] = ("int8", "fp16", "raw")

_PREFIX = struct.Struct("<4sBI")
_DTYPES = {
    "float32",
    "float16",
    "float64",
    "uint8",
    "int8",
    "uint16",
    "int16",
    "int32",
    "int64",
    "uint32",
    "uint64",
    "bool",
}
# A header is names and numbers; a larger one is an attack or a bug.
_MAX_HEADER = 1 << 20
_MAX_TENSORS = 4096


def quantize_uint8(a: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Per-tensor affine 8-bit quantization of a finite float array: (q, scale, zero_point)."""
    lo = min(float(a.min()), 0.0) if a.size else 0.0
    hi = max(float(a.max()), 0.0) if a.size else 0.0
    scale = (hi - lo) / 255.0
    if scale == 0.0 or not math.isfinite(scale):
        return np.zeros(a.shape, np.uint8), 1.0, 0
    zero_point = int(np.clip(round(-lo / scale), 0, 255))
    q = np.rint(a.astype(np.float32) * np.float32(1.0 / scale)) + np.float32(zero_point)
    return np.clip(q, 0, 255).astype(np.uint8), scale, zero_point


def _code(a: np.ndarray, method: Method) -> tuple[bytes, dict[str, Any]]:
    floating = a.dtype.kind == "f"
    if method == "raw" or not floating or (a.size and not np.isfinite(a).all()):
        return np.ascontiguousarray(a).tobytes(), {"method": "raw"}
    if method == "fp16":
        return a.astype("<f2").tobytes(), {"method": "fp16"}
    q, scale, zero_point = quantize_uint8(a)
    return q.tobytes(), {"method": "int8", "scale": scale, "zero_point": zero_point}


def encode(
    meta: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    method: Method = "int8",
    level: int = 3,
) -> bytes:
    """One payload holding ``meta`` (JSON-able) and ``tensors`` (in their order), coded with
    ``method`` and compressed with zstd at ``level``."""
    import zstandard

    if method not in METHODS:
        raise SplitError(f"unknown codec {method!r}; expected one of {', '.join(METHODS)}")
    entries: list[dict[str, Any]] = []
    bodies: list[bytes] = []
    offset = 0
    for name, value in tensors.items():
        a = np.asarray(value)
        if a.dtype.name not in _DTYPES:
            raise SplitError(f"tensor {name!r}: cannot send dtype {a.dtype}")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        body, coding = _code(a, method)
        entries.append(
            {
                "name": name,
                "dtype": a.dtype.name,
                "shape": list(a.shape),
                **coding,
                "offset": offset,
                "length": len(body),
            }
        )
        bodies.append(body)
        offset += len(body)
    try:
        header = json.dumps(
            {"meta": dict(meta), "tensors": entries, "body_length": offset},
            separators=(",", ":"),
            allow_nan=False,
        ).encode()
    except (TypeError, ValueError) as exc:
        raise SplitError(f"split payload meta is not JSON: {exc}") from exc
    body = zstandard.ZstdCompressor(level=level).compress(b"".join(bodies))
    return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + body


def _field(entry: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SplitError(f"split payload: tensor field {key!r} is missing or malformed")
    return value


def decode(payload: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, tensors) of a payload ``encode`` made; float tensors come back in their dtype
    (int8/fp16-coded ones as the nearest values the coding keeps)."""
    import zstandard

    if len(payload) < _PREFIX.size:
        raise SplitError(f"split payload: {len(payload)} bytes, too short for a header")
    magic, version, header_len = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise SplitError(f"split payload: wrong magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise SplitError(f"split payload: version {version}, this agent reads {VERSION}")
    end = _PREFIX.size + header_len
    if header_len > _MAX_HEADER or end > len(payload):
        raise SplitError(f"split payload: header of {header_len} bytes does not fit")
    try:
        header = json.loads(payload[_PREFIX.size : end])
    except (UnicodeDecodeError, ValueError) as exc:
        raise SplitError(f"split payload: header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SplitError("split payload: header is not an object")
    meta, entries, body_length = (
        header.get("meta"),
        header.get("tensors"),
        header.get("body_length"),
    )
    if not isinstance(meta, dict) or not isinstance(entries, list) or len(entries) > _MAX_TENSORS:
        raise SplitError("split payload: header lacks meta or tensors")
    if not isinstance(body_length, int) or isinstance(body_length, bool) or body_length < 0:
        raise SplitError("split payload: header lacks the body length")
    try:
        # The frame declares its size: check it before inflating anything (a bomb stops here).
        declared = zstandard.frame_content_size(payload[end:])
        if declared != body_length:
            raise SplitError(f"split payload: body of {declared} bytes, header says {body_length}")
        inflater = zstandard.ZstdDecompressor().decompressobj()
        body = inflater.decompress(payload[end:])
    except zstandard.ZstdError as exc:
        raise SplitError(f"split payload: body does not decompress: {exc}") from exc
    if not inflater.eof or inflater.unused_data or len(body) != body_length:
        raise SplitError("split payload: body does not decompress to one whole frame")
    tensors: dict[str, np.ndarray] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise SplitError("split payload: a tensor entry is not an object")
        tensors.update([_tensor(entry, body)])
    return meta, tensors


def _tensor(entry: Mapping[str, Any], body: bytes) -> tuple[str, np.ndarray]:
    name = _field(entry, "name", str)
    dtype_name = _field(entry, "dtype", str)
    shape = _field(entry, "shape", list)
    method = _field(entry, "method", str)
    offset = _field(entry, "offset", int)
    length = _field(entry, "length", int)
    if dtype_name not in _DTYPES or method not in METHODS:
        raise SplitError(f"split payload: tensor {name!r} has dtype {dtype_name!r}, {method!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise SplitError(f"split payload: tensor {name!r} has a malformed shape {shape}")
    if offset < 0 or length < 0 or offset + length > len(body):
        raise SplitError(f"split payload: tensor {name!r} lies outside the body")
    dtype = np.dtype(dtype_name).newbyteorder("<")
    coded = {"raw": dtype, "fp16": np.dtype("<f2"), "int8": np.dtype(np.uint8)}[method]
    count = math.prod(shape)
    if count * coded.itemsize != length:
        raise SplitError(
            f"split payload: tensor {name!r} {shape} {method} needs {count * coded.itemsize} "
            f"bytes, has {length}"
        )
    data = np.frombuffer(body, coded, count, offset).reshape(shape)
    if method == "raw":
        return name, data.astype(dtype.newbyteorder("="), copy=True)
    if method == "fp16":
        return name, data.astype(dtype.newbyteorder("="))
    scale = _field(entry, "scale", (int, float))
    zero_point = _field(entry, "zero_point", int)
    if not math.isfinite(scale) or not 0 <= zero_point <= 255:
        raise SplitError(f"split payload: tensor {name!r} has a malformed scale or zero point")
    values = (data.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    return name, values.astype(dtype.newbyteorder("="), copy=False)
