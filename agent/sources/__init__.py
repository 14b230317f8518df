"""Frame sources: V4L2 cameras, RTSP/HTTP streams, video files and image folders.

``open_source`` picks the kind from the uri; every kind reconnects with backoff on its own.
"""

from __future__ import annotations

from pathlib import Path

from agent.sources.base import Frame, FrameSource, SourceStatus, StatusCallback
from agent.sources.capture import CameraSource, FileSource, StreamSource
from agent.sources.folder import FolderSource

__all__ = [
    "STREAM_SCHEMES",
    "CameraSource",
    "FileSource",
    "FolderSource",
    "Frame",
    "FrameSource",
    "SourceStatus",
    "StreamSource",
    "open_source",
    "source_kind",
]

# Network schemes FFmpeg reads as live streams.
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


def source_kind(uri: str | int) -> str:
    """``camera``, ``stream``, ``folder`` or ``file``: what ``open_source`` makes of ``uri``."""
    if isinstance(uri, int):
        return "camera"
    text = uri.strip()
    if text.isdigit() or text.startswith("/dev/video"):
        return "camera"
    if text.lower().startswith(STREAM_SCHEMES):
        return "stream"
    if Path(text).expanduser().is_dir():
        return "folder"
    return "file"


def open_source(
    uri: str | int,
    *,
    fps: float = 0,
    loop: bool = False,
    realtime: bool = True,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 2.0,
    on_status: StatusCallback | None = None,
) -> FrameSource:
    """The source for ``uri``, not started yet (``start()`` it, or use it in a ``with``).

    An integer or digit string, or ``/dev/videoN``, is a V4L2 camera; an ``rtsp(s)://`` or
    ``http(s)://`` URL a network stream; an existing directory an image folder; anything else a
    video file. Nothing is opened here: a missing file or camera shows as ``retrying``.
    """
    kind = source_kind(uri)
    text = str(uri).strip()
    if kind == "camera":
        return CameraSource(
            text,
            device=int(text) if text.isdigit() else text,
            fps=fps,
            loop=loop,
            realtime=realtime,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            on_status=on_status,
        )
    cls: type[FrameSource] = {"stream": StreamSource, "folder": FolderSource}.get(kind, FileSource)
    return cls(
        text,
        fps=fps,
        loop=loop,
        realtime=realtime,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
        on_status=on_status,
    )
