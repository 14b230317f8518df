"""The fused preprocessing (a resize into a kept canvas, then one ``blobFromImageWithParams``)
against a plain reference, written the way the card defines the tensor, on real frames of every
bundled card, odd sizes, grey and BGRA frames, and reused output buffers; the pipeline's reuse
of a few tensors without one frame's tensor overwriting another's."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.detection import Detection, Detector, DetectorSettings
from agent.detection.card import InputSpec, load_card
from agent.detection.preprocess import Preprocessor, Transform
from agent.pipeline import Pipeline, Result
from agent.sources import open_source
from tests.conftest import MEDIA, MODELS

CARDS = ["person-yolov8s", "face-short-range", "face-full-range", "pose-detector"]


def reference(spec: InputSpec, frame_bgr: np.ndarray) -> tuple[np.ndarray, Transform]:
    """The tensor step by step: letterbox (or stretch), colour order, ``(pixel * scale - mean)
    / std`` in float64, layout (the agent's implementation before the fused one)."""
    h, w = frame_bgr.shape[:2]
    if spec.resize == "stretch":
        canvas = cv2.resize(frame_bgr, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        sx, sy, left, top = spec.width / w, spec.height / h, 0, 0
    else:
        s = min(spec.width / w, spec.height / h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        sx, sy = nw / w, nh / h
        left, top = int((spec.width - nw) / 2), int((spec.height - nh) / 2)
        resized = cv2.resize(frame_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        canvas = cv2.copyMakeBorder(
            resized,
            top,
            spec.height - nh - top,
            left,
            spec.width - nw - left,
            cv2.BORDER_CONSTANT,
            value=(spec.pad_value,) * 3,
        )
    if spec.color == "RGB":
        canvas = canvas[:, :, ::-1]
    value = (canvas.astype(np.float64) * spec.scale - np.asarray(spec.mean)) / np.asarray(spec.std)
    if spec.layout == "NCHW":
        value = value.transpose(2, 0, 1)
    transform = Transform(w, h, spec.width, spec.height, sx, sy, float(left), float(top))
    return value[np.newaxis].astype(np.float32), transform


def frames() -> dict[str, np.ndarray]:
    """Real frames: the two videos, the photo, and odd-sized crops and scales of them."""
    out: dict[str, np.ndarray] = {}
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        cap = cv2.VideoCapture(str(MEDIA / name))
        cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
        ok, frame = cap.read()
        cap.release()
        assert ok, name
        out[name] = frame
    photo = cv2.imread(str(MEDIA / "astronaut.png"))
    assert photo is not None
    out["astronaut.png"] = photo
    out["bikes 333x177 crop"] = np.ascontiguousarray(out["bikes.mp4"][11:188, 7:340])
    out["astronaut 97x301"] = cv2.resize(photo, (97, 301))
    out["carphone 1001x3"] = cv2.resize(out["carphone_pristine.mp4"], (1001, 3))
    out["astronaut 1x1"] = np.ascontiguousarray(photo[200:201, 200:201])
    return out


FRAMES = frames()


def specs() -> list[tuple[str, InputSpec]]:
    found = [(name, load_card(MODELS / f"{name}.card.yaml").input) for name in CARDS]
    person = dict(found)["person-yolov8s"]
    face = dict(found)["face-short-range"]
    # The rest of what a card can say: stretch, BGR, per-channel mean and std, odd input sizes.
    found.append(("stretch BGR", person.model_copy(update={"resize": "stretch", "color": "BGR"})))
    found.append(
        (
            "imagenet 223x97 NCHW",
            face.model_copy(
                update={
                    "width": 223,
                    "height": 97,
                    "layout": "NCHW",
                    "scale": 1 / 255,
                    "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225],
                    "pad_value": 7,
                }
            ),
        )
    )
    return found


SPECS = specs()


def close(a: np.ndarray, b: np.ndarray, spec: InputSpec) -> None:
    # One part in 10^5 of the input's range: float32 rounding, never a pixel off.
    tolerance = 1e-5 * 255 * spec.scale / min(spec.std)
    assert a.dtype == np.float32 and a.shape == b.shape and a.flags.c_contiguous
    assert float(np.abs(a - b).max()) <= tolerance


@pytest.mark.parametrize("frame_name", list(FRAMES))
@pytest.mark.parametrize(("spec_name", "spec"), SPECS, ids=[n for n, _ in SPECS])
def test_fused_preprocessing_gives_the_reference_tensor(
    assets: Path, spec_name: str, spec: InputSpec, frame_name: str
) -> None:
    frame = FRAMES[frame_name]
    tensor, transform = Preprocessor(spec)(frame)
    want, want_transform = reference(spec, frame)
    close(tensor, want, spec)
    assert transform == want_transform


@pytest.mark.parametrize(("spec_name", "spec"), SPECS[:2], ids=[n for n, _ in SPECS[:2]])
def test_grey_and_bgra_frames_are_preprocessed_as_their_bgr_image(
    assets: Path, spec_name: str, spec: InputSpec
) -> None:
    frame = FRAMES["bikes 333x177 crop"]
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
    bgra[:, :, 3] = 17  # alpha is dropped, whatever it holds
    pre = Preprocessor(spec)
    for image, as_bgr in (
        (grey, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)),
        (grey[:, :, np.newaxis], cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)),
        (bgra, frame),
    ):
        tensor, _ = pre(image)
        close(tensor, reference(spec, as_bgr)[0], spec)


def test_a_reused_buffer_is_written_in_place_and_the_padding_follows_the_frame_size(
    assets: Path,
) -> None:
    spec = dict(SPECS)["person-yolov8s"]
    pre = Preprocessor(spec)
    out = pre.empty()
    # Wide, then tall, then wide again, into the same buffer: each frame's own padding (a canvas
    # padded once for the first size would keep the wide frame's pixels in the tall one's bars).
    for name in ("bikes.mp4", "astronaut 97x301", "bikes 333x177 crop", "astronaut.png"):
        tensor, _ = pre(FRAMES[name], out=out)
        assert tensor is out
        close(out, reference(spec, FRAMES[name])[0], spec)
    # A buffer of another shape is not written: the tensor comes in a new array.
    wrong = np.zeros((1, 640, 640, 3), np.float32)
    tensor, _ = pre(FRAMES["bikes.mp4"], out=wrong)
    assert tensor is not wrong and not wrong.any()
    close(tensor, reference(spec, FRAMES["bikes.mp4"])[0], spec)


def test_frames_that_are_not_8_bit_images_are_refused_with_what_they_are(assets: Path) -> None:
    pre = Preprocessor(dict(SPECS)["face-short-range"])
    with pytest.raises(ValueError, match="8-bit images, this one is uint16"):
        pre(np.zeros((10, 10, 3), np.uint16))
    with pytest.raises(ValueError, match=r"grey, BGR or BGRA images, this one is \(10, 10, 2\)"):
        pre(np.zeros((10, 10, 2), np.uint8))


class RecordingDetector(Detector):
    """The real face detector, keeping every tensor the pipeline hands to the model."""

    tensors: list[np.ndarray]

    def run(
        self, tensor: np.ndarray, transform: Transform, settings: DetectorSettings | None = None
    ) -> tuple[list[Detection], float, float]:
        self.tensors.append(tensor)
        return super().run(tensor, transform, settings)


def test_the_pipeline_reuses_a_few_tensors_and_every_frame_keeps_its_own_detections(
    assets: Path,
) -> None:
    loaded = Detector.load(MODELS / "face-short-range.tflite", threads=1)
    detector = RecordingDetector(loaded.runtime, loaded.card)
    detector.tensors = []
    results: list[Result] = []
    source = open_source(str(MEDIA / "carphone_pristine.mp4"), loop=False, realtime=False)
    pipeline = Pipeline(source, detector, results.append)
    source.start()
    pipeline.start()
    try:
        assert pipeline.finished.wait(120)
    finally:
        pipeline.stop()
        source.stop()
    try:
        assert [r.frame.id for r in results] == list(range(120))
        # One tensor per frame in flight, not one per frame (all 120 are still referenced here).
        assert len({id(t) for t in detector.tensors}) <= 3
        # No tensor was overwritten while the model or the queue still held it: each frame's
        # detections are those of the frame alone.
        for r in results:
            alone, _ = loaded.detect(r.frame.image)
            assert r.detections == alone, r.frame.id
        assert sum(len(r.detections) for r in results) >= 100  # a face in almost every frame
    finally:
        loaded.close()
