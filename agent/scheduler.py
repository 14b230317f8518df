"""Which camera's frame goes to the shared model next: round robin over the cameras that have a
frame not yet taken, newest frame of each, so a fast camera never starves a slow one and each
camera's own fps cap (paced by its source) is what limits it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.motion import MotionGate
from agent.sources import Frame, FrameSource


@dataclass(eq=False)
class Feed:
    """One camera as the pipeline sees it: its name, its source and its motion gate."""

    name: str
    source: FrameSource
    gate: MotionGate | None = None
    #: monotonic time a frame of this camera last went to the model (its motion recheck)
    last_to_model: float = -float("inf")
    # A frame taken from the source but handed back unused (its turn was lost to timing):
    # served on the camera's next turn unless the source has a newer one.
    _returned: Frame | None = field(default=None, repr=False)

    def take(self) -> Frame | None:
        """The newest frame not yet taken, without waiting."""
        frame = self.source.read(timeout=0)
        if frame is None:
            frame, self._returned = self._returned, None
        else:
            self._returned = None
        return frame

    def put_back(self, frame: Frame) -> None:
        """``frame`` was taken but not used: the next ``take`` returns it, unless the source has
        a newer one by then."""
        self._returned = frame

    @property
    def ended(self) -> bool:
        return self._returned is None and self.source.ended


class RoundRobin:
    """Hands out ``(feed, frame)``: starting after the camera served last, the first camera with
    a frame waiting. Sources wake it through a shared event when they deliver a frame."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        if not feeds:
            raise ValueError("a pipeline needs at least one camera")
        names = [f.name for f in feeds]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must differ: {names}")
        self.feeds = list(feeds)
        self._next = 0
        self._delivered = threading.Event()
        for feed in self.feeds:
            feed.source.on_frame = self._delivered.set

    @property
    def ended(self) -> bool:
        """Every camera is a finite source that reached its end with every frame handed out."""
        return all(f.ended for f in self.feeds)

    @property
    def lossless(self) -> bool:
        """Every frame of every camera must be processed (files read as fast as they are
        taken): no frame may be dropped in favour of a newer one."""
        return all(f.source.lossless for f in self.feeds)

    def next(self, timeout: float) -> tuple[Feed, Frame] | None:
        """The next camera's newest frame; None after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        while True:
            # Cleared before looking: a frame delivered while we look sets it again, so the wait
            # below never sleeps through it.
            self._delivered.clear()
            count = len(self.feeds)
            for step in range(count):
                i = (self._next + step) % count
                feed = self.feeds[i]
                frame = feed.take()
                if frame is not None:
                    self._next = (i + 1) % count
                    return feed, frame
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                return None
            self._delivered.wait(remaining)

    def give_back(self, feed: Feed, frame: Frame) -> None:
        """``frame`` was taken but not used: with several cameras it is ``feed``'s again and
        ``feed`` is next (it keeps its turn); with one, it is dropped (a newer frame is better)."""
        if len(self.feeds) > 1:
            feed.put_back(frame)
            self._next = self.feeds.index(feed)
