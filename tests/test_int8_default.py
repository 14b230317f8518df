"""The INT8 person model as the default (what scripts/setup runs): made once with the real
quantizer on the real model, judged against fp32 on frames it was not calibrated on, chosen only
with fidelity >= 0.90; a broken INT8 model (its weight scales corrupted, or a file that does not
load) keeps fp32 and says why; the decision file drives the built-in default model."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.compress.int8_default import (
    CHECK_NEEDS_WORK,
    Settings,
    choose_default,
    decide,
    held_out_frames,
    main,
    make_default,
)
from agent.compress.quantize import QuantizeResult
from agent.default_model import (
    DECISION_FILE,
    FP32_MODEL,
    INT8_MODEL,
    default_model,
    describe_default,
)
from agent.detection.card import load_card
from agent.detection.detector import file_sha256
from tests.conftest import MEDIA, MODELS, ROOT

INT8_CARD = "person-yolov8s-int8.card.yaml"


def _assets(folder: Path) -> Path:
    """A models folder like the checkout's: the real fp32 model, its card, the real media."""
    (folder / "media").mkdir(parents=True)
    (folder / FP32_MODEL).symlink_to(MODELS / FP32_MODEL)
    (folder / "person-yolov8s.card.yaml").write_bytes(
        (MODELS / "person-yolov8s.card.yaml").read_bytes()
    )
    (folder / "media" / "bikes.mp4").symlink_to(MEDIA / "bikes.mp4")
    (folder / "media" / "astronaut.png").symlink_to(MEDIA / "astronaut.png")
    return folder


@pytest.fixture(scope="module")
def made(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """scripts/setup's step on the real model with its real settings, once for the module. What
    setup made in this checkout (its cache, .cache/int8, copied) is restored instead of made
    again: the same code on the same inputs (the cache is keyed by them), a minute less."""
    folder = _assets(tmp_path_factory.mktemp("made") / "models")
    cache = folder.parent / "cache"
    if (ROOT / ".cache" / "int8").is_dir():
        shutil.copytree(ROOT / ".cache" / "int8", cache)
    how, decision = make_default(folder, cache=cache)
    return {"folder": folder, "cache": cache, "how": how, "decision": decision}


def test_setup_makes_the_int8_model_the_default_when_it_keeps_the_detections(
    made: dict[str, Any],
) -> None:
    folder, decision = made["folder"], made["decision"]
    assert made["how"] in ("made", "restored")
    assert decision == json.loads((folder / DECISION_FILE).read_text())
    assert decision["chosen"] == "int8" and decision["model"] == INT8_MODEL, decision["reason"]
    assert decision["fidelity_map50"] >= 0.90
    assert decision["reason"].startswith(f"fidelity {decision['fidelity_map50']:.3f} >= 0.90")
    assert decision["reference"] == {
        "model": FP32_MODEL,
        "sha256": file_sha256(MODELS / FP32_MODEL),
    }
    assert decision["int8"]["sha256"] == file_sha256(folder / INT8_MODEL)
    # judged on frames it was not calibrated on, the photo among them, with people to find
    calibrated = set(decision["calibration"]["frames"])
    judged = decision["evaluation"]["frame_names"]
    assert len(calibrated) == Settings().calib_frames
    assert len(judged) == Settings().eval_frames + 1 and "astronaut.png" in judged
    assert not calibrated & set(judged)
    assert decision["evaluation"]["reference_detections"] >= 10
    # the INT8 model's card says how it was made and how faithful it is
    card = load_card(folder / "person-yolov8s-int8.card.yaml")
    assert card.sha256 == decision["int8"]["sha256"]
    assert card.quantization is not None
    assert card.quantization.fidelity_map50 == decision["fidelity_map50"]
    assert card.quantization.calibration == "percentile on 8 frames of bikes.mp4"
    assert card.labels == load_card(MODELS / "person-yolov8s.card.yaml").labels
    # and the built-in default follows the decision
    assert default_model(folder) == folder / INT8_MODEL


def test_a_second_setup_does_nothing_and_the_cache_restores_the_result(
    made: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, cache = made["folder"], made["cache"]
    int8 = folder / INT8_MODEL
    before = int8.stat().st_mtime_ns
    how, decision = make_default(folder, cache=cache)
    assert how == "up to date" and decision == made["decision"]
    assert int8.stat().st_mtime_ns == before
    capsys.readouterr()
    assert main(["--assets", str(folder), "--check"]) == 0
    said = capsys.readouterr().out
    assert said == f"int8-default: default model {INT8_MODEL} (up to date): {decision['reason']}\n"
    # a clean clone with the cache: restored, not quantized again
    for name in (INT8_MODEL, "person-yolov8s-int8.card.yaml", DECISION_FILE):
        (folder / name).unlink()
    assert default_model(folder) == folder / FP32_MODEL
    assert main(["--assets", str(folder), "--check"]) == CHECK_NEEDS_WORK
    how, decision = make_default(folder, cache=cache)
    assert how == "restored" and decision == made["decision"]
    assert file_sha256(int8) == made["decision"]["int8"]["sha256"]
    assert default_model(folder) == int8


def test_other_settings_or_a_damaged_int8_file_are_not_up_to_date(made: dict[str, Any]) -> None:
    from agent.compress.int8_default import decision_key, up_to_date

    folder = made["folder"]
    key = made["decision"]["key"]
    assert up_to_date(folder, key) is not None
    assert decision_key(folder, Settings(calib_frames=16)) != key
    assert decision_key(folder, Settings(min_fidelity=0.95)) != key
    copy = folder.parent / "damaged"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).symlink_to(f)
    (copy / INT8_MODEL).unlink()
    data = bytearray((folder / INT8_MODEL).read_bytes())
    data[-1] ^= 0xFF
    (copy / INT8_MODEL).write_bytes(bytes(data))
    assert up_to_date(copy, key) is None


def _corrupt_weight_scales(int8: Path, out: Path, factor: float) -> None:
    """The INT8 model with every weight's dequantization scale multiplied by ``factor``: it loads
    and runs, and computes the wrong thing."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(int8))
    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        if numpy_helper.to_array(inits[node.input[0]]).dtype != np.int8:
            continue  # not a weight (activations are u8)
        scale = inits[node.input[1]]
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, scale.name))
        changed += 1
    assert changed > 50, changed  # every conv of YOLOv8s
    onnx.save(model, str(out))
    out.with_name(out.stem + ".card.yaml").write_text(
        (int8.with_name(int8.stem + ".card.yaml"))
        .read_text()
        .replace(file_sha256(int8), file_sha256(out))
    )


@pytest.mark.slow
def test_setup_keeps_fp32_when_its_int8_model_loses_the_detections(
    made: dict[str, Any], tmp_path: Path
) -> None:
    """setup's judging step (what make_default runs once it has quantized) on a real INT8 model
    that lost its detections: the one made above, its weight scales corrupted."""
    folder = tmp_path / "models"
    folder.mkdir()
    made_here = (INT8_MODEL, INT8_CARD, DECISION_FILE)
    for f in made["folder"].iterdir():
        if f.name not in made_here:
            (folder / f.name).symlink_to(f)
    _corrupt_weight_scales(made["folder"] / INT8_MODEL, folder / INT8_MODEL, 3.0)
    calibrated = made["decision"]["calibration"]["frames"]
    result = QuantizeResult(folder / INT8_MODEL, folder / INT8_CARD, "static", [], calibrated)
    decision = decide(folder, result, Settings(eval_frames=16), "key")
    assert decision == json.loads((folder / DECISION_FILE).read_text())
    assert decision["chosen"] == "fp32" and decision["model"] == FP32_MODEL
    fidelity = decision["fidelity_map50"]
    assert fidelity < 0.5, decision  # the corruption, not a borderline frame, turned it down
    assert decision["evaluation"]["reference_detections"] >= 5
    assert decision["reason"].startswith(f"fidelity {fidelity:.3f} < 0.90 (mAP@0.5 against ")
    assert decision["reason"].endswith(
        f"{INT8_MODEL} loses detections; {FP32_MODEL} stays the default"
    )
    assert (folder / INT8_MODEL).is_file()  # made, measured, and not served
    assert default_model(folder) == folder / FP32_MODEL
    assert load_card(folder / INT8_CARD).quantization.fidelity_map50 == fidelity  # type: ignore[union-attr]


def test_an_int8_model_that_cannot_run_keeps_fp32(made: dict[str, Any], tmp_path: Path) -> None:
    folder = made["folder"]
    broken = tmp_path / "truncated-int8.onnx"
    broken.write_bytes((folder / INT8_MODEL).read_bytes()[:100_000])
    (tmp_path / "truncated-int8.card.yaml").write_bytes(
        (folder / "person-yolov8s-int8.card.yaml").read_bytes()
    )
    frames, _ = held_out_frames(folder / "media" / "bikes.mp4", ["0"], 2)
    choice = choose_default(folder / FP32_MODEL, broken, frames)
    assert not choice.int8 and choice.fidelity is None
    assert choice.reason.startswith("truncated-int8.onnx could not be measured (")


def test_default_model_follows_the_decision_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fp32, int8 = tmp_path / FP32_MODEL, tmp_path / INT8_MODEL
    decision = tmp_path / DECISION_FILE
    assert default_model(tmp_path) == fp32  # no decision: fp32
    assert describe_default(tmp_path).startswith(f"{fp32} (fp32): no {DECISION_FILE}; ")
    int8.write_bytes(b"x")
    (tmp_path / "person-yolov8s-int8.card.yaml").write_text("name: person\n")
    decision.write_text(json.dumps({"model": FP32_MODEL, "chosen": "fp32"}))
    assert default_model(tmp_path) == fp32
    decision.write_text(json.dumps({"model": INT8_MODEL, "chosen": "int8", "reason": "faithful"}))
    assert default_model(tmp_path) == int8
    assert describe_default(tmp_path) == f"{int8} (INT8): faithful"
    with caplog.at_level(logging.WARNING, logger="agent.default_model"):
        (tmp_path / "person-yolov8s-int8.card.yaml").unlink()
        assert default_model(tmp_path) == fp32
        assert "person-yolov8s-int8.card.yaml is missing" in caplog.text
        assert describe_default(tmp_path) == f"{fp32} (fp32): {INT8_MODEL} is not there"
        decision.write_text("{not json")
        assert default_model(tmp_path) == fp32
        assert f"{decision}: cannot read it" in caplog.text
        decision.write_text(json.dumps({"model": "../elsewhere.onnx"}))
        assert default_model(tmp_path) == fp32
        assert "is not a file name" in caplog.text


def test_the_daemons_built_in_default_is_the_chosen_model(
    made: dict[str, Any], tmp_path: Path
) -> None:
    """What `edge-agent run` with no config (the demo) serves: the model default-model.json
    chose, read when the package loads."""
    folder = tmp_path / "models"
    folder.mkdir()
    for f in made["folder"].iterdir():
        (folder / f.name).symlink_to(f)
    code = "from agent.config import load_config; print(load_config(None, environ={}).model.path)"
    env = {**os.environ, "EDGE_AGENT_ASSETS": str(folder)}

    def default_path() -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
            check=True,
        )
        return done.stdout.strip()

    assert default_path() == str(folder / INT8_MODEL)
    (folder / DECISION_FILE).unlink()
    (folder / DECISION_FILE).write_text(json.dumps({"model": FP32_MODEL, "chosen": "fp32"}))
    assert default_path() == str(folder / FP32_MODEL)


def test_missing_assets_are_named_and_fp32_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--assets", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"int8-default: {tmp_path / FP32_MODEL}: missing (scripts/fetch-assets puts it there); "
        f"{FP32_MODEL} stays the default\n"
    )
    assert not (tmp_path / DECISION_FILE).exists()
