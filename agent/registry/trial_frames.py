"""The few recent real frames a new model's trial runs on, kept small: only where a registry is
configured (the agent builds this then), scaled down to at most ``max_side`` pixels on the long
side and at most one a ``min_interval_s``, so a 1080p camera costs ~6 MB, not ~62."""

from __future__ import annotations

import threading
import time
from collections import deque

import cv2
import numpy as np


class RecentFrames:
    """The last ``count`` frames handed to ``add``, downscaled copies; thread-safe."""

    def __init__(self, count: int, max_side: int = 640, min_interval_s: float = 1.0) -> None:
        if count < 1 or max_side < 1:
            raise ValueError("RecentFrames needs count >= 1 and max_side >= 1")
        self.max_side = max_side
        self.min_interval_s = min_interval_s
        self._frames: deque[np.ndarray] = deque(maxlen=count)
        self._lock = threading.Lock()
        self._last = -float("inf")

    def add(self, image: np.ndarray) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return
        self._last = now
        h, w = image.shape[:2]
        scale = self.max_side / max(h, w)
        if scale < 1:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        with self._lock:
            self._frames.append(image)

    def frames(self) -> list[np.ndarray]:
        """Oldest first."""
        with self._lock:
            return list(self._frames)
