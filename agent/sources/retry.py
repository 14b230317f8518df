"""How a source retries: the capped backoff schedule, and a retry log that does not repeat itself.

A camera that is away for hours is retried every ``max_s`` seconds at most, so it is back within
that long of coming back; the log says the first failure, each new reason, and a summary now and
then, not one line per try.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

__all__ = ["Backoff", "RetryLog"]

log = logging.getLogger("agent.sources")


@dataclass(frozen=True)
class Backoff:
    """``initial_s``, doubled each failure up to ``max_s``, with ``jitter`` (a fraction) and never
    more than ``max_s``: many devices that lost the same server do not retry in lockstep."""

    initial_s: float
    max_s: float
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("backoff needs 0 < backoff_initial_s <= backoff_max_s")

    def base(self, failure: int) -> float:
        """The wait after failure number ``failure`` (1 = the first), before jitter."""
        return min(self.max_s, self.initial_s * 2.0 ** min(max(failure, 1) - 1, 62))

    def delay(self, failure: int) -> float:
        """The wait after failure ``failure``, jittered, at most ``max_s``."""
        return min(
            self.max_s, self.base(failure) * random.uniform(1 - self.jitter, 1 + self.jitter)
        )


class RetryLog:
    """The log lines of one source's failures: the first of an outage, each kind of failure not
    seen yet in it (``refused``, ``not_found``, ...; for ``other`` each new text), then one summary
    every ``summary_s``; every try is still logged at DEBUG."""

    def __init__(self, name: str, summary_s: float = 60.0) -> None:
        self.name = name
        self.summary_s = summary_s
        self._since: float | None = None
        self._last_line = 0.0
        self._reasons: set[str] = set()

    def failed(
        self, reason: str, kind: str, failures: int, delay_s: float, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        key = reason if kind == "other" else kind
        if self._since is None:
            self._since = now
            self._last_line = now
            self._reasons = {key}
            log.warning(
                "source %s: %s; retrying in %.1f s", self.name, reason, delay_s, exc_info=exc_info
            )
            return
        if key not in self._reasons:
            self._reasons.add(key)
            self._last_line = now
            log.warning(
                "source %s: now %s (failure %d); retrying in %.1f s",
                self.name,
                reason,
                failures,
                delay_s,
                exc_info=exc_info,
            )
            return
        if now - self._last_line >= self.summary_s:
            self._last_line = now
            log.warning(
                "source %s: still failing after %d attempts in %.0f s: %s; retrying every %.1f s",
                self.name,
                failures,
                now - self._since,
                reason,
                delay_s,
            )
            return
        log.debug(
            "source %s: %s; retrying in %.1f s (failure %d)", self.name, reason, delay_s, failures
        )

    def recovered(self, failures: int) -> None:
        """The source delivers again (or for the first time, with ``failures`` 0)."""
        if failures and self._since is not None:
            log.info(
                "source %s: recovered after %d failed attempts in %.1f s",
                self.name,
                failures,
                time.monotonic() - self._since,
            )
        else:
            log.info("source %s: connected", self.name)
        self._since = None
        self._reasons = set()
