"""The frame source contract: a reader thread, a newest-frame mailbox, reconnect with backoff.

Concrete sources (``capture.py``, ``folder.py``) only say how to open, grab, decode and close.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, TypedDict
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
import numpy.typing as npt

from agent.errors import SourceError
from agent.sources.diagnose import Problem, SourceUnavailableError
from agent.sources.retry import Backoff, RetryLog

__all__ = [
    "Frame",
    "FrameSource",
    "SourceOptions",
    "SourceStatus",
    "StatusCallback",
    "redact_uri",
    "to_bgr",
]

log = logging.getLogger("agent.sources")


@dataclass(frozen=True)
class Frame:
    """One captured image; ``id`` increases per source from 0, across reconnects and loops.

    ``ts`` is the wall-clock time of capture (published), ``mono`` the same instant on the
    monotonic clock: the pipeline measures each frame's age and waits against it."""

    id: int
    ts: float
    image: npt.NDArray[np.uint8]
    source: str
    mono: float = dataclasses.field(default_factory=time.monotonic)


@dataclass
class SourceStatus:
    """What a source is doing, for health reports and metrics.

    ``state`` is one of ``starting``, ``connected``, ``retrying``, ``ended``, ``stopped``.
    ``dropped`` counts frames replaced in the mailbox before the consumer took them;
    ``skipped`` counts frames passed over (not decoded) to keep under the ``fps`` cap.
    ``last_error`` says what the last failure was (kept after a recovery); ``error_kind`` is its
    ``Problem`` value: ``refused``, ``timeout``, ``not_found``, ``not_video``, ...
    """

    state: str
    uri: str
    frames: int = 0
    dropped: int = 0
    failures: int = 0
    last_error: str | None = None
    next_retry_s: float | None = None
    skipped: int = 0
    error_kind: str | None = None

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


StatusCallback = Callable[[SourceStatus], None]


class SourceOptions(TypedDict, total=False):
    """The keyword options every source takes (see ``FrameSource``)."""

    fps: float
    loop: bool
    realtime: bool
    backoff_initial_s: float
    backoff_max_s: float
    on_status: StatusCallback | None


def to_bgr(image: np.ndarray) -> npt.NDArray[np.uint8]:
    """Bring a decoded image to BGR uint8 HxWx3, whatever the decoder gave."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels == 1:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if channels == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    raise SourceError(f"unsupported image with {channels} channels")


def redact_uri(uri: str) -> str:
    """The uri without its password, fit for logs, status and published frames."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


class FrameSource:
    """A source of frames read by its own thread; ``read`` returns the newest one.

    Subclasses implement ``_open``, ``_grab``, ``_retrieve`` and ``_close``. Every failure in them
    (``SourceError`` or anything else) is caught here: the source retries with a capped
    exponential backoff and never lets an exception out of its thread.
    """

    #: a file or folder: it can end, loop, and be read losslessly
    finite: ClassVar[bool] = False
    #: how long ``stop`` waits for a reader stuck in a blocking capture call
    stop_timeout_s: ClassVar[float] = 15.0

    def __init__(
        self,
        uri: str,
        *,
        fps: float = 0,
        loop: bool = False,
        realtime: bool = True,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 2.0,
        on_status: StatusCallback | None = None,
    ) -> None:
        if fps < 0:
            raise ValueError(f"fps must be >= 0, got {fps}")
        self.backoff = Backoff(backoff_initial_s, backoff_max_s)
        self.uri = uri
        self.fps = float(fps)
        self._replan = False
        # When a blocking open/grab/decode started (None: not in one): a camera or stream read
        # that never returns shows here, and the service watchdog stops pinging.
        self._busy_since: float | None = None
        self.loop = loop
        self.realtime = realtime
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.on_status = on_status
        #: called (on the reader thread, so it must not block) when a frame is ready to read or
        #: the source is done: a scheduler waiting on several cameras wakes on it
        self.on_frame: Callable[[], None] | None = None
        self._name = redact_uri(uri)
        self.retry_log = RetryLog(self._name)
        # monotonic time the reader thread last went round its loop (or woke from a retry wait):
        # a supervisor reads it to tell a live reader from a dead or stuck one
        self.heartbeat = time.monotonic()

        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # guarded by _cond
        self._slot: Frame | None = None
        self._next_id = 0
        self._finished = False
        self._status = SourceStatus(state="starting", uri=self._name)
        self._retry_at: float | None = None

        # reader-thread only
        self._opened = False
        self._lossless = False
        self._pace_s = 0.0
        self._cap_s = 0.0
        self._next_tick = 0.0
        self._next_due = 0.0

    # -- what subclasses provide -------------------------------------------------------------

    def _open(self) -> None:
        """Open the underlying capture; raise ``SourceError`` with a readable reason."""
        raise NotImplementedError

    def _grab(self) -> bool:
        """Advance to the next frame without decoding it; False at the end of a finite source."""
        raise NotImplementedError

    def _retrieve(self) -> npt.NDArray[np.uint8] | None:
        """Decode the grabbed frame to BGR; None passes over it (e.g. one unreadable image)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the capture; called from the reader thread only, possibly twice."""

    def _rewind(self) -> None:
        """Make the next ``_open`` start at the beginning (``loop``)."""

    def _realtime_fps(self) -> float:
        """The rate at which ``realtime`` replays this source once open; 0 for no pacing."""
        return 0.0

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread (once)."""
        with self._cond:
            if self._thread is not None:
                return
            if self._stop.is_set():
                raise RuntimeError(f"source {self._name} was stopped; open a new one")
            self._thread = threading.Thread(
                target=self._run, name=f"source {self._name}", daemon=True
            )
        self._thread.start()

    def read(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet returned; None on timeout, or once the source is done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._slot is None:
                if self._finished:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            # a lossless reader is waiting for the slot to empty
            self._cond.notify_all()
            return frame

    @property
    def status(self) -> SourceStatus:
        with self._cond:
            return self._snapshot()

    @property
    def lossless(self) -> bool:
        """Every frame is handed out, none dropped (a file or folder read as fast as it is
        taken): a consumer must not drop any either. Known once the source is open."""
        return self._lossless

    @property
    def ended(self) -> bool:
        """A finite source reached its end and every frame was handed out."""
        with self._cond:
            return self._status.state == "ended" and self._slot is None

    def stop(self) -> None:
        """Stop the reader, wait for it and release the capture; safe to call twice."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.stop_timeout_s)
            if thread.is_alive():
                # OpenCV calls cannot be interrupted; the daemon thread releases it when they return
                log.warning(
                    "source %s: reader still blocked after %.0f s", self._name, self.stop_timeout_s
                )
        with self._cond:
            self._finished = True
            self._cond.notify_all()
            self._wake()
            changed = self._status.state not in ("ended", "stopped")
            if changed:
                self._status.state = "stopped"
                self._retry_at = None
            snapshot = self._snapshot()
        if changed:
            self._notify(snapshot)

    def __enter__(self) -> FrameSource:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, state={self._status.state!r})"

    # -- reader thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.heartbeat = time.monotonic()
                if not self._opened:
                    try:
                        self._busy_since = time.monotonic()
                        self._open()
                    except Exception as exc:
                        self._busy_since = None
                        self._failed(exc)
                        continue
                    self._busy_since = None
                    self._opened = True
                    self._plan_rates()
                try:
                    more = self._step()
                except Exception as exc:
                    self._busy_since = None
                    self._failed(exc)
                    continue
                if not more:
                    self._close_quietly()
                    if self.loop:
                        self._rewind()
                        continue
                    self._set_ended()
                    return
        finally:
            self._close_quietly()
            with self._cond:
                self._finished = True
                self._cond.notify_all()
                self._wake()

    def _wake(self) -> None:
        if self.on_frame is not None:
            self.on_frame()

    def _plan_rates(self) -> None:
        """Decide pacing (replay speed) and cap (hand-out limit) for the source just opened."""
        rt_fps = self._realtime_fps() if self.realtime else 0.0
        self._lossless = self.finite and rt_fps <= 0
        if self._lossless:
            # nothing is dropped, so the cap can only slow the replay down
            self._pace_s = 1 / self.fps if self.fps else 0.0
            self._cap_s = 0.0
        else:
            self._pace_s = 1 / rt_fps if rt_fps > 0 else 0.0
            cap_s = 1 / self.fps if self.fps else 0.0
            # a cap no tighter than the pacing would only drop frames to timer jitter
            self._cap_s = cap_s if cap_s > self._pace_s else 0.0
        now = time.monotonic()
        self._next_tick = now
        self._next_due = now

    def _retrying(self) -> bool:
        """The last attempt failed (and no frame came since): a reopen may check cheaply first."""
        with self._cond:
            return self._status.failures > 0

    def stalled_for(self) -> float:
        """Seconds the reader has been stuck in one open/grab/decode call (0 when not in one)."""
        since = self._busy_since
        return time.monotonic() - since if since is not None else 0.0

    def set_fps(self, fps: float) -> None:
        """Change the cap while running; the reader thread applies it before its next frame."""
        if fps < 0:
            raise ValueError(f"fps must be >= 0, got {fps}")
        self.fps = float(fps)
        self._replan = True

    def _step(self) -> bool:
        """Read one frame and hand it over, or pass over it to keep under the cap.

        False at the end of a finite source.
        """
        if self._replan:
            self._replan = False
            self._plan_rates()
        if self._pace_s:
            delay = self._next_tick - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return True
            now = time.monotonic()
            self._next_tick += self._pace_s
            if self._next_tick < now:
                # fell behind (slow decode, or a lossless consumer): go on from now, no burst
                self._next_tick = now + self._pace_s
        self._busy_since = time.monotonic()
        grabbed = self._grab()
        self._busy_since = None
        if not grabbed:
            return False
        captured = (time.time(), time.monotonic())  # the grab, not the end of decoding
        if self._cap_s:
            now = time.monotonic()
            if now < self._next_due:
                with self._cond:
                    self._status.skipped += 1
                return True
            # keep a fixed schedule so discrete arrival times do not push the rate under the cap
            self._next_due += self._cap_s
            if self._next_due <= now:
                self._next_due = now + self._cap_s
        self._busy_since = time.monotonic()
        image = self._retrieve()
        self._busy_since = None
        if image is not None:
            self._deliver(image, captured)
        return True

    def _deliver(
        self, image: npt.NDArray[np.uint8], captured: tuple[float, float] | None = None
    ) -> None:
        with self._cond:
            if self._lossless:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                captured = None  # read on demand: its time is when the consumer can have it
            elif self._slot is not None:
                self._status.dropped += 1
            ts, mono = captured or (time.time(), time.monotonic())
            self._slot = Frame(self._next_id, ts, image, self._name, mono)
            self._next_id += 1
            self._status.frames += 1
            self._cond.notify_all()
            self._wake()
            if self._status.state == "connected":
                return
            recovered = self._status.failures
            self._status.state = "connected"
            self._status.failures = 0
            self._retry_at = None
            snapshot = self._snapshot()
        self.retry_log.recovered(recovered)
        self._notify(snapshot)

    def _failed(self, exc: Exception) -> None:
        self._close_quietly()
        if isinstance(exc, SourceError):
            reason = str(exc)
            kind = exc.problem if isinstance(exc, SourceUnavailableError) else Problem.OTHER
        else:
            reason = f"{type(exc).__name__}: {exc}"
            kind = Problem.OTHER
        with self._cond:
            self._status.failures += 1
            failures = self._status.failures
            delay = self.backoff.delay(failures)
            self._status.state = "retrying"
            self._status.last_error = reason
            self._status.error_kind = kind.value
            self._retry_at = time.monotonic() + delay
            snapshot = self._snapshot()
        self.retry_log.failed(
            reason, kind.value, failures, delay, exc_info=not isinstance(exc, SourceError)
        )
        self._notify(snapshot)
        self._stop.wait(delay)
        self.heartbeat = time.monotonic()

    def _set_ended(self) -> None:
        with self._cond:
            self._status.state = "ended"
            self._finished = True
            self._cond.notify_all()
            self._wake()
            snapshot = self._snapshot()
        log.info("source %s: ended after %d frames", self._name, snapshot.frames)
        self._notify(snapshot)

    def _close_quietly(self) -> None:
        self._opened = False
        try:
            self._close()
        except Exception:
            log.warning("source %s: error while closing", self._name, exc_info=True)

    def _snapshot(self) -> SourceStatus:
        """A copy of the status; the caller holds ``_cond``."""
        next_retry = None
        if self._retry_at is not None and self._status.state == "retrying":
            next_retry = max(0.0, self._retry_at - time.monotonic())
        return dataclasses.replace(self._status, next_retry_s=next_retry)

    def _notify(self, snapshot: SourceStatus) -> None:
        if self.on_status is None:
            return
        try:
            self.on_status(snapshot)
        except Exception:
            # a broken callback must not take the camera down with it
            log.exception("source %s: on_status callback failed", self._name)
