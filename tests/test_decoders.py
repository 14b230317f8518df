"""Decoders against truth: generated models with planted outputs, run by the real runtimes through
``Detector``; every expected box is worked out by hand in the comments beside it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.detection import Detection, Detector, DetectorSettings, ModelCard
from agent.detection.card import AnchorSpec
from agent.detection.decoders import generate_anchors
from agent.runtimes import load_runtime
from tests import modelgen

Box = tuple[float, float, float, float]
Expected = tuple[str, float, Box]  # label, score, (x1, y1, x2, y2) normalised to the frame

LABELS = ["person", "car", "dog"]


def make_card(
    family: str, size: tuple[int, int], labels: Sequence[str], **fields: Any
) -> ModelCard:
    w, h = size
    data: dict[str, Any] = {"name": "generated", "family": family, "labels": list(labels)}
    data["input"] = {"width": w, "height": h, **fields.pop("input", {})}
    data.update(fields)
    return ModelCard.model_validate(data)


def frame(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), 127, np.uint8)


def detect(
    path: Path, card: ModelCard, image: np.ndarray, settings: DetectorSettings | None = None
) -> list[Detection]:
    runtime = load_runtime(path)
    try:
        detections, _ = Detector(runtime, card).detect(image, settings)
    finally:
        runtime.close()
    return detections


def assert_detections(got: list[Detection], expected: Sequence[Expected]) -> None:
    """Same detections, in the same order (highest score first)."""
    assert [d.label for d in got] == [e[0] for e in expected], got
    for d, (_, score, box) in zip(got, expected, strict=True):
        assert d.score == pytest.approx(score, abs=1e-6), d
        np.testing.assert_allclose(d.box, box, atol=1e-4, err_msg=str(d))


# ------------------------------------------------------------------------------------- YOLO
# Model input 64x64. A 128x64 frame letterboxes to 64x32 at scale 0.5, with 16 rows of padding
# on top: frame x = x_px / 64, frame y = (y_px - 16) / 32.


def yolo_v8_output(rows: Sequence[Sequence[float]], n: int = 8) -> np.ndarray:
    """Rows of cx, cy, w, h (input pixels), class scores... -> ``[1, 4+nc, N]``."""
    out = np.zeros((1, 4 + len(LABELS), n), np.float32)
    for i, row in enumerate(rows):
        out[0, :, i] = row
    return out


V8_ROWS = [
    (32, 32, 16, 8, 0.9, 0.0, 0.0),  # person, x 24..40, y 28..36
    (33, 32, 16, 8, 0.8, 0.0, 0.0),  # person overlapping the first (IoU 0.88): suppressed
    (32, 32, 16, 8, 0.0, 0.7, 0.0),  # car on the same spot: another class, kept
    (16, 24, 8, 8, 0.0, 0.0, 0.4),  # dog under the 0.5 threshold
    (48, 40, 8, 16, 0.3, 0.6, 0.0),  # car wins the argmax, x 44..52, y 32..48
    (32, 8, 8, 8, 0.95, 0.0, 0.0),  # person inside the top padding (y 4..12): dropped
]
V8_PERSON: Box = (24 / 64, (28 - 16) / 32, 40 / 64, (36 - 16) / 32)  # .375 .375 .625 .625
V8_CAR2: Box = (44 / 64, (32 - 16) / 32, 52 / 64, (48 - 16) / 32)  # .6875 .5 .8125 1.0
V8_DOG: Box = (12 / 64, (20 - 16) / 32, 20 / 64, (28 - 16) / 32)


@pytest.fixture(scope="module")
def yolo_v8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return modelgen.yolo_v8_onnx(tmp_path_factory.mktemp("v8"), yolo_v8_output(V8_ROWS))


def v8_card(**fields: Any) -> ModelCard:
    return make_card(
        "yolo", (64, 64), LABELS, input={"layout": "NCHW", **fields.pop("input", {})}, **fields
    )


def test_yolo_v8_boxes_are_mapped_back_through_the_letterbox(yolo_v8_model: Path) -> None:
    got = detect(yolo_v8_model, v8_card(), frame(128, 64))
    assert_detections(
        got, [("person", 0.9, V8_PERSON), ("car", 0.7, V8_PERSON), ("car", 0.6, V8_CAR2)]
    )
    assert [d.class_id for d in got] == [0, 1, 1]


def test_yolo_score_threshold_from_settings_overrides_the_card(yolo_v8_model: Path) -> None:
    got = detect(yolo_v8_model, v8_card(), frame(128, 64), DetectorSettings(score_threshold=0.35))
    assert [(d.label, round(d.score, 4)) for d in got] == [
        ("person", 0.9),
        ("car", 0.7),
        ("car", 0.6),
        ("dog", 0.4),
    ]
    np.testing.assert_allclose(got[-1].box, V8_DOG, atol=1e-4)


def test_yolo_card_threshold_applies_without_settings(yolo_v8_model: Path) -> None:
    card = v8_card(thresholds={"score": 0.75, "iou": 0.45})
    assert_detections(detect(yolo_v8_model, card, frame(128, 64)), [("person", 0.9, V8_PERSON)])


def test_yolo_overlapping_boxes_of_one_class_survive_a_lenient_iou(yolo_v8_model: Path) -> None:
    got = detect(yolo_v8_model, v8_card(), frame(128, 64), DetectorSettings(iou_threshold=0.95))
    persons = [d for d in got if d.label == "person"]
    assert [d.score for d in persons] == pytest.approx([0.9, 0.8])
    # the second box: x 25..41
    np.testing.assert_allclose(persons[1].box, (25 / 64, 0.375, 41 / 64, 0.625), atol=1e-4)


def test_yolo_classes_with_one_label_suppress_each_other(yolo_v8_model: Path) -> None:
    # A fall detector as a person detector: upright and fallen are both "person". The car on the
    # person's spot is then the same person seen as another class: one box, the best score.
    card = make_card("yolo", (64, 64), ["person", "person", "dog"], input={"layout": "NCHW"})
    got = detect(yolo_v8_model, card, frame(128, 64))
    assert_detections(got, [("person", 0.9, V8_PERSON), ("person", 0.6, V8_CAR2)])
    assert [d.class_id for d in got] == [0, 1]  # the model's own class stays in the message


def test_yolo_label_filter_keeps_only_the_named_labels(yolo_v8_model: Path) -> None:
    got = detect(yolo_v8_model, v8_card(), frame(128, 64), DetectorSettings(labels=["car"]))
    assert_detections(got, [("car", 0.7, V8_PERSON), ("car", 0.6, V8_CAR2)])


def test_yolo_stretch_resize_maps_boxes_without_padding(yolo_v8_model: Path) -> None:
    card = v8_card(input={"resize": "stretch"})
    got = detect(yolo_v8_model, card, frame(128, 64))
    # stretched: frame coordinates are the input's, x 24..40 / 64, y 28..36 / 64; the box that
    # was in the padding is now inside the picture (y 4..12).
    stretched: Box = (24 / 64, 28 / 64, 40 / 64, 36 / 64)
    assert_detections(
        got,
        [
            ("person", 0.95, (28 / 64, 4 / 64, 36 / 64, 12 / 64)),
            ("person", 0.9, stretched),
            ("car", 0.7, stretched),
            ("car", 0.6, (44 / 64, 32 / 64, 52 / 64, 48 / 64)),
        ],
    )


def test_yolo_letterbox_undo_is_exact_when_the_scaled_frame_is_rounded(tmp_path: Path) -> None:
    # A 100x60 frame scales by 0.64 to 64x38.4, resized to 64x38 rows, with 13 rows on top:
    # frame y = (y_px - 13) / 38, whatever the unrounded scale was.
    path = modelgen.yolo_v8_onnx(tmp_path, yolo_v8_output([(32, 29.5, 32, 19, 0.0, 0.0, 0.9)]))
    got = detect(path, v8_card(), frame(100, 60))
    # x 16..48, y 20..39
    assert_detections(got, [("dog", 0.9, (0.25, (20 - 13) / 38, 0.75, (39 - 13) / 38))])


def test_yolo_v5_score_is_objectness_times_class_probability(tmp_path: Path) -> None:
    out = np.zeros((1, 8, 5 + len(LABELS)), np.float32)
    out[0, 0] = [32, 32, 16, 8, 0.9, 1.0, 0.0, 0.0]  # person 0.9
    out[0, 1] = [32, 32, 16, 8, 0.5, 0.2, 0.9, 0.0]  # car 0.45: under 0.5 though its class is 0.9
    out[0, 2] = [48, 40, 8, 16, 0.8, 0.0, 0.0, 0.75]  # dog 0.6
    out[0, 3] = [33, 32, 16, 8, 0.85, 1.0, 0.0, 0.0]  # person 0.85, suppressed by the first
    path = modelgen.yolo_v5_onnx(tmp_path, out)
    card = make_card("yolo", (64, 64), LABELS, input={"layout": "NCHW"}, yolo_version="v5")
    got = detect(path, card, frame(128, 64))
    assert_detections(got, [("person", 0.9, V8_PERSON), ("dog", 0.8 * 0.75, V8_CAR2)])


def test_yolo_v5_layout_is_recognised_without_a_version(tmp_path: Path) -> None:
    out = np.zeros((1, 8, 5 + len(LABELS)), np.float32)
    out[0, 0] = [32, 32, 16, 8, 0.9, 0.0, 1.0, 0.0]
    path = modelgen.yolo_v5_onnx(tmp_path, out)
    card = make_card("yolo", (64, 64), LABELS, input={"layout": "NCHW"})
    assert_detections(detect(path, card, frame(128, 64)), [("car", 0.9, V8_PERSON)])


def test_yolo_fp16_model_decodes_like_fp32(tmp_path: Path) -> None:
    path = modelgen.fp16_onnx(tmp_path, yolo_v8_output(V8_ROWS))
    got = detect(path, v8_card(), frame(128, 64))
    # 0.9, 0.7 and 0.6 are not float16 numbers: the scores come back rounded to the nearest one.
    half = [float(np.float16(s)) for s in (0.9, 0.7, 0.6)]
    assert_detections(
        got,
        [("person", half[0], V8_PERSON), ("car", half[1], V8_PERSON), ("car", half[2], V8_CAR2)],
    )


# -------------------------------------------------------------------------------------- SSD
# Boxes are ymin, xmin, ymax, xmax normalised to the 64x64 input. With the 128x64 frame
# letterboxed as above: frame x = x, frame y = (64 y - 16) / 32 = 2 y - 0.5.

SSD_BOXES = [
    [0.375, 0.25, 0.625, 0.5],  # person 0.9 -> frame x .25..5, y .25..75
    [0.375, 0.26, 0.625, 0.51],  # person 0.8, IoU 0.92 with the first: suppressed
    [0.375, 0.25, 0.625, 0.5],  # car 0.85, same place, other class: kept
    [0.5, 0.5, 0.75, 0.75],  # dog 0.3: under the threshold
    [0.5, 0.5, 0.75, 0.75],  # class 5: no such label, dropped
    [0.5, 0.5, 0.75, 0.75],  # person 0.99 but past count: never looked at
]
SSD_CLASSES = [0, 0, 1, 2, 5, 0]
SSD_SCORES = [0.9, 0.8, 0.85, 0.3, 0.95, 0.99]
SSD_COUNT = 5
SSD_BOX: Box = (0.25, 0.25, 0.5, 0.75)
SSD_EXPECTED: list[Expected] = [("person", 0.9, SSD_BOX), ("car", 0.85, SSD_BOX)]

# Quantized SSDs take pixels in [-1, 1]: value = pixel / 127.5 - 1.
QUANT_INPUT = {"scale": 1 / 127.5, "mean": [1.0, 1.0, 1.0]}


@pytest.mark.parametrize(
    ("input_dtype", "quant"),
    [(np.float32, None), (np.uint8, (1 / 128, 128)), (np.int8, (1 / 128, 0))],
    ids=["float32", "uint8", "int8"],
)
def test_ssd_tflite_decodes_with_float_and_quantized_inputs(
    tmp_path: Path, input_dtype: type[Any], quant: tuple[float, int] | None
) -> None:
    path = modelgen.ssd_tflite(
        tmp_path,
        SSD_BOXES,
        SSD_CLASSES,
        SSD_SCORES,
        SSD_COUNT,
        input_dtype=input_dtype,
        quant=quant,
    )
    card = make_card("ssd", (64, 64), LABELS, input=QUANT_INPUT if quant else {})
    assert_detections(detect(path, card, frame(128, 64)), SSD_EXPECTED)


def test_ssd_count_truncates_the_outputs(tmp_path: Path) -> None:
    card = make_card("ssd", (64, 64), LABELS)
    # With all six boxes counted, the 0.99 person at y .5..75, x .5..75 appears.
    path = modelgen.ssd_tflite(tmp_path, SSD_BOXES, SSD_CLASSES, SSD_SCORES, 6)
    got = detect(path, card, frame(128, 64))
    assert_detections(got, [("person", 0.99, (0.5, 0.5, 0.75, 1.0)), *SSD_EXPECTED])
    # And a count of 1 leaves only the first.
    path = modelgen.ssd_tflite(tmp_path, SSD_BOXES, SSD_CLASSES, SSD_SCORES, 1, name="ssd1")
    assert_detections(detect(path, card, frame(128, 64)), SSD_EXPECTED[:1])


def test_ssd_label_offset_shifts_class_ids_and_drops_the_background(tmp_path: Path) -> None:
    # COCO-style ids counted from 1, with 0 the background class.
    boxes = [[0.375, 0.25, 0.625, 0.5], [0.5, 0.5, 0.75, 0.75], [0.5, 0.5, 0.75, 0.75]]
    path = modelgen.ssd_tflite(tmp_path, boxes, [1, 3, 0], [0.9, 0.8, 0.95])
    card = make_card("ssd", (64, 64), LABELS, label_offset=1)
    got = detect(path, card, frame(128, 64))
    assert_detections(got, [("person", 0.9, SSD_BOX), ("dog", 0.8, (0.5, 0.5, 0.75, 1.0))])
    assert [d.class_id for d in got] == [0, 2]


def test_ssd_score_threshold_and_label_filter(tmp_path: Path) -> None:
    path = modelgen.ssd_tflite(tmp_path, SSD_BOXES, SSD_CLASSES, SSD_SCORES, SSD_COUNT)
    card = make_card("ssd", (64, 64), LABELS)
    got = detect(path, card, frame(128, 64), DetectorSettings(score_threshold=0.25))
    assert_detections(got, [*SSD_EXPECTED, ("dog", 0.3, (0.5, 0.5, 0.75, 1.0))])
    got = detect(path, card, frame(128, 64), DetectorSettings(labels=["car", "dog"]))
    assert_detections(got, SSD_EXPECTED[1:])


def test_ssd_stretch_resize_keeps_input_coordinates(tmp_path: Path) -> None:
    path = modelgen.ssd_tflite(tmp_path, SSD_BOXES, SSD_CLASSES, SSD_SCORES, SSD_COUNT)
    card = make_card("ssd", (64, 64), LABELS, input={"resize": "stretch"})
    box: Box = (0.25, 0.375, 0.5, 0.625)
    assert_detections(
        detect(path, card, frame(128, 64)), [("person", 0.9, box), ("car", 0.85, box)]
    )


def test_ssd_onnx_outputs_found_by_the_names_the_card_gives(tmp_path: Path) -> None:
    order = ("scores", "boxes", "count", "classes")
    names = ["detection_scores", "detection_boxes", "num_detections", "detection_classes"]
    path = modelgen.ssd_onnx(
        tmp_path, SSD_BOXES, SSD_CLASSES, SSD_SCORES, SSD_COUNT, order=order, names=names
    )
    card = make_card("ssd", (64, 64), LABELS, outputs=dict(zip(order, names, strict=True)))
    assert_detections(detect(path, card, frame(128, 64)), SSD_EXPECTED)


def test_ssd_onnx_outputs_found_by_shape_when_scores_come_before_classes(tmp_path: Path) -> None:
    path = modelgen.ssd_onnx(
        tmp_path,
        SSD_BOXES,
        SSD_CLASSES,
        SSD_SCORES,
        SSD_COUNT,
        order=("boxes", "scores", "classes", "count"),
    )
    card = make_card("ssd", (64, 64), LABELS)
    assert_detections(detect(path, card, frame(128, 64)), SSD_EXPECTED)


# ---------------------------------------------------------------------------------- anchors
# Input 32x16 (W x H), one layer of stride 8: a 4x2 grid, two anchors per cell (aspect 1 and the
# interpolated one), 16 anchors of size 1 in the order row, column, anchor. Centre of anchor
# i = (row * 4 + col) * 2 + k: x = (col + .5) / 4, y = (row + .5) / 2.
# Regressors are in input pixels: x / 32, y / 16, w / 32, h / 16.
# A 32x32 frame letterboxes into 32x16 at scale 0.5 as 16x16 with 8 columns left:
# frame x = (32 x - 8) / 16 = 2 x - 0.5, frame y = y.

ANCHOR_SIZE = (32, 16)
ANCHOR_SPEC = {
    "num_layers": 1,
    "min_scale": 0.1484375,
    "max_scale": 0.75,
    "strides": [8],
    "aspect_ratios": [1.0],
    "interpolated_scale_aspect_ratio": 1.0,
    "fixed_anchor_size": True,
}
NUM_ANCHORS = 16


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def anchors_card(**decode: Any) -> ModelCard:
    return make_card(
        "anchors",
        ANCHOR_SIZE,
        ["face"],
        thresholds={"score": 0.5, "iou": 0.3},
        anchors=ANCHOR_SPEC,
        decode={"box_scale": [32, 16, 32, 16], **decode},
        outputs={"boxes": "regressors", "scores": "classificators"},
    )


def planted_anchors(k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    regressors = np.zeros((1, NUM_ANCHORS, k), np.float32)
    scores = np.full((1, NUM_ANCHORS, 1), -10, np.float32)
    # anchor 2 (row 0, col 1): centre .375, .25; box centre .425, .35, size .2 x .25
    regressors[0, 2, :4] = [1.6, 1.6, 6.4, 4]
    scores[0, 2] = 2.0
    # anchor 3, same centre, box 0.06 to the right (IoU 0.9): suppressed
    regressors[0, 3, :4] = [1.92, 1.6, 6.4, 4]
    scores[0, 3] = 1.0
    # anchor 12 (row 1, col 2): under the threshold
    regressors[0, 12, :4] = [0, 0, 6.4, 4]
    scores[0, 12] = -1.0
    # anchor 13 (row 1, col 2): centre .625, .75, size .1 x .1
    regressors[0, 13, :4] = [0, 0, 3.2, 1.6]
    scores[0, 13] = 3.0
    return regressors, scores


ANCHORS_EXPECTED: list[Expected] = [
    # x .575..675, y .7..8 -> frame x .65..85
    ("face", sigmoid(3.0), (0.65, 0.7, 0.85, 0.8)),
    # x .325..525, y .225..475 -> frame x .15..55
    ("face", sigmoid(2.0), (0.15, 0.225, 0.55, 0.475)),
]

AnchorBuilder = Callable[..., Path]


@pytest.fixture(params=[modelgen.anchors_tflite, modelgen.anchors_onnx], ids=["tflite", "onnx"])
def anchors_builder(request: pytest.FixtureRequest) -> AnchorBuilder:
    builder: AnchorBuilder = request.param
    return builder


def test_anchors_decode_regressors_against_generated_anchors(
    tmp_path: Path, anchors_builder: AnchorBuilder
) -> None:
    path = anchors_builder(tmp_path, *planted_anchors(), size=ANCHOR_SIZE)
    assert_detections(detect(path, anchors_card(), frame(32, 32)), ANCHORS_EXPECTED)


def test_anchors_outputs_told_apart_by_shape_without_names(tmp_path: Path) -> None:
    path = modelgen.anchors_tflite(tmp_path, *planted_anchors(), size=ANCHOR_SIZE)
    card = anchors_card().model_copy(update={"outputs": {}})
    assert_detections(detect(path, card, frame(32, 32)), ANCHORS_EXPECTED)


def test_anchors_y_first_regressors_when_output_order_is_not_reversed(tmp_path: Path) -> None:
    regressors, scores = planted_anchors()
    regressors[0, :, :4] = regressors[0, :, [1, 0, 3, 2]].T  # x, y, w, h -> y, x, h, w
    path = modelgen.anchors_onnx(tmp_path, regressors, scores, size=ANCHOR_SIZE)
    got = detect(path, anchors_card(reverse_output_order=False), frame(32, 32))
    assert_detections(got, ANCHORS_EXPECTED)


def test_anchors_scores_used_as_they_are_without_sigmoid(tmp_path: Path) -> None:
    regressors, scores = planted_anchors()
    scores[:] = 0.0
    scores[0, 2] = 0.7
    scores[0, 13] = 0.45  # under 0.5
    path = modelgen.anchors_tflite(tmp_path, regressors, scores, size=ANCHOR_SIZE)
    got = detect(path, anchors_card(sigmoid_score=False), frame(32, 32))
    assert_detections(got, [("face", 0.7, (0.15, 0.225, 0.55, 0.475))])


def test_anchors_score_clipping_bounds_the_logits(tmp_path: Path) -> None:
    regressors, scores = planted_anchors()
    scores[0, 2] = 50.0  # clipped to 1: sigmoid(1) = 0.731
    path = modelgen.anchors_tflite(tmp_path, regressors, scores, size=ANCHOR_SIZE)
    got = detect(path, anchors_card(score_clipping=1.0), frame(32, 32))
    assert [d.score for d in got] == pytest.approx([sigmoid(1.0)] * 2)


def keypoint_regressors(y_first: bool) -> tuple[np.ndarray, np.ndarray]:
    regressors, scores = planted_anchors(k=4 + 2 * 2)
    scores[0, 13] = -10.0
    # anchor 2, centre .375, .25. Keypoint 0 at +0.8, +0.4 px -> (.4, .275); keypoint 1 a further
    # 1.6, 1.2 px away (2 px), so the box is 4x4 px: w 4/32 = .125, h 4/16 = .25,
    # x .3375..4625, y .15..4 -> frame x .175..425 (square in the frame: 8 x 8 px).
    kps = [(0.8, 0.4), (2.4, 1.6)]
    for i, (x, y) in enumerate(kps):
        regressors[0, 2, 4 + 2 * i : 6 + 2 * i] = (y, x) if y_first else (x, y)
    if y_first:
        regressors[0, :, :4] = regressors[0, :, [1, 0, 3, 2]].T
    return regressors, scores


KEYPOINT_BOX: Box = (0.175, 0.15, 0.425, 0.4)


@pytest.mark.parametrize("y_first", [False, True], ids=["xy", "yx"])
def test_anchors_box_from_keypoints_is_a_square_around_the_centre_keypoint(
    tmp_path: Path, anchors_builder: AnchorBuilder, y_first: bool
) -> None:
    path = anchors_builder(tmp_path, *keypoint_regressors(y_first), size=ANCHOR_SIZE)
    card = anchors_card(
        num_keypoints=2, box_from_keypoints=[0, 1], reverse_output_order=not y_first
    )
    got = detect(path, card, frame(32, 32))
    assert_detections(got, [("face", sigmoid(2.0), KEYPOINT_BOX)])
    x1, y1, x2, y2 = got[0].box
    assert (x2 - x1) * 32 == pytest.approx((y2 - y1) * 32)


def test_anchor_count_does_not_fit_the_outputs(tmp_path: Path) -> None:
    from agent.errors import DecodeError

    regressors, scores = planted_anchors()
    path = modelgen.anchors_tflite(tmp_path, regressors[:, :8], scores[:, :8], size=ANCHOR_SIZE)
    with pytest.raises(DecodeError, match="16 generated anchors"):
        detect(path, anchors_card(), frame(32, 32))


# ------------------------------------------------------------------------ anchor generation


def anchor_spec(**fields: Any) -> AnchorSpec:
    base: dict[str, Any] = {
        "min_scale": 0.1484375,
        "max_scale": 0.75,
        "aspect_ratios": [1.0],
        "fixed_anchor_size": True,
        "interpolated_scale_aspect_ratio": 1.0,
    }
    return AnchorSpec.model_validate({**base, **fields})


def test_blazeface_short_range_has_896_anchors() -> None:
    anchors = generate_anchors(anchor_spec(num_layers=4, strides=[8, 16, 16, 16]), 128, 128)
    # 16x16 cells x 2 anchors + 8x8 cells x 3 layers x 2 anchors = 512 + 384
    assert anchors.shape == (896, 4)
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[1], anchors[0])  # the interpolated anchor, same centre
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[511], [15.5 / 16, 15.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[512:518], [[0.5 / 8, 0.5 / 8, 1, 1]] * 6)
    np.testing.assert_allclose(anchors[518], [1.5 / 8, 0.5 / 8, 1, 1])
    np.testing.assert_allclose(anchors[895], [7.5 / 8, 7.5 / 8, 1, 1])


def test_blazeface_full_range_has_2304_anchors() -> None:
    spec = anchor_spec(num_layers=1, strides=[4], interpolated_scale_aspect_ratio=0.0)
    anchors = generate_anchors(spec, 192, 192)
    assert anchors.shape == (2304, 4)  # 48x48 cells, one anchor each
    np.testing.assert_allclose(anchors[0], [0.5 / 48, 0.5 / 48, 1, 1])
    np.testing.assert_allclose(anchors[48], [0.5 / 48, 1.5 / 48, 1, 1])
    np.testing.assert_allclose(anchors[2303], [47.5 / 48, 47.5 / 48, 1, 1])


def test_blazepose_detector_has_2254_anchors() -> None:
    anchors = generate_anchors(anchor_spec(num_layers=5, strides=[8, 16, 32, 32, 32]), 224, 224)
    # 28x28 x 2 + 14x14 x 2 + 7x7 x 3 layers x 2 = 1568 + 392 + 294
    assert anchors.shape == (2254, 4)
    np.testing.assert_allclose(anchors[1568], [0.5 / 14, 0.5 / 14, 1, 1])
    np.testing.assert_allclose(anchors[1960], [0.5 / 7, 0.5 / 7, 1, 1])
    np.testing.assert_allclose(anchors[2253], [6.5 / 7, 6.5 / 7, 1, 1])


def test_anchor_sizes_follow_scales_and_aspect_ratios_when_not_fixed() -> None:
    # Two layers of different strides: scales .2 and .4 (min + (max - min) * i / (n - 1)).
    spec = anchor_spec(
        num_layers=2,
        strides=[8, 16],
        min_scale=0.2,
        max_scale=0.4,
        aspect_ratios=[1.0, 2.0],
        fixed_anchor_size=False,
    )
    anchors = generate_anchors(spec, 32, 16)
    # layer 0: 4x2 cells x 3 anchors; layer 1: 2x1 cells x 3 anchors
    assert anchors.shape == (4 * 2 * 3 + 2 * 1 * 3, 4)
    r2 = math.sqrt(2)
    np.testing.assert_allclose(
        anchors[:3],
        [
            [0.125, 0.25, 0.2, 0.2],  # ratio 1
            [0.125, 0.25, 0.2 * r2, 0.2 / r2],  # ratio 2: wider
            [0.125, 0.25, math.sqrt(0.2 * 0.4), math.sqrt(0.2 * 0.4)],  # between this and next
        ],
        rtol=1e-6,
    )
    # last layer interpolates towards 1.0
    np.testing.assert_allclose(anchors[-1], [0.75, 0.5, math.sqrt(0.4), math.sqrt(0.4)], rtol=1e-6)


def test_yolo_boxes_normalised_to_the_input_are_recognised(tmp_path: Path) -> None:
    # Ultralytics' TFLite exports give boxes as fractions of the input, not pixels.
    rows = [tuple(v / 64 for v in row[:4]) + tuple(row[4:]) for row in V8_ROWS]
    model = modelgen.yolo_v8_onnx(tmp_path, yolo_v8_output(rows))
    expected = [("person", 0.9, V8_PERSON), ("car", 0.7, V8_PERSON), ("car", 0.6, V8_CAR2)]
    assert_detections(detect(model, v8_card(), frame(128, 64)), expected)
    assert_detections(detect(model, v8_card(yolo_boxes="normalized"), frame(128, 64)), expected)
