"""Frames for calibration and evaluation: a video file, an image folder or one image, each frame
named (file name, or frame index in a video) so labels and held-out splits can refer to it."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.errors import CompressError
from agent.sources.folder import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Frame:
    name: str  # image file name, or the frame index in a video as a string
    image: np.ndarray  # BGR, as cv2 reads it


def frame_names(data: str | Path) -> list[str]:
    """Every frame's name in order, without decoding images (videos are counted by reading)."""
    path = Path(data)
    if path.is_dir():
        return sorted(p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [path.name]
    if not path.is_file():
        raise CompressError(f"{path}: no such video, image or folder")
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.grab():
        count += 1
    cap.release()
    if count == 0:
        raise CompressError(f"{path}: cannot read frames from this video")
    return [str(i) for i in range(count)]


def read_frames(data: str | Path, names: Sequence[str]) -> list[Frame]:
    """The named frames, in the order given."""
    path = Path(data)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        frames = []
        for name in names:
            file = path / name if path.is_dir() else path
            image = cv2.imread(str(file))
            if image is None:
                raise CompressError(f"{file}: cannot read this image")
            frames.append(Frame(name, image))
        return frames
    wanted = {int(n) for n in names}
    found: dict[int, np.ndarray] = {}
    cap = cv2.VideoCapture(str(path))
    index = 0
    while len(found) < len(wanted) and cap.grab():
        if index in wanted:
            ok, image = cap.retrieve()
            if ok:
                found[index] = image
        index += 1
    cap.release()
    missing = sorted(wanted - found.keys())
    if missing:
        raise CompressError(f"{path}: no frame {missing[0]} in this video ({index} frames)")
    return [Frame(n, found[int(n)]) for n in names]


def spread(names: Sequence[str], count: int, exclude: Collection[str] = ()) -> list[str]:
    """``count`` names evenly spread over ``names``, leaving out ``exclude`` (frames held out:
    calibration frames are never evaluated on)."""
    pool = [n for n in names if n not in set(exclude)]
    if count >= len(pool):
        return pool
    picks = np.linspace(0, len(pool) - 1, count).round().astype(int)
    return [pool[i] for i in picks]


def sample_frames(data: str | Path, count: int, exclude: Collection[str] = ()) -> list[Frame]:
    """``count`` frames evenly spread over ``data``, none of ``exclude``."""
    if count <= 0:
        raise CompressError(f"frame count must be positive, not {count}")
    names = spread(frame_names(data), count, exclude)
    if not names:
        raise CompressError(f"{data}: no frames left to use (all {len(exclude)} held out)")
    return read_frames(data, names)
