"""Evaluation: COCO mAP by pycocotools on hand-made cases with known answers, labels files,
fidelity against a reference model, the report's figures and the `edge-agent model eval`
command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.compress.evaluate import (
    Candidate,
    EvalReport,
    coco_map,
    compare,
    evaluate,
    load_labels,
    markdown_table,
    zstd_size,
)
from agent.detection.types import Detection
from agent.errors import CompressError
from tests import compress_models, modelgen
from tests.conftest import ROOT


def det(
    box: tuple[float, float, float, float], score: float = 0.9, label: str = "person"
) -> Detection:
    return Detection(label, 0, score, box)


A = (0.1, 0.1, 0.3, 0.3)
B = (0.6, 0.6, 0.9, 0.9)
FAR = (0.5, 0.0, 0.6, 0.1)
# 101-point interpolated AP when half the objects are found at full precision: recall points
# 0.00..0.50 (51 of 101) have precision 1, the rest 0.
HALF = 51 / 101


def shifted(
    box: tuple[float, float, float, float], iou: float
) -> tuple[float, float, float, float]:
    """``box`` moved right so that its IoU with the original is ``iou``: overlap o = w - d,
    IoU = o / (2w - o)."""
    w = box[2] - box[0]
    d = w - 2 * w * iou / (1 + iou)
    return (box[0] + d, box[1], box[2] + d, box[3])


def test_perfect_predictions_score_one() -> None:
    truths = [[det(A), det(B)], [det(B)]]
    assert coco_map(truths, truths) == pytest.approx((1.0, 1.0))


def test_one_miss_of_two_halves_recall() -> None:
    m50, m5095 = coco_map([[det(A)]], [[det(A), det(B)]])
    assert m50 == pytest.approx(HALF, abs=1e-6)
    assert m5095 == pytest.approx(HALF, abs=1e-6)


def test_false_positive_ranked_below_every_hit_costs_nothing() -> None:
    assert coco_map([[det(A, 0.9), det(FAR, 0.2)]], [[det(A)]])[0] == pytest.approx(1.0)


def test_false_positive_ranked_above_the_hit_halves_precision() -> None:
    # precision 0.5 at recall 1: every recall point interpolates to 0.5
    assert coco_map([[det(FAR, 0.9), det(A, 0.5)]], [[det(A)]])[0] == pytest.approx(0.5)


def test_a_box_shifted_below_iou_half_is_a_miss_and_above_it_a_hit() -> None:
    assert coco_map([[det(shifted(A, 0.45))]], [[det(A)]]) == pytest.approx((0.0, 0.0))
    m50, m5095 = coco_map([[det(shifted(A, 0.62))]], [[det(A)]])
    assert m50 == pytest.approx(1.0)
    # a hit at IoU thresholds 0.50, 0.55, 0.60: three of the ten
    assert m5095 == pytest.approx(0.3)


def test_the_wrong_label_is_a_miss() -> None:
    assert coco_map([[det(A, label="car")]], [[det(A)]])[0] == pytest.approx(0.0)


def test_empty_cases() -> None:
    assert coco_map([[], []], [[], []]) == (1.0, 1.0)  # nothing to find, nothing found
    assert coco_map([[det(A)]], [[]]) == (0.0, 0.0)
    assert coco_map([[]], [[det(A)]]) == (0.0, 0.0)
    with pytest.raises(CompressError):
        coco_map([[]], [[], []])


def test_pycocotools_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    coco_map([[det(A)]], [[det(A), det(B)]])
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_labels_file_is_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "labels.json"
    good.write_text(
        json.dumps({"images": {"a.png": [{"label": "person", "box": list(A)}], "3": []}})
    )
    labels = load_labels(good)
    assert labels["a.png"][0].box == A and labels["a.png"][0].label == "person"
    assert labels["3"] == []
    for bad in (
        {"frames": {}},
        {"images": {}},
        {"images": {"a": [{"label": "x", "box": [0.5, 0.1, 0.2, 0.3]}]}},  # x1 > x2
        {"images": {"a": [{"label": "x", "box": [0, 0, 1.5, 1]}]}},  # outside the frame
        {"images": {"a": [{"box": [0, 0, 1, 1]}]}},  # no label
    ):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(CompressError):
            load_labels(tmp_path / "bad.json")


# -------------------------------------------------------------- on a small generated model


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A constant yolo model (one known box on every frame), its card, an image folder."""
    d = tmp_path_factory.mktemp("eval")
    model = modelgen.yolo_v8_onnx(d, modelgen.example_yolo_v8(), name="const")
    (d / "const.card.yaml").write_text(
        "name: const\nfamily: yolo\nlabels: [person, car]\n"
        "input: {width: 64, height: 64, layout: NCHW}\n"
    )
    images = compress_models.image_folder(d / "images", count=4)
    return model, d / "const.card.yaml", images


# example_yolo_v8: centre (32, 32), size 16 x 8 on a 64 x 64 input; the test images are 80 x 48,
# letterboxed to 64 x 38.4 (pad 12.8 above): x = (32 -+ 8) / 64, y = (32 -+ 4 - 12.8) / 38.4
KNOWN = (0.375, (28 - 12.8) / 38.4, 0.625, (36 - 12.8) / 38.4)


def test_evaluate_against_labels_finds_the_known_box(small: tuple[Path, Path, Path]) -> None:
    model, card, images = small
    names = sorted(p.name for p in images.iterdir())
    labels = images.parent / "labels.json"
    labels.write_text(
        json.dumps({"images": {n: [{"label": "person", "box": list(KNOWN)}] for n in names}})
    )
    report = evaluate(model, images, labels=labels, card=card)
    assert report.map50 == pytest.approx(1.0)
    assert report.map5095 > 0.9
    assert report.frames == len(names) and report.detections == len(names)
    assert report.truth == "labels labels.json"
    assert report.size_bytes == model.stat().st_size
    assert 0 < report.zstd_bytes == zstd_size(model)
    assert report.latency_ms_p95 >= report.latency_ms_p50 > 0
    assert report.rss_mb > 0

    # The same objects labelled as cars, and one image with an extra person nobody finds.
    labels.write_text(
        json.dumps(
            {
                "images": {
                    names[0]: [{"label": "car", "box": list(KNOWN)}],
                    names[1]: [
                        {"label": "person", "box": list(KNOWN)},
                        {"label": "person", "box": [0.0, 0.0, 0.1, 0.1]},
                    ],
                }
            }
        )
    )
    report = evaluate(model, images, labels=labels, card=card)
    assert report.frames == 2
    # person: found 1 of 2 at full precision (the prediction on names[0] ranks equal: COCO keeps
    # the order, so it may come first) -> at most HALF; car: never predicted -> 0.
    assert report.map50 is not None and report.map50 < 0.5


def test_unknown_labelled_image_is_refused(small: tuple[Path, Path, Path]) -> None:
    model, card, images = small
    labels = images.parent / "unknown.json"
    labels.write_text(json.dumps({"images": {"missing.png": []}}))
    with pytest.raises(CompressError, match=r"missing\.png"):
        evaluate(model, images, labels=labels, card=card)


def test_fidelity_against_a_reference(small: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, card, images = small
    moved = modelgen.example_yolo_v8()
    moved[0, :2, 0] = [12, 50]  # the box elsewhere: no overlap with the reference's
    other = modelgen.yolo_v8_onnx(tmp_path, moved, name="moved")
    ref = Candidate(model, card, "reference")
    same, elsewhere = compare(
        [ref, Candidate(other, card, "moved")], images, reference=ref, frames=3
    )
    assert (same.map50, same.map5095) == (1.0, 1.0)
    assert same.truth == "reference reference"
    assert elsewhere.map50 == 0.0
    assert same.frames == elsewhere.frames == 3
    table = markdown_table([same, elsewhere])
    assert "| reference | 1.000 | 1.000 |" in table and "| moved | 0.000 |" in table


def test_without_labels_or_reference_there_is_no_map(small: tuple[Path, Path, Path]) -> None:
    model, card, images = small
    report = evaluate(model, images, card=card, frames=2)
    assert report.map50 is None and report.truth == "none"
    assert "| - | - |" in markdown_table([report])


def test_report_keys_are_stable() -> None:
    keys = set(EvalReport.__dataclass_fields__)
    assert {
        "name",
        "size_bytes",
        "zstd_bytes",
        "map50",
        "map5095",
        "latency_ms_p50",
        "latency_ms_p95",
        "rss_mb",
        "frames",
    } <= keys


def test_eval_command_prints_json_lines(small: tuple[Path, Path, Path]) -> None:
    model, card, images = small
    done = subprocess.run(
        [
            sys.executable, "-m", "agent", "model", "eval", str(model), str(model),
            "--data", str(images), "--reference", str(model), "--card", str(card),
            "--frames", "2", "--json",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 2
    assert lines[0]["map50"] == 1.0 and lines[0]["frames"] == 2
    table = subprocess.run(
        [sys.executable, "-m", "agent", "model", "eval", str(model), "--data", str(images),
         "--card", str(card), "--frames", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("| model | mAP@0.5 |")


def test_eval_command_reports_bad_data(small: tuple[Path, Path, Path]) -> None:
    model, _, _ = small
    done = subprocess.run(
        [sys.executable, "-m", "agent", "model", "eval", str(model), "--data", "/nonexistent"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("edge-agent: ") and "/nonexistent" in done.stderr


def test_frames_without_objects_agree_when_nothing_is_reported(tmp_path: Path) -> None:
    """A reference that finds nothing and a candidate that reports nothing at its card's
    threshold agree fully, though the candidate has low-score candidates below it."""
    faint = modelgen.example_yolo_v8()
    faint[0, 4, 0] = 0.2  # under the default threshold 0.5, above the ranking floor
    ref_out = modelgen.example_yolo_v8()
    ref_out[0, 4, 0] = 0.0
    card = tmp_path / "c.card.yaml"
    card.write_text(
        "name: c\nfamily: yolo\nlabels: [person, car]\ninput: {width: 64, height: 64, layout: NCHW}\n"
    )
    faint_model = modelgen.yolo_v8_onnx(tmp_path, faint, name="faint")
    empty_model = modelgen.yolo_v8_onnx(tmp_path, ref_out, name="empty")
    images = compress_models.image_folder(tmp_path / "images", count=2)
    ref = Candidate(empty_model, card, "empty")
    _, report = compare([ref, Candidate(faint_model, card, "faint")], images, reference=ref)
    assert report.map50 == 1.0 and report.detections == 0
