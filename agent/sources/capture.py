"""OpenCV ``VideoCapture`` sources: a video file, a V4L2 camera, an RTSP/HTTP stream.

Each class only says how to open its capture and what a failed grab means for it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.errors import SourceError
from agent.sources.base import FrameSource, SourceOptions, to_bgr
from agent.sources.diagnose import Problem, SourceUnavailableError, diagnose, reach

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CameraSource", "CaptureSource", "FileSource", "StreamSource"]

# Files whose header gives no usable rate are replayed at this one.
DEFAULT_FILE_FPS = 25.0


def quiet_video_backends() -> None:
    """Keep OpenCV's and FFmpeg's own warnings (one or two lines per failed open, so per retry)
    out of the log: the source says what failed itself. An ``OPENCV_LOG_LEVEL`` or
    ``OPENCV_FFMPEG_LOGLEVEL`` set in the environment is left as it is."""
    # read by OpenCV when it first opens an FFmpeg capture; -8 is AV_LOG_QUIET
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if "OPENCV_LOG_LEVEL" not in os.environ:
        # OpenCV reads that variable only when it loads, so set the level through its API
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


quiet_video_backends()


class CaptureSource(FrameSource):
    """A source read through ``cv2.VideoCapture``: grab() to advance, retrieve() to decode."""

    def __init__(self, uri: str, **kwargs: Unpack[SourceOptions]) -> None:
        super().__init__(uri, **kwargs)
        self._cap: Any = None

    def _make_capture(self) -> Any:
        """A new ``cv2.VideoCapture``; raise ``SourceError`` when it cannot even be tried."""
        raise NotImplementedError

    def _open_error(self) -> SourceError:
        """The error to raise when the capture did not open: what is wrong, as far as known."""
        return SourceUnavailableError(Problem.OTHER, "cannot open")

    def _grab_failed(self) -> bool:
        """A grab returned nothing: False for a normal end, or raise ``SourceError``."""
        raise SourceError("stopped delivering frames")

    def _open(self) -> None:
        cap = self._make_capture()
        if not cap.isOpened():
            cap.release()
            raise self._open_error()
        self._cap = cap

    def _grab(self) -> bool:
        if self._cap.grab():
            return True
        return self._grab_failed()

    def _retrieve(self) -> npt.NDArray[np.uint8] | None:
        ok, image = self._cap.retrieve()
        if not ok or image is None:
            raise SourceError("could not decode a frame")
        return to_bgr(image)

    def _close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class FileSource(CaptureSource):
    """A video file; it ends, or loops by reopening (which notices a file that was removed)."""

    finite = True

    def __init__(self, uri: str, **kwargs: Unpack[SourceOptions]) -> None:
        super().__init__(uri, **kwargs)
        self.path = Path(uri).expanduser()
        self._grabbed = 0

    def _make_capture(self) -> Any:
        if not self.path.exists():
            raise SourceUnavailableError(Problem.NOT_FOUND, f"no such file: {self.path}")
        if not self.path.is_file():
            raise SourceUnavailableError(Problem.NOT_VIDEO, f"not a file: {self.path}")
        self._grabbed = 0
        return cv2.VideoCapture(str(self.path))

    def _open_error(self) -> SourceError:
        return SourceUnavailableError(
            Problem.NOT_VIDEO,
            f"not a video: cannot open {self.path} (or its format is not supported)",
        )

    def _grab(self) -> bool:
        if super()._grab():
            self._grabbed += 1
            return True
        return False

    def _grab_failed(self) -> bool:
        if self._grabbed == 0:
            # An empty or undecodable file would otherwise "end" at once, and loop in a spin.
            raise SourceUnavailableError(
                Problem.NOT_VIDEO, f"not a video: no frame could be read from {self.path}"
            )
        return False

    def _realtime_fps(self) -> float:
        fps = float(self._cap.get(cv2.CAP_PROP_FPS)) if self._cap is not None else 0.0
        # Some containers report 0, NaN or a timebase (e.g. 90000) instead of a frame rate.
        if not math.isfinite(fps) or not 0 < fps <= 1000:
            return DEFAULT_FILE_FPS
        return fps


class CameraSource(CaptureSource):
    """A V4L2 camera, by index (``0``) or device path (``/dev/video0``)."""

    def __init__(
        self, uri: str, device: int | str | None = None, **kwargs: Unpack[SourceOptions]
    ) -> None:
        super().__init__(uri, **kwargs)
        self.device: int | str = device if device is not None else uri

    def _make_capture(self) -> Any:
        if isinstance(self.device, str) and not Path(self.device).exists():
            raise SourceUnavailableError(Problem.NOT_FOUND, f"no such device: {self.device}")
        return cv2.VideoCapture(self.device, cv2.CAP_V4L2)

    def _open_error(self) -> SourceError:
        return SourceUnavailableError(
            Problem.OTHER, f"cannot open camera {self.device}: absent, busy, or no permission"
        )

    def _grab_failed(self) -> bool:
        raise SourceUnavailableError(
            Problem.STOPPED, f"camera {self.device} stopped delivering frames (unplugged?)"
        )


class StreamSource(CaptureSource):
    """An RTSP or HTTP(S) stream through FFmpeg, with open and read timeouts.

    When it cannot open, a probe of the stream's own host says why (``diagnose``). While it is
    retrying, a TCP connect with ``probe_timeout_s`` goes first, so a camera that is off costs a
    second, not FFmpeg's whole ``open_timeout_s``, and FFmpeg only starts when something listens.
    """

    def __init__(
        self,
        uri: str,
        *,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
        probe_timeout_s: float = 1.0,
        **kwargs: Unpack[SourceOptions],
    ) -> None:
        super().__init__(uri, **kwargs)
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.probe_timeout_s = probe_timeout_s

    def _open(self) -> None:
        if self._retrying():
            reach(self.uri, self.probe_timeout_s)
        super()._open()

    def _make_capture(self) -> Any:
        # Without these FFmpeg waits on a silent server for its own timeouts (30 s and more).
        # OpenCV refuses to open with a parameter its backend does not know, so only pass
        # them where this OpenCV has them.
        params: list[int] = []
        if hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(self.open_timeout_s * 1000)]
        if hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(self.read_timeout_s * 1000)]
        return cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)

    def _open_error(self) -> SourceError:
        return diagnose(self.uri, self.probe_timeout_s)

    def _grab_failed(self) -> bool:
        raise SourceUnavailableError(
            Problem.STOPPED,
            f"stream stopped delivering frames (closed, or silent for {self.read_timeout_s:g} s)",
        )
