"""The split payload: tensors survive the trip as each coding promises, and anything malformed is
refused with SplitError, never a crash."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SplitError
from agent.split.codec import MAGIC, decode, encode, quantize_uint8


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "skip": (rng.standard_normal((1, 8, 20, 20)) * 3).astype(np.float32),
        "relu": np.maximum(rng.standard_normal((1, 16, 10, 10)), 0).astype(np.float32),
        "ids": np.arange(12, dtype=np.int64).reshape(3, 4),
        "half": rng.standard_normal((5,)).astype(np.float16),
    }


def test_raw_round_trip_is_exact_and_keeps_order_and_meta(tensors: dict[str, np.ndarray]) -> None:
    meta = {"frame": 12, "cut": "c57", "ts": 1.5}
    got_meta, got = decode(encode(meta, tensors, "raw"))
    assert got_meta == meta
    assert list(got) == list(tensors)
    for name, a in tensors.items():
        assert got[name].dtype == a.dtype
        assert got[name].shape == a.shape
        np.testing.assert_array_equal(got[name], a)


def test_fp16_is_within_half_precision(tensors: dict[str, np.ndarray]) -> None:
    _, got = decode(encode({}, tensors, "fp16"))
    for name in ("skip", "relu"):
        np.testing.assert_allclose(got[name], tensors[name], rtol=1e-3, atol=1e-3)
        assert got[name].dtype == np.float32
    np.testing.assert_array_equal(got["ids"], tensors["ids"])  # integers always go raw


def test_int8_error_is_at_most_half_a_step(tensors: dict[str, np.ndarray]) -> None:
    payload = encode({}, tensors, "int8")
    header = json.loads(payload[9 : 9 + struct.unpack_from("<I", payload, 5)[0]])
    steps = {t["name"]: t for t in header["tensors"]}
    assert steps["ids"]["method"] == "raw"
    _, got = decode(payload)
    for name in ("skip", "relu"):
        assert steps[name]["method"] == "int8"
        err = np.abs(got[name] - tensors[name]).max()
        assert err <= steps[name]["scale"] / 2 + 1e-6
    # ReLU outputs keep their exact zeros (zero is representable), a quarter of the raw size.
    assert (got["relu"][tensors["relu"] == 0] == 0).all()
    assert steps["relu"]["length"] == tensors["relu"].size


def test_int8_compresses_far_below_raw(tensors: dict[str, np.ndarray]) -> None:
    sizes = {m: len(encode({}, tensors, m)) for m in ("int8", "fp16", "raw")}
    assert sizes["int8"] < sizes["fp16"] < sizes["raw"]
    assert sizes["int8"] < 0.35 * sum(a.nbytes for a in tensors.values())


def test_constant_and_non_finite_tensors_survive_int8() -> None:
    zeros = np.zeros((4, 4), np.float32)
    weird = np.array([1.0, np.inf, -2.0, np.nan], np.float32)
    _, got = decode(encode({}, {"zeros": zeros, "weird": weird}, "int8"))
    np.testing.assert_array_equal(got["zeros"], zeros)
    np.testing.assert_array_equal(got["weird"], weird)  # sent raw: nan == nan here
    q, scale, zp = quantize_uint8(np.full((3,), 5.0, np.float32))
    assert (q.astype(np.float32) - zp) * scale == pytest.approx([5.0] * 3, abs=5 / 255)


def test_unknown_codec_and_unserialisable_meta_are_refused(tensors: dict[str, np.ndarray]) -> None:
    with pytest.raises(SplitError, match="unknown codec"):
        encode({}, tensors, "bf16")  # type: ignore[arg-type]
    with pytest.raises(SplitError, match="not JSON"):
        encode({"when": object()}, tensors)
    with pytest.raises(SplitError, match="not JSON"):
        encode({"x": float("nan")}, tensors)


def _rebuild(payload: bytes, edit: dict[str, object]) -> bytes:
    """``payload`` with its header's first tensor entry changed by ``edit``."""
    (length,) = struct.unpack_from("<I", payload, 5)
    header = json.loads(payload[9 : 9 + length])
    header["tensors"][0].update(edit)
    new = json.dumps(header).encode()
    return payload[:5] + struct.pack("<I", len(new)) + new + payload[9 + length :]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p[:5], "too short"),
        (lambda p: b"XXXX" + p[4:], "wrong magic"),
        (lambda p: p[:4] + b"\x09" + p[5:], "version 9"),
        (lambda p: p[:5] + struct.pack("<I", 1 << 30) + p[9:], "does not fit"),
        (lambda p: p[:9] + b"}" + p[10:], "not JSON"),
        (lambda p: p[:-20], "one whole frame"),
        (lambda p: p + b"trailing", "one whole frame"),
        (lambda p: p[: 9 + struct.unpack_from("<I", p, 5)[0]] + b"junk" * 4, "body"),
        (lambda p: _rebuild(p, {"length": 10}), "needs"),
        (lambda p: _rebuild(p, {"offset": 10**9}), "outside the body"),
        (lambda p: _rebuild(p, {"shape": [1, -8]}), "malformed shape"),
        (lambda p: _rebuild(p, {"dtype": "object"}), "dtype"),
        (lambda p: _rebuild(p, {"scale": "big"}), "'scale'"),
        (lambda p: _rebuild(p, {"zero_point": 300}), "zero point"),
        (lambda p: _rebuild(p, {"name": None}), "'name'"),
    ],
    ids=[
        "truncated-prefix",
        "magic",
        "version",
        "header-length",
        "header-json",
        "truncated-body",
        "trailing-bytes",
        "body-not-zstd",
        "size-mismatch",
        "offset",
        "shape",
        "dtype",
        "scale",
        "zero-point",
        "name",
    ],
)
def test_malformed_payloads_are_refused(
    tensors: dict[str, np.ndarray], mutate: object, message: str
) -> None:
    payload = encode({"frame": 1}, tensors, "int8")
    assert callable(mutate)
    with pytest.raises(SplitError, match=message):
        decode(mutate(payload))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=400))
def test_any_bytes_decode_or_raise_split_error(noise: bytes, cut: int) -> None:
    good = encode({"frame": 1}, {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "int8")
    for candidate in (noise, MAGIC + b"\x01" + noise, good[:cut] + noise):
        with contextlib.suppress(SplitError):
            decode(candidate)
