"""Magnitude pruning: exact zero counts for each rule, outputs of a pruned small model within
tolerance, the sensitivity mode keeping its fidelity, the scan table, and `edge-agent model
prune` end to end (its output loads and publishes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import load, numpy_helper

from agent.compress import prune as pr
from agent.compress.frames import sample_frames
from agent.compress.quantize import calibration_feeds, model_card
from agent.detection import Detector
from agent.detection.card import load_card
from agent.detection.detector import file_sha256
from agent.errors import CompressError
from tests import compress_models
from tests.conftest import ROOT

# Max output change of the tiny model at 20% global sparsity (boxes in px of 64, scores 0..1).
BOX_TOLERANCE_PX = 2.0
SCORE_TOLERANCE = 0.05


def zeros_in(model: Path) -> dict[str, tuple[int, int]]:
    """Initializer name -> (size, zeros), read back from the saved file."""
    return {
        t.name: (int(a.size), int(np.count_nonzero(a == 0)))
        for t in load(str(model)).graph.initializer
        for a in [numpy_helper.to_array(t)]
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("prune")
    return compress_models.tiny_yolo(d), compress_models.image_folder(d / "images", count=8)


def test_rules_zero_exactly_what_they_say() -> None:
    rng = np.random.default_rng(0)
    w = {
        "a": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "b": np.ones((5, 5), np.float32),
    }
    w["b"][0] = 0.01  # a layer whose weights are mostly equal: ties must not change the count
    t = pr.by_threshold(w, 0.5)
    for k in w:
        small = np.abs(w[k]) < 0.5
        assert np.all(t[k][small] == 0) and np.array_equal(t[k][~small], w[k][~small])
    layer = pr.by_layer_sparsity(w, {"a": 0.3, "b": 0.5})
    assert np.count_nonzero(layer["a"] == 0) == round(0.3 * 288)
    assert np.count_nonzero(layer["b"] == 0) == round(0.5 * 25)
    kept = layer["a"][layer["a"] != 0]
    assert np.abs(kept).min() >= np.abs(w["a"][layer["a"] == 0]).max()  # the smallest went
    glob = pr.by_global_sparsity(w, 0.4)
    assert sum(np.count_nonzero(glob[k] == 0) for k in w) == round(0.4 * (288 + 25))
    # one threshold: the five 0.01 weights go first, the ones of "b" (large) last
    assert np.count_nonzero(glob["b"] == 0) == 5
    assert np.array_equal(w["a"], pr.by_layer_sparsity(w, {"a": 0.0})["a"])
    with pytest.raises(CompressError):
        pr.by_global_sparsity(w, 1.0)
    with pytest.raises(CompressError):
        pr.by_threshold(w, -1)


def test_prune_writes_exact_sparsity_and_a_card(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = tiny
    before = zeros_in(model)
    result = pr.prune(model, tmp_path / "half.onnx", sparsity=0.5, per_layer=True)
    after = zeros_in(result.model)
    weights = {x.weight for x in result.layers}
    assert weights == {"w0", "w1", "box0", "cls0", "box1", "cls1"}
    for layer in result.layers:
        size, zeros = after[layer.weight]
        assert (layer.size, layer.zeros) == (size, zeros) == (size, round(0.5 * size))
    # nothing else touched: biases, constants
    assert {k: v for k, v in after.items() if k not in weights} == {
        k: v for k, v in before.items() if k not in weights
    }
    total = result.total
    assert total.zeros == sum(after[w][1] for w in weights)
    card = load_card(result.card)
    assert card.sha256 == file_sha256(result.model) and card.labels == compress_models.LABELS
    assert card.notes is not None and "50% of each layer" in card.notes


def test_small_sparsity_keeps_outputs_within_tolerance(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    model, images = tiny
    result = pr.prune(model, tmp_path / "p20.onnx", sparsity=0.2)
    assert result.total.zeros == round(0.2 * result.total.size)
    feeds = calibration_feeds(model, model_card(model), sample_frames(images, 4))
    for feed in feeds:
        a = compress_models.run(model, feed["images"])
        b = compress_models.run(result.model, feed["images"])
        assert np.abs(a[0, :4] - b[0, :4]).max() < BOX_TOLERANCE_PX
        assert np.abs(a[0, 4:] - b[0, 4:]).max() < SCORE_TOLERANCE
        assert not np.array_equal(a, b)  # it did change something


def test_threshold_rule_on_a_model(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = tiny
    result = pr.prune(model, tmp_path / "t.onnx", threshold=0.1)
    original = {t.name: numpy_helper.to_array(t) for t in load(str(model)).graph.initializer}
    for layer in result.layers:
        assert layer.zeros == int(np.count_nonzero(np.abs(original[layer.weight]) < 0.1))
    with pytest.raises(CompressError, match="exactly one"):
        pr.prune(model, tmp_path / "x.onnx", threshold=0.1, sparsity=0.1)
    with pytest.raises(CompressError, match="overwrite"):
        pr.prune(model, model, sparsity=0.1)


def test_yolo_decoding_weights_are_left_dense(assets: Path) -> None:
    weights = pr.Weights(assets / "person-yolov8s.onnx", "yolo")
    assert weights.skipped == ["/model.22/dfl/conv/Conv: fixed yolo box-decoding weights"]
    assert "model.22.dfl.conv.weight" not in weights.original
    assert len(weights.layers) == 63


def test_sensitivity_mode_keeps_the_fidelity_asked_for(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    model, images = tiny
    lines: list[str] = []
    result = pr.sensitivity_prune(
        model, tmp_path / "s.onnx", data=images, min_fidelity=0.9, frames=6, progress=lines.append
    )
    assert result.fidelity is not None and result.fidelity >= 0.9
    assert len(result.scan) >= len(result.layers)  # every layer was tried alone
    assert set(result.levels) == {x.node for x in result.layers}
    for x in result.layers:
        assert x.zeros == round(result.levels[x.node] * x.size)
    assert result.total.sparsity > 0
    assert lines[-1].startswith("all layers together") and f"{result.fidelity:.3f}" in lines[-1]


def test_scan_reports_each_sparsity(tiny: tuple[Path, Path]) -> None:
    model, images = tiny
    base, rows = pr.sparsity_scan(model, [0.2, 0.6], images, frames=8, calib_frames=3)
    assert [r.sparsity for r in rows] == [0.2, 0.6]
    assert base.map50 == 1.0 and base.frames == 5  # 8 images less the 3 calibration ones
    for r in rows:
        assert r.int8 is not None and r.fp32.map50 is not None and r.int8.map50 is not None
        assert r.fp32.size_bytes == base.size_bytes  # zeros are still stored...
        assert r.int8.zstd_bytes < r.fp32.zstd_bytes  # ...but compress
    assert rows[1].fp32.zstd_bytes < rows[0].fp32.zstd_bytes < base.zstd_bytes
    table = pr.scan_table(base, rows)
    assert "| 20% |" in table and "| 60% |" in table and "0 (original)" in table


def test_prune_command_end_to_end(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = tiny
    out = tmp_path / "pruned.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "model", "prune", str(model), "-o", str(out),
         "--sparsity", "0.3", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["zeros"] == round(0.3 * report["weights"])
    assert report["zeros"] == sum(x["zeros"] for x in report["layers"])
    assert sum(zeros_in(out)[x["weight"]][1] for x in report["layers"]) == report["zeros"]
    assert Detector.load(out).card.name == "tiny"

    key = tmp_path / "pub.key"
    for args in (
        ["keygen", "--out", str(key)],
        ["publish", str(out), "--registry", str(tmp_path / "reg"), "--name", "tiny",
         "--version", "1.0.0", "--key", str(key)],
    ):  # fmt: skip
        step = subprocess.run(
            [sys.executable, "-m", "agent", "registry", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert step.returncode == 0, step.stderr

    table = subprocess.run(
        [sys.executable, "-m", "agent", "model", "prune", str(model), "-o", str(out),
         "--threshold", "0.05"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "| layer | weights | zeros | sparsity |" in table.stdout
    assert "|w| < 0.05 -> 0" in table.stdout

    bad = subprocess.run(
        [sys.executable, "-m", "agent", "model", "prune", str(model), "-o", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "give one of --threshold" in bad.stderr
