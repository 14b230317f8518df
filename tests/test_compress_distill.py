"""Distillation: the loss on tensors worked out by hand, the placement of pseudo-labels and of the
teacher's class map on the student's cells, and short real runs on a tiny generated teacher that
finds bright squares, through the library and through the command line."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from agent.cli import main  # noqa: E402
from agent.compress.distill import (  # noqa: E402
    DistillOptions,
    distill,
    match_pseudo_boxes,
    teacher_class_map,
)
from agent.compress.distill_student import (  # noqa: E402
    STRIDE,
    anchor_points,
    assign_targets,
    distillation_loss,
    giou,
)
from agent.detection import Detector  # noqa: E402
from agent.detection.card import load_card  # noqa: E402
from agent.detection.preprocess import Transform  # noqa: E402
from agent.detection.types import Candidates  # noqa: E402
from agent.errors import CompressError  # noqa: E402

SQUARE = 16  # side of the bright squares, in the teacher's input pixels
LEVELS = ((8, 8), (16, 4), (32, 2))  # YOLOv8 grids of a 64x64 input: stride, cells per side


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def _bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------- loss


def test_giou_of_known_boxes() -> None:
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1]])
    b = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [2, 0, 3, 1]])
    # equal: 1; overlap 1 of union 7 inside a 3x3 hull: 1/7 - 2/9; apart: 0 - (3-2)/3
    expected = [1.0, 1 / 7 - 2 / 9, -1 / 3]
    assert giou(a, b).tolist() == pytest.approx(expected, abs=1e-6)


def test_distillation_loss_matches_hand_computed_terms() -> None:
    # Two cells, one class. Cell 0 is positive (pseudo box, class 1); cell 1 is background.
    student_logits = torch.tensor([[[0.0], [2.0]]])
    student_boxes = torch.tensor([[[1.0, 1, 3, 3], [0, 0, 1, 1]]])
    teacher_probs = torch.tensor([[[0.5], [0.8]]])
    target_classes = torch.tensor([[[1.0], [0.0]]])
    target_boxes = torch.tensor([[[0.0, 0, 2, 2], [0, 0, 0, 0]]])
    positive = torch.tensor([[True, False]])
    parts = distillation_loss(
        student_logits,
        student_boxes,
        teacher_probs,
        target_classes,
        target_boxes,
        positive,
        alpha=0.5,
        temperature=2.0,
        box_weight=2.0,
    )
    cls = _bce(0.0, 1.0) + _bce(2.0, 0.0)  # log 2 + log(1 + e^2), over 1 positive
    box = 1 - (1 / 7 - 2 / 9)
    # Teacher logits log(0.5/0.5) = 0 and log(0.8/0.2) = log 4, softened by T = 2.
    soft = _bernoulli_kl(_sigmoid(0 / 2), _sigmoid(0.0 / 2)) + _bernoulli_kl(
        _sigmoid(math.log(4) / 2), _sigmoid(2.0 / 2)
    )
    assert float(parts.cls) == pytest.approx(cls, rel=1e-5)
    assert float(parts.cls) == pytest.approx(math.log(2) + math.log(1 + math.e**2), rel=1e-5)
    assert float(parts.box) == pytest.approx(box, rel=1e-5)
    assert float(parts.soft) == pytest.approx(soft, rel=1e-4)
    assert float(parts.soft) == pytest.approx(0.0100809, rel=1e-3)  # 2/3 ln(...) + 1/3 ln(...)
    assert float(parts.total) == pytest.approx(cls + 2.0 * box + 0.5 * 4.0 * soft, rel=1e-5)


def test_distillation_loss_normalises_by_positives_and_softens_with_temperature() -> None:
    logits = torch.tensor([[[1.0], [-1.0], [3.0]]])
    probs = torch.sigmoid(logits)  # the student already says what the teacher says
    targets = torch.tensor([[[1.0], [1.0], [0.0]]])
    boxes = torch.tensor([[[0.0, 0, 4, 4]] * 3])
    positive = torch.tensor([[True, True, False]])
    same = distillation_loss(
        logits, boxes, probs, targets, boxes, positive, alpha=1.0, temperature=3.0
    )
    assert float(same.soft) == pytest.approx(0.0, abs=1e-6)
    assert float(same.box) == pytest.approx(0.0, abs=1e-6)
    expected_cls = (_bce(1.0, 1) + _bce(-1.0, 1) + _bce(3.0, 0)) / 2  # two positive cells
    assert float(same.cls) == pytest.approx(expected_cls, rel=1e-5)
    # A confident teacher (p = 0.99, logit ln 99) against an unsure student (logit 0): softer
    # targets at a higher temperature, so the raw KL shrinks while T^2 scales it back up.
    teacher = torch.full((1, 1, 1), 0.99)
    student = torch.zeros((1, 1, 1))
    none = torch.zeros((1, 1), dtype=torch.bool)
    zero_box = torch.zeros((1, 1, 4))
    for t in (1.0, 4.0):
        parts = distillation_loss(
            student,
            zero_box,
            teacher,
            torch.zeros(1, 1, 1),
            zero_box,
            none,
            alpha=1.0,
            temperature=t,
        )
        kl = _bernoulli_kl(_sigmoid(math.log(99) / t), 0.5)
        assert float(parts.soft) == pytest.approx(kl, rel=1e-4)
        assert float(parts.total) == pytest.approx(_bce(0.0, 0.0) + t * t * kl, rel=1e-4)


# ---------------------------------------------------------------------- targets and maps


def test_pseudo_boxes_claim_cells_near_their_centre_and_small_boxes_win() -> None:
    anchors = anchor_points(64, 64)  # 8x8 cells of 8 px, centres at 4, 12, ..., 60
    big = [0.0, 0.0, 64.0, 64.0]  # centre (32, 32): cells less than 2.5 strides away
    small = [29.0, 29.0, 31.0, 31.0]  # no cell centre inside: it gets the nearest, (28, 28)
    targets = assign_targets(anchors, np.array([big, small], np.float32), np.array([0, 1]), 2)
    grid = targets.positive.reshape(8, 8)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True  # |centre - 32| < 20: 20, 28, 36, 44
    assert (grid == expected).all()
    nearest = 3 * 8 + 3  # centre (28, 28), which the small box takes from the big one
    assert targets.classes[nearest].tolist() == [0.0, 1.0]
    assert targets.boxes[nearest].tolist() == small
    others = targets.positive.copy()
    others[nearest] = False
    assert (targets.classes[others] == [1.0, 0.0]).all()
    assert (targets.boxes[others] == big).all()
    empty = assign_targets(anchors, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 2)
    assert not empty.positive.any()


def _yolo_output(levels: list[np.ndarray]) -> np.ndarray:
    """A [4+1, N] YOLOv8 output whose one class map per level is given (boxes zero)."""
    scores = np.concatenate([lv.reshape(-1) for lv in levels])
    return np.concatenate([np.zeros((4, len(scores)), np.float32), scores[None]], 0)


def _identity(size: int) -> Transform:
    return Transform(size, size, size, size, 1.0, 1.0, 0.0, 0.0)


def test_teacher_class_map_on_cells_of_the_same_size_takes_the_best_grid() -> None:
    rng = np.random.default_rng(1)
    p3, p4, p5 = (rng.random((n, n), dtype=np.float32) * 0.5 for _, n in LEVELS)
    p5[0, 0] = 0.9  # the top-left 32 px: the coarse grid wins there
    output = _yolo_output([p3, p4, p5])
    got = teacher_class_map(output, (64, 64), _identity(64), _identity(64))
    assert got.shape == (64, 1)
    cells = got[:, 0].reshape(8, 8)
    rows, cols = np.indices((8, 8))
    # student cell (r, c) covers teacher P3 cell (r, c), P4 (r//2, c//2), P5 (r//4, c//4)
    expected = np.maximum(np.maximum(p3, p4[rows // 2, cols // 2]), p5[rows // 4, cols // 4])
    assert np.allclose(cells, expected)
    assert (cells[:4, :4] == np.float32(0.9)).all()


def test_teacher_class_map_on_a_half_size_letterboxed_student() -> None:
    # A 64x32 frame: the teacher (64) sees it at scale 1 with 16 px bands above and below; the
    # student (32) at scale 1/2 with 8 px bands. Only P3 scores; student cells are 2x2 P3 cells.
    p3 = np.zeros((8, 8), np.float32)
    p3[2, 3] = 0.7  # teacher px x 24..32, y 16..24 = frame y 0..8 -> student x 12..16, y 8..12
    p3[7, 7] = 0.8  # inside the teacher's lower band, which the student also pads
    output = _yolo_output([p3, np.zeros((4, 4), np.float32), np.zeros((2, 2), np.float32)])
    teacher_tf = Transform(64, 32, 64, 64, 1.0, 1.0, 0.0, 16.0)
    student_tf = Transform(64, 32, 32, 32, 0.5, 0.5, 0.0, 8.0)
    got = teacher_class_map(output, (64, 64), teacher_tf, student_tf)[:, 0].reshape(4, 4)
    expected = np.zeros((4, 4), np.float32)
    expected[1, 1] = 0.7  # student y 8..16 = teacher y 16..32 (P3 rows 2, 3), x 8..16 -> 16..32
    expected[3, 3] = 0.8  # student y 24..32 = teacher 48..64: P3 row 6, 7
    assert np.allclose(got, expected)


def test_calibration_counts_a_pseudo_box_found_once_by_the_best_detection() -> None:
    # Input 100 px; detections as 0..1 of it, highest score first (as NMS returns them).
    kept = Candidates(
        np.array([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.6, 0.6, 0.8, 0.8]], np.float32),
        np.array([0.9, 0.8, 0.7], np.float32),
        np.array([0, 0, 1]),
    )
    boxes = np.array([[10, 10, 30, 30], [60, 60, 80, 80]], np.float32)
    # The second detection overlaps the same box (already found); the third has the wrong class.
    assert match_pseudo_boxes(kept, boxes, np.array([0, 0]), 100).tolist() == [True, False, False]
    assert match_pseudo_boxes(kept, boxes, np.array([0, 1]), 100).tolist() == [True, False, True]


# -------------------------------------------------------------------- tiny teacher, real runs


def _tiny_teacher(directory: Path) -> Path:
    """A real ONNX YOLOv8-format detector of bright squares: per cell of the three grids, class 0
    scores sigmoid(12 (mean brightness - 0.3)), class 1 scores 0.01, and the box is a 16 px
    square on the cell centre."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    nodes = [helper.make_node("ReduceMean", ["images"], ["gray"], axes=[1], keepdims=1)]
    init = [
        numpy_helper.from_array(np.array([1, 1, -1], np.int64), "flat"),
        numpy_helper.from_array(np.array(0.3, np.float32), "level"),
        numpy_helper.from_array(np.array(12.0, np.float32), "gain"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(-4.6, np.float32), "low"),
    ]
    centres = []
    for stride, n in LEVELS:
        nodes += [
            helper.make_node(
                "AveragePool",
                ["gray"],
                [f"pool{stride}"],
                kernel_shape=[stride] * 2,
                strides=[stride] * 2,
            ),
            helper.make_node("Reshape", [f"pool{stride}", "flat"], [f"mean{stride}"]),
        ]
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        centres.append(np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride]))
    xy = np.concatenate(centres, 1)
    boxes = np.concatenate([xy, np.full_like(xy, SQUARE)], 0)[None].astype(np.float32)
    init.append(numpy_helper.from_array(boxes, "boxes"))
    nodes += [
        helper.make_node("Concat", ["mean8", "mean16", "mean32"], ["mean"], axis=2),
        helper.make_node("Sub", ["mean", "level"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["raw0"]),
        helper.make_node("Sigmoid", ["raw0"], ["score0"]),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "low"], ["raw1"]),
        helper.make_node("Sigmoid", ["raw1"], ["score1"]),
        helper.make_node("Concat", ["boxes", "score0", "score1"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "squares",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 84])],
        initializer=init,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, producer_name="test"
    )
    checker.check_model(model, full_check=True)
    path = directory / "squares.onnx"
    save(model, str(path))
    card = {
        "name": "squares",
        "version": "1.0.0",
        "family": "yolo",
        "yolo_version": "v8",
        "input": {"width": 64, "height": 64, "layout": "NCHW", "pad_value": 0},
        "labels": ["square", "other"],
        "thresholds": {"score": 0.5, "iou": 0.45},
        "license": "MIT (test model)",
    }
    (directory / "squares.card.yaml").write_text(yaml.safe_dump(card))
    return path


def _square_frames(directory: Path, count: int, seed: int = 0) -> Path:
    """96x64 frames (letterboxed to 64x43 by the teacher): dark noise and one or two bright
    24 px squares (16 px in the teacher's input) at random places."""
    rng = np.random.default_rng(seed)
    folder = directory / "frames"
    folder.mkdir()
    for i in range(count):
        image = rng.integers(0, 40, (64, 96, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            x, y = int(rng.integers(0, 96 - 24)), int(rng.integers(0, 64 - 24))
            image[y : y + 24, x : x + 24] = 255
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("distill")
    return _tiny_teacher(directory), _square_frames(directory, 40)


OPTIONS = DistillOptions(
    input_size=64, width=8, epochs=12, batch_size=8, lr=1e-2, frames=32, holdout=8, threads=1
)


def test_short_distillation_lowers_the_loss_and_exports_a_student_the_agent_runs(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    teacher, frames = tiny
    torch.set_num_threads(1)
    result = distill(teacher, frames, tmp_path / "student.onnx", OPTIONS)
    losses = [e.total for e in result.epochs]
    assert len(losses) == OPTIONS.epochs
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.pseudo_boxes >= result.frames_with_boxes > 0
    assert result.train_frames == 32 and result.holdout_frames == 8

    card = load_card(tmp_path / "student.card.yaml")
    assert (card.input.width, card.input.height) == (64, 64)
    assert card.labels == ["square", "other"] and card.family == "yolo"
    assert card.name == "squares-distilled" and "squares.onnx" in (card.notes or "")
    assert "MIT (test model)" in (card.license or "")
    # Calibrated on the training frames, one of the thresholds tried, and said so in the notes.
    assert round(card.thresholds.score / 0.05) * 0.05 == pytest.approx(card.thresholds.score)
    assert f"Score threshold {card.thresholds.score}" in (card.notes or "")
    detector = Detector.load(tmp_path / "student.onnx")
    assert detector.card.sha256 == card.sha256
    frame = cv2.imread(str(frames / "039.png"))
    tensor, _ = detector.preprocess(frame)
    (output,) = detector.infer(tensor)
    assert output.shape == (1, 4 + 2, (64 // STRIDE) ** 2)
    detections, _ = detector.detect(frame)
    assert all(d.label in ("square", "other") for d in detections)
    detector.close()

    teacher_row, student_row = result.reports
    assert teacher_row.map50 == 1.0  # the teacher agrees with itself
    assert student_row.frames == 8
    # It learnt to find the squares where the teacher does (0.80 when written; nothing: 0).
    assert student_row.map50 is not None and student_row.map50 > 0.3
    assert student_row.size_bytes == (tmp_path / "student.onnx").stat().st_size
    assert result.latency_ratio == pytest.approx(
        student_row.latency_ms_p50 / teacher_row.latency_ms_p50
    )


@pytest.mark.slow
def test_cli_distills_end_to_end(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, frames = tiny
    out = tmp_path / "cli-student.onnx"
    code = main(
        [
            "model", "distill", str(teacher), "--data", str(frames), "-o", str(out),
            "--input-size", "64", "--width", "8", "--epochs", "2", "--batch", "8",
            "--frames", "16", "--holdout", "4", "--alpha", "0.5", "--temperature", "3",
            "--threads", "1",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert out.is_file() and (tmp_path / "cli-student.card.yaml").is_file()
    assert "| teacher |" in printed and "| student |" in printed
    assert "student latency / teacher latency (p50):" in printed
    assert "held out: the last 4 frames" in printed
    assert "alpha 0.5" in (load_card(tmp_path / "cli-student.card.yaml").notes or "")


def test_cli_refuses_bad_options_and_names_the_problem(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, frames = tiny
    args = ["model", "distill", str(teacher), "--data", str(frames), "-o"]
    assert main([*args, str(tmp_path / "s.onnx"), "--input-size", "100"]) == 1
    assert "--input-size must be a multiple of 32" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "s.onnx"), "--holdout", "40"]) == 1
    assert "leaves none to train on" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "s.tflite")]) == 1
    assert "name it *.onnx" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_without_torch_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fresh import of the distill module, with torch made unimportable.
    monkeypatch.delitem(sys.modules, "agent.compress.distill", raising=False)
    monkeypatch.delitem(sys.modules, "agent.compress.distill_student", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)
    code = main(["model", "distill", "t.onnx", "--data", "d", "-o", str(tmp_path / "s.onnx")])
    assert code == 1
    err = capsys.readouterr().err
    assert "needs torch" in err and "pip install 'edge-detection-agent[distill]'" in err


def test_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="--temperature"):
        distill("missing.onnx", tmp_path, tmp_path / "s.onnx", DistillOptions(temperature=0))
