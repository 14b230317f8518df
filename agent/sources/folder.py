"""A folder of still images replayed as a video: sorted by name, read with ``cv2.imread``.

Used for demos, tests and benchmarks on a fixed set of pictures.
"""

from __future__ import annotations

import bisect
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from agent.errors import SourceError
from agent.sources.base import FrameSource, SourceOptions, to_bgr
from agent.sources.diagnose import Problem, SourceUnavailableError

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["IMAGE_SUFFIXES", "FolderSource"]

log = logging.getLogger("agent.sources")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


class FolderSource(FrameSource):
    """The images of a folder in name order; the listing is read again at every pass.

    ``realtime`` replays at ``fps`` when given, else as fast as the consumer takes frames.
    One unreadable image is passed over (with one warning); a folder that disappears, or where
    no image can be read, is a failure and retried.
    """

    finite = True

    def __init__(self, uri: str, **kwargs: Unpack[SourceOptions]) -> None:
        super().__init__(uri, **kwargs)
        self.path = Path(uri).expanduser()
        self._files: list[Path] = []
        self._index = 0
        # the name of the last image grabbed, so a reopen after a failure resumes after it
        self._last: str | None = None
        self._current: Path | None = None
        self._readable_in_pass = 0
        self._warned: set[str] = set()

    def _open(self) -> None:
        if not self.path.is_dir():
            raise SourceUnavailableError(Problem.NOT_FOUND, f"no such folder: {self.path}")
        try:
            files = [
                p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            ]
        except OSError as exc:
            raise SourceError(f"cannot list {self.path}: {exc.strerror or exc}") from exc
        if not files:
            raise SourceUnavailableError(
                Problem.NOT_VIDEO, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.path}"
            )
        files.sort(key=lambda p: p.name)
        self._files = files
        names = [p.name for p in files]
        self._index = 0 if self._last is None else bisect.bisect_right(names, self._last)

    def _grab(self) -> bool:
        if self._index >= len(self._files):
            if self._readable_in_pass == 0:
                # Start the next attempt from the top, where a readable image may have appeared.
                self._last = None
                raise SourceUnavailableError(
                    Problem.NOT_VIDEO,
                    f"none of the {len(self._files)} images in {self.path} is readable",
                )
            return False
        self._current = self._files[self._index]
        self._index += 1
        self._last = self._current.name
        return True

    def _retrieve(self) -> npt.NDArray[np.uint8] | None:
        path = self._current
        if path is None:
            return None
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            if not self.path.is_dir():
                raise SourceError(f"folder {self.path} was removed")
            if path.name not in self._warned:
                self._warned.add(path.name)
                log.warning("source %s: cannot read image %s, passing over it", self.path, path)
            return None
        self._readable_in_pass += 1
        return to_bgr(image)

    def _rewind(self) -> None:
        self._last = None
        self._readable_in_pass = 0

    def _realtime_fps(self) -> float:
        return self.fps
