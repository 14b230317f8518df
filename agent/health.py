"""Process health: a heartbeat per thread (read by the systemd watchdog and the retained status),
supervised threads whose crash is logged and marked, and CPU/RSS figures for the metrics topic."""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("agent.health")


class Heartbeat:
    """One thread's pulse. The thread calls ``beat()`` at least every ``stall_s`` while it works
    and ``idle()`` before it blocks waiting for work (a wait for work is not a stall)."""

    def __init__(self, name: str, stall_s: float | None) -> None:
        self.name = name
        self.stall_s = stall_s
        self._last = time.monotonic()
        self._idle = False
        self.dead: str | None = None  # why the thread ended against its will
        self.ended = False  # the thread returned on purpose

    def beat(self) -> None:
        self._last = time.monotonic()
        self._idle = False

    __call__ = beat  # a Heartbeat is the ``beat`` callable other parts take

    def idle(self) -> None:
        self._last = time.monotonic()
        self._idle = True

    def stalled_for(self) -> float:
        """Seconds since the last beat while working (0 when idle or ended)."""
        if self._idle or self.ended or self.dead is not None:
            return 0.0
        return time.monotonic() - self._last


@dataclass(frozen=True)
class _Probe:
    """A part that keeps its own pulse (a camera reader, the pipeline stages)."""

    stalled_for: Callable[[], float]
    alive: Callable[[], bool]
    stall_s: float


class Heartbeats:
    """The registry the watchdog reads: beat-driven threads and probed parts, by name."""

    def __init__(self, stall_s: float = 30.0) -> None:
        self.stall_s = stall_s
        self._lock = threading.Lock()
        self._beats: dict[str, Heartbeat] = {}
        self._probes: dict[str, _Probe] = {}

    def register(self, name: str, stall_s: float | None = None) -> Heartbeat:
        """A heartbeat for the thread ``name`` (``stall_s`` defaults to the registry's)."""
        hb = Heartbeat(name, self.stall_s if stall_s is None else stall_s)
        with self._lock:
            self._beats[name] = hb
        return hb

    def beat(self, name: str) -> None:
        with self._lock:
            hb = self._beats.get(name)
        if hb is not None:
            hb.beat()

    def watch(
        self,
        name: str,
        stalled_for: Callable[[], float],
        alive: Callable[[], bool] = lambda: True,
        stall_s: float | None = None,
    ) -> None:
        """Read ``name``'s health from the part itself: stuck when ``stalled_for()`` exceeds
        ``stall_s``, dead when ``alive()`` is false."""
        with self._lock:
            self._probes[name] = _Probe(
                stalled_for, alive, self.stall_s if stall_s is None else stall_s
            )

    def unregister(self, name: str) -> None:
        with self._lock:
            self._beats.pop(name, None)
            self._probes.pop(name, None)

    def problems(self) -> dict[str, str]:
        """Every stuck or dead part and why, e.g. ``{"outbox": "dead: OperationalError: ..."}``."""
        with self._lock:
            beats, probes = list(self._beats.items()), list(self._probes.items())
        out: dict[str, str] = {}
        for name, hb in beats:
            if hb.dead is not None:
                out[name] = f"dead: {hb.dead}"
            elif hb.stall_s is not None and hb.stalled_for() > hb.stall_s:
                out[name] = f"stuck for {hb.stalled_for():.0f} s"
        for name, probe in probes:
            try:
                alive, stalled = probe.alive(), probe.stalled_for()
            except Exception as exc:  # a broken probe is a problem to report, not to raise
                out[name] = f"probe failed: {exc!r}"
                continue
            if not alive:
                out[name] = "dead"
            elif stalled > probe.stall_s:
                out[name] = f"stuck for {stalled:.0f} s"
        return out

    def stuck(self) -> list[str]:
        """Names of the parts that are stuck or dead, sorted; empty when all is well."""
        return sorted(self.problems())


def supervised(
    name: str,
    target: Callable[[], None],
    heartbeat: Heartbeat | None = None,
) -> threading.Thread:
    """A daemon thread running ``target``: a crash is logged with its traceback and marks the
    heartbeat dead (the watchdog then stops pinging and the service manager restarts the agent)
    instead of ending the thread unseen."""

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            if heartbeat is not None:
                heartbeat.dead = f"{type(exc).__name__}: {exc}"
            log.exception("thread %s crashed; it is reported as dead", name)
        else:
            if heartbeat is not None:
                heartbeat.ended = True

    return threading.Thread(target=run, name=name, daemon=True)


class ProcessUsage:
    """CPU percent (of one core: 200 = two cores busy) over the last ``window_s`` to
    ``2 * window_s``, whoever asks and however often (MQTT metrics, a Prometheus scrape, the web
    page): a frequent reader does not shrink the others' window to a fraction of a second. RSS
    in MB."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self._clock, self._cpu_clock = clock, cpu_clock
        self.window_s = window_s
        self.started = clock()
        self._older = self._newer = (self.started, cpu_clock())

    def cpu_percent(self) -> float:
        wall, cpu = self._clock(), self._cpu_clock()
        if wall - self._newer[0] >= self.window_s:
            self._older, self._newer = self._newer, (wall, cpu)
        dw, dc = wall - self._older[0], cpu - self._older[1]
        return round(100.0 * dc / dw, 1) if dw > 0 else 0.0

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as fh:
                pages = int(fh.read().split()[1])
            return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
        except (OSError, ValueError, IndexError):
            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started, 1)
