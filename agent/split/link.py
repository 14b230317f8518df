"""The link between head and tail: a token-bucket shaper that simulates a slower link on one
machine, and running estimates of the real link and the peer's speed from each exchange."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """Paces sends to ``rate_mbps``: ``consume(n)`` sleeps until ``n`` bytes may go out.

    The bucket holds at most ``burst_bytes`` of credit, so an idle link does not bank a large
    burst; a send bigger than the credit waits for the difference at the link's rate, as it
    would on a real link of that bandwidth.
    """

    def __init__(self, rate_mbps: float, burst_bytes: int = 16_384) -> None:
        if rate_mbps <= 0:
            raise ValueError("rate_mbps must be > 0")
        self.rate = rate_mbps * 1e6 / 8  # bytes per second
        self.burst = burst_bytes
        self._tokens = float(burst_bytes)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def delay_for(self, nbytes: int) -> float:
        """Seconds a send of ``nbytes`` must wait now; takes the bytes from the bucket."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            return max(0.0, -self._tokens / self.rate)

    def consume(self, nbytes: int) -> float:
        wait = self.delay_for(nbytes)
        if wait > 0:
            time.sleep(wait)
        return wait


class Ewma:
    """Exponentially weighted mean; ``None`` until the first sample."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.value: float | None = None
        self.samples = 0

    def add(self, sample: float) -> float:
        self.value = (
            sample if self.value is None else self.value + self.weight * (sample - self.value)
        )
        self.samples += 1
        return self.value


class LinkEstimate:
    """Bandwidth and peer speed measured from exchanges.

    Each remote frame gives: bytes sent, the round trip seen by the head, the tail's own compute
    time (it reports it) and the tail time this device would need for the same cut (from its
    profile). Transfer time = round trip - tail time; bandwidth = bytes / (transfer - base rtt);
    peer speedup = local tail estimate / reported tail time.
    """

    def __init__(self, rtt_ms: float) -> None:
        self.rtt_ms = rtt_ms
        self.bandwidth = Ewma()
        self.speedup = Ewma()

    def record(
        self, nbytes: int, round_trip_ms: float, tail_ms: float, local_tail_ms: float | None
    ) -> None:
        transfer_ms = max(round_trip_ms - tail_ms, 0.0)
        payload_ms = max(transfer_ms - self.rtt_ms, 0.05)
        self.bandwidth.add(nbytes * 8 / 1e3 / payload_ms)  # bits per ms / 1e3 = Mbit/s
        if local_tail_ms is not None and tail_ms > 0.05:
            self.speedup.add(local_tail_ms / tail_ms)
