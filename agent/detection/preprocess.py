"""Frame -> model input tensor, and the inverse mapping of boxes back to the frame."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.detection.card import InputSpec


@dataclass(frozen=True)
class Transform:
    """How a frame was placed in the model input: ``input_px = frame_px * scale + pad``."""

    frame_width: int
    frame_height: int
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes normalised to the model input -> boxes normalised to the frame, clipped."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, [0, 2]] = (boxes[:, [0, 2]] * self.input_width - self.pad_x) / (
            self.scale_x * self.frame_width
        )
        out[:, [1, 3]] = (boxes[:, [1, 3]] * self.input_height - self.pad_y) / (
            self.scale_y * self.frame_height
        )
        return np.clip(out, 0.0, 1.0)


class Preprocessor:
    """Letterbox or stretch, colour order, scaling and layout, as the model card says.

    The per-channel affine step is folded into one multiply-add so a frame costs one resize,
    one colour swap and one fused arithmetic pass.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        std = np.asarray(spec.std, np.float32)
        self._mul = (spec.scale / std).astype(np.float32)
        self._add = (-np.asarray(spec.mean, np.float32) / std).astype(np.float32)

    def __call__(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Transform]:
        spec = self.spec
        h, w = frame_bgr.shape[:2]
        if spec.resize == "stretch":
            sx, sy = spec.width / w, spec.height / h
            canvas = cv2.resize(
                frame_bgr, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR
            )
            pad_x = pad_y = 0.0
        else:
            s = min(spec.width / w, spec.height / h)
            nw, nh = round(w * s), round(h * s)
            # The frame lands on nw x nh pixels: map boxes back by that, not by the unrounded s.
            sx, sy = nw / w, nh / h
            pad_x, pad_y = (spec.width - nw) / 2, (spec.height - nh) / 2
            resized = cv2.resize(frame_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
            top, left = int(pad_y), int(pad_x)
            canvas = cv2.copyMakeBorder(
                resized,
                top,
                spec.height - nh - top,
                left,
                spec.width - nw - left,
                cv2.BORDER_CONSTANT,
                value=(spec.pad_value,) * 3,
            )
            pad_x, pad_y = float(left), float(top)
        if spec.color == "RGB":
            canvas = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        tensor = canvas.astype(np.float32)
        tensor *= self._mul
        tensor += self._add
        if spec.layout == "NCHW":
            tensor = tensor.transpose(2, 0, 1)
        tensor = np.ascontiguousarray(tensor[np.newaxis])
        return tensor, Transform(w, h, spec.width, spec.height, sx, sy, pad_x, pad_y)
