"""A detector: a runtime, its model card and the decoder of its family, from frame to detections."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.detection.card import ModelCard, resolve_card
from agent.detection.decoders import DECODERS
from agent.detection.nms import label_groups, nms
from agent.detection.preprocess import Preprocessor, Transform
from agent.detection.types import Candidates, Detection
from agent.errors import ModelCardError
from agent.runtimes import Runtime, load_runtime


@dataclass
class StageTimes:
    """Milliseconds spent in each stage of one frame."""

    preprocess: float = 0.0
    inference: float = 0.0
    decode: float = 0.0

    @property
    def total(self) -> float:
        return self.preprocess + self.inference + self.decode


@dataclass
class DetectorSettings:
    """Thresholds and label filter; changeable at run time."""

    score_threshold: float | None = None  # None: the card's default
    iou_threshold: float | None = None
    labels: Sequence[str] = field(default_factory=tuple)  # empty: all


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def decode_candidates(
    outputs: Sequence[np.ndarray],
    card: ModelCard,
    names: Sequence[str],
    settings: DetectorSettings | None = None,
) -> Candidates:
    """The family's decoder, the label filter and NMS (classes with the same label suppress each
    other), at the settings' thresholds (or the card's). Also used where only a model's tail
    runs (split inference)."""
    settings = settings or DetectorSettings()
    score = settings.score_threshold
    if score is None:
        score = card.thresholds.score
    iou = settings.iou_threshold
    if iou is None:
        iou = card.thresholds.iou
    candidates = DECODERS[card.family](outputs, card, score, names)
    if settings.labels and len(candidates):
        wanted = {i for i, name in enumerate(card.labels) if name in settings.labels}
        candidates = candidates.select(np.isin(candidates.class_ids, list(wanted)))
    return nms(candidates, iou, label_groups(card.labels))


class Detector:
    """Runs one model on frames. Not thread-safe: one pipeline thread owns it."""

    def __init__(self, runtime: Runtime, card: ModelCard) -> None:
        self.runtime = runtime
        self.card = card
        self._check_fits()
        self.preprocess = Preprocessor(card.input)
        self._names = [o.name for o in runtime.outputs]

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        card: str | Path | None = None,
        threads: int = 0,
        runtime: str | None = None,
        providers: list[str] | None = None,
        delegate: str | None = None,
        warmup: bool = True,
        device: str = "CPU",
        precision: str = "f32",
        hint: str = "LATENCY",
        cache_dir: str | Path | None = None,
    ) -> Detector:
        """A detector for ``path``; the options are ``load_runtime``'s (``device``,
        ``precision``, ``hint`` and ``cache_dir``: OpenVINO's)."""
        rt = load_runtime(
            path,
            threads=threads,
            runtime=runtime,
            providers=providers,
            delegate=delegate,
            device=device,
            precision=precision,
            hint=hint,
            cache_dir=cache_dir,
        )
        detector = cls(rt, resolve_card(path, rt, card))
        if warmup:
            detector.warmup()
        return detector

    def _check_fits(self) -> None:
        if len(self.runtime.inputs) != 1:
            raise ModelCardError(
                f"{self.runtime.path}: detectors take one image input, this model has "
                f"{len(self.runtime.inputs)}"
            )
        shape = self.runtime.inputs[0].shape
        spec = self.card.input
        want = (
            (1, 3, spec.height, spec.width)
            if spec.layout == "NCHW"
            else (1, spec.height, spec.width, 3)
        )
        if tuple(shape) != want:
            raise ModelCardError(
                f"{self.runtime.path}: the card says input {spec.width}x{spec.height} "
                f"{spec.layout} {list(want)}, the model has {list(shape)}"
            )
        q = self.card.quantization
        if q is not None and q.input_dtype is not None:
            # A full-integer model's card records the input's quantization: frames are
            # quantized with the model's parameters, which must be the ones the card was made for.
            got = self.runtime.inputs[0]
            if (str(got.dtype), got.zero_point) != (q.input_dtype, q.input_zero_point) or not (
                q.input_scale is not None and abs(got.scale - q.input_scale) <= 1e-6 * q.input_scale
            ):
                raise ModelCardError(
                    f"{self.runtime.path}: the card says input {q.input_dtype} scale "
                    f"{q.input_scale} zero point {q.input_zero_point}, the model has "
                    f"{got.dtype} scale {got.scale} zero point {got.zero_point}"
                )

    def warmup(self) -> None:
        """Run one inference on a blank frame: the first real frame is not slow, and a model that
        cannot run fails here rather than in the pipeline."""
        blank = np.zeros((self.card.input.height, self.card.input.width, 3), np.uint8)
        self.detect(blank)

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self.runtime.infer([tensor])

    def postprocess(
        self,
        outputs: Sequence[np.ndarray],
        transform: Transform,
        settings: DetectorSettings | None = None,
    ) -> list[Detection]:
        return self.to_detections(self.candidates(outputs, settings), transform)

    def candidates(
        self, outputs: Sequence[np.ndarray], settings: DetectorSettings | None = None
    ) -> Candidates:
        """Decode raw outputs, keep the wanted labels, suppress overlaps: boxes still in the
        model input's 0..1 coordinates."""
        return decode_candidates(outputs, self.card, self._names, settings)

    def to_detections(self, kept: Candidates, transform: Transform) -> list[Detection]:
        """Candidates in model-input coordinates -> detections in the frame's 0..1 coordinates."""
        boxes = transform.to_frame(kept.boxes)
        # A box squeezed to nothing by clipping lies wholly in the letterbox padding.
        seen = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = self.card.labels
        return [
            Detection(
                label=labels[c] if 0 <= c < len(labels) else str(c),
                class_id=c,
                score=s,
                box=(b[0], b[1], b[2], b[3]),
            )
            # one conversion to Python numbers per array, not one per value
            for b, s, c in zip(
                boxes[seen].tolist(),
                kept.scores[seen].tolist(),
                kept.class_ids[seen].tolist(),
                strict=True,
            )
        ]

    def run(
        self,
        tensor: np.ndarray,
        transform: Transform,
        settings: DetectorSettings | None = None,
    ) -> tuple[list[Detection], float, float]:
        """A preprocessed frame -> its detections, and the milliseconds of inference and of
        decoding (decoder, label filter, NMS)."""
        t0 = time.perf_counter()
        outputs = self.infer(tensor)
        t1 = time.perf_counter()
        detections = self.postprocess(outputs, transform, settings)
        return detections, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3

    def detect(
        self, frame_bgr: np.ndarray, settings: DetectorSettings | None = None
    ) -> tuple[list[Detection], StageTimes]:
        t0 = time.perf_counter()
        tensor, transform = self.preprocess(frame_bgr)
        preprocess_ms = (time.perf_counter() - t0) * 1e3
        detections, inference_ms, decode_ms = self.run(tensor, transform, settings)
        return detections, StageTimes(preprocess_ms, inference_ms, decode_ms)

    def close(self) -> None:
        self.runtime.close()
