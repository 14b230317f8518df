"""The real pretrained detectors on real pictures, checked against hand-drawn boxes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.detection import Detector
from tests.conftest import MEDIA, iou

# Boxes drawn by hand on the pictures (x1, y1, x2, y2, normalised).
ASTRONAUT_PERSON = (0.0, 0.03, 0.72, 1.0)
ASTRONAUT_FACE = (0.35, 0.16, 0.53, 0.34)
BIKES_CYCLIST_FRAME_125 = (0.54, 0.0, 0.80, 1.0)
CARPHONE_FACE_FRAME_0 = (0.37, 0.30, 0.66, 0.70)


def video_frame(name: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(MEDIA / name))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok, f"cannot read frame {index} of {name}"
    return frame


@pytest.fixture(scope="module")
def astronaut(assets: Path) -> np.ndarray:
    image = cv2.imread(str(MEDIA / "astronaut.png"))
    assert image is not None
    return image


@pytest.fixture(scope="module")
def person(assets: Path) -> Detector:
    return Detector.load(assets / "person-yolov8s.onnx", threads=2)


def best(detections: list, label: str, truth: tuple[float, ...]) -> float:
    scores = [iou(d.box, truth) for d in detections if d.label == label]
    return max(scores, default=0.0)


def test_person_detector_finds_the_astronaut(person: Detector, astronaut: np.ndarray) -> None:
    detections, _ = person.detect(astronaut)
    assert best(detections, "person", ASTRONAUT_PERSON) > 0.7


def test_person_detector_finds_the_cyclist_in_bikes_video(person: Detector) -> None:
    detections, _ = person.detect(video_frame("bikes.mp4", 125))
    assert best(detections, "person", BIKES_CYCLIST_FRAME_125) > 0.5
    # Nothing else in that frame is a person (the taxi on the left is the classic false positive).
    assert all(d.box[0] > 0.4 for d in detections)


@pytest.mark.parametrize("model", ["face-short-range.tflite", "face-full-range.tflite"])
def test_blazeface_finds_the_astronauts_face(
    assets: Path, astronaut: np.ndarray, model: str
) -> None:
    detections, _ = Detector.load(assets / model).detect(astronaut)
    assert len(detections) == 1
    assert iou(detections[0].box, ASTRONAUT_FACE) > 0.6
    assert detections[0].score > 0.8


def test_blazeface_finds_the_face_in_carphone_video(assets: Path) -> None:
    detector = Detector.load(assets / "face-short-range.tflite")
    detections, _ = detector.detect(video_frame("carphone_pristine.mp4", 0))
    assert len(detections) == 1
    assert iou(detections[0].box, CARPHONE_FACE_FRAME_0) > 0.7


def test_blazeface_follows_the_face_through_the_video(assets: Path) -> None:
    detector = Detector.load(assets / "face-short-range.tflite")
    cap = cv2.VideoCapture(str(MEDIA / "carphone_pristine.mp4"))
    found = total = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        total += 1
        detections, _ = detector.detect(frame)
        found += any(d.label == "face" for d in detections)
    assert total == 120
    assert found / total > 0.95


def test_pose_detector_finds_the_astronaut(assets: Path, astronaut: np.ndarray) -> None:
    detections, _ = Detector.load(assets / "pose-detector.tflite").detect(astronaut)
    assert len(detections) == 1
    assert detections[0].label == "person"
    assert iou(detections[0].box, ASTRONAUT_PERSON) > 0.5


def test_nothing_is_found_in_a_blank_image(person: Detector, assets: Path) -> None:
    blank = np.full((480, 640, 3), 127, np.uint8)
    assert person.detect(blank)[0] == []
    assert Detector.load(assets / "face-short-range.tflite").detect(blank)[0] == []


def test_detect_command_prints_one_json_object_per_image(assets: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "detect",
            str(assets / "face-short-range.tflite"),
            str(MEDIA / "astronaut.png"),
            str(MEDIA / "astronaut.png"),
            "--json",
            "--draw",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert set(first) == {"image", "width", "height", "latency_ms", "objects"}
    assert (first["width"], first["height"]) == (512, 512)
    assert first["objects"][0]["label"] == "face"
    assert iou(first["objects"][0]["box"], ASTRONAUT_FACE) > 0.6
    drawn = cv2.imread(str(tmp_path / "astronaut.jpg"))
    assert drawn is not None and drawn.shape == (512, 512, 3)


def test_model_info_reports_card_and_tensors(assets: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "model",
            "info",
            str(assets / "person-yolov8s.onnx"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    assert info["inputs"][0]["shape"] == [1, 3, 640, 640]
    assert info["outputs"][0]["shape"] == [1, 6, 8400]
    assert info["card"]["labels"] == ["person", "person_fallen"]
    assert info["sha256"] == info["card"]["sha256"]
