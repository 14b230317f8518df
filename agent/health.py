"""Process health for the metrics topic: CPU share and resident memory from /proc, uptime."""

from __future__ import annotations

import os
import resource
import time


class ProcessUsage:
    """CPU percent since the previous call (of one core: 200 = two cores busy), RSS in MB."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._last_wall = self.started
        self._last_cpu = time.process_time()

    def cpu_percent(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        dw, dc = wall - self._last_wall, cpu - self._last_cpu
        self._last_wall, self._last_cpu = wall, cpu
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
