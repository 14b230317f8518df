"""Frame -> model input tensor, and the inverse mapping of boxes back to the frame."""

from __future__ import annotations

import threading
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
        out = np.empty(boxes.shape, np.float32)
        out[:, 0::2] = (boxes[:, 0::2] * self.input_width - self.pad_x) / (
            self.scale_x * self.frame_width
        )
        out[:, 1::2] = (boxes[:, 1::2] * self.input_height - self.pad_y) / (
            self.scale_y * self.frame_height
        )
        np.maximum(out, 0.0, out=out)
        return np.minimum(out, 1.0, out=out)


def _bgr(frame: np.ndarray) -> np.ndarray:
    """A grey (HxW, HxWx1) or BGRA frame as BGR; a BGR frame as it is."""
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be 8-bit images, this one is {frame.dtype}")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    if frame.ndim == 3 and frame.shape[2] == 4:
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR))
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be grey, BGR or BGRA images, this one is {frame.shape}")
    return frame


class Preprocessor:
    """Letterbox or stretch, colour order, scaling and layout, as the model card says.

    Two native calls a frame, no Python arithmetic on pixels: the frame is resized straight into
    its place on a kept 8-bit canvas (whose padding is filled once per frame size), and OpenCV's
    ``blobFromImageWithParams`` does the colour swap, the float conversion, the card's
    ``(pixel * scale - mean) / std`` and the layout in one pass, into ``out`` when given (a buffer
    from ``empty()`` the caller owns and reuses: no fresh 4.9 MB for a 640x640 float tensor each
    frame, nor the page faults that come with it). Thread-safe: the canvas is used under a lock.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        std = np.asarray(spec.std, np.float64)
        params = cv2.dnn.Image2BlobParams()
        # blob = (pixel - mean') * factor: factor = scale / std, mean' = mean / scale
        params.scalefactor = (*(spec.scale / std), 1.0)
        params.mean = (*(np.asarray(spec.mean, np.float64) / spec.scale), 0.0)
        params.swapRB = spec.color == "RGB"
        params.size = (spec.width, spec.height)  # the canvas's: nothing is resized here
        params.ddepth = cv2.CV_32F
        params.datalayout = cv2.DNN_LAYOUT_NCHW if spec.layout == "NCHW" else cv2.DNN_LAYOUT_NHWC
        params.paddingmode = cv2.dnn.DNN_PMODE_NULL
        self._params = params
        self.shape: tuple[int, int, int, int] = (
            (1, 3, spec.height, spec.width)
            if spec.layout == "NCHW"
            else (1, spec.height, spec.width, 3)
        )
        self._canvas = np.full((spec.height, spec.width, 3), spec.pad_value, np.uint8)
        # the frame size the canvas is padded for, where such a frame goes, and its place on it
        self._placed: tuple[tuple[int, int], Transform, np.ndarray] | None = None
        self._lock = threading.Lock()

    def empty(self) -> np.ndarray:
        """A tensor buffer of this model's input, for ``out``."""
        return np.empty(self.shape, np.float32)

    def place(self, width: int, height: int) -> tuple[int, int, Transform]:
        """Where a ``width`` x ``height`` frame lands in the input: its size there, and the
        transform (its offsets in whole pixels)."""
        spec = self.spec
        if spec.resize == "stretch":
            sx, sy = spec.width / width, spec.height / height
            return spec.width, spec.height, Transform(
                width, height, spec.width, spec.height, sx, sy, 0.0, 0.0
            )
        s = min(spec.width / width, spec.height / height)
        # (at least one pixel: a 1001x3 frame still shows in a 128x128 input)
        nw, nh = max(1, round(width * s)), max(1, round(height * s))
        # The frame lands on nw x nh pixels: map boxes back by that, not by the unrounded s.
        left, top = int((spec.width - nw) / 2), int((spec.height - nh) / 2)
        return nw, nh, Transform(
            width, height, spec.width, spec.height, nw / width, nh / height, float(left),
            float(top),
        )

    def __call__(
        self, frame_bgr: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, Transform]:
        """The model's input tensor for a frame (BGR; grey and BGRA are converted first), in
        ``out`` when it is a buffer of ``shape`` (else a new array), and where the frame went."""
        frame = _bgr(frame_bgr)
        h, w = frame.shape[:2]
        if out is not None and (out.shape != self.shape or out.dtype != np.float32):
            out = None
        with self._lock:
            placed = self._placed
            if placed is None or placed[0] != (w, h):  # the first frame, or another size
                nw, nh, transform = self.place(w, h)
                left, top = int(transform.pad_x), int(transform.pad_y)
                self._canvas[:] = self.spec.pad_value
                placed = self._placed = (
                    (w, h),
                    transform,
                    self._canvas[top : top + nh, left : left + nw],
                )
            _, transform, roi = placed
            if roi.shape[:2] == (h, w):
                roi[:] = frame
            else:
                size = (roi.shape[1], roi.shape[0])
                resized = cv2.resize(frame, size, dst=roi, interpolation=cv2.INTER_LINEAR)
                if resized is not roi:  # an OpenCV that allocated its own output after all
                    roi[:] = resized
            if out is None:
                tensor = cv2.dnn.blobFromImageWithParams(self._canvas, self._params)
            else:
                tensor = cv2.dnn.blobFromImageWithParams(self._canvas, out, self._params)
        return np.asarray(tensor, np.float32), transform
