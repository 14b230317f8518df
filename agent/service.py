"""systemd integration without a dependency: the sd_notify datagram protocol (READY, STATUS,
WATCHDOG, STOPPING, RELOADING), and the one service loop that pings the watchdog only while every
heartbeat is well. Outside systemd ($NOTIFY_SOCKET unset) every notify call is silent."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from agent.health import Heartbeats

log = logging.getLogger("agent.service")


class Notifier:
    """Sends state lines to the service manager over ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        pid = env.get("WATCHDOG_PID")
        # The watchdog is meant for us only when no other process was named.
        self.watchdog_usec = usec if not pid or int(pid) == os.getpid() else 0
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec and self.enabled else None

    def send(self, *lines: str) -> bool:
        if not self._address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self._address)
            return True
        except OSError as exc:
            if not self._warned:  # once: a missing socket must not flood the log
                log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"), exc)
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping: delivering queued messages")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class ServiceLoop:
    """READY once ``is_ready()`` holds, then every half watchdog period ``WATCHDOG=1`` and
    ``STATUS=`` while no heartbeat is stuck or dead. A change in what is stuck is logged (ERROR
    when something is) and passed to ``on_change`` (the retained status says which).

    Called from the process's control loop (the camera agent and the split tail share it)."""

    def __init__(
        self,
        notifier: Notifier,
        health: Heartbeats,
        status_line: Callable[[], str],
        is_ready: Callable[[], bool] = lambda: True,
        on_change: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.notifier = notifier
        self.health = health
        self.status_line = status_line
        self.is_ready = is_ready
        self.on_change = on_change
        self.ready = False
        self.stuck: list[str] = []
        self._next_ping = 0.0
        self._next_check = 0.0

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self.ready and self.is_ready():
            self.ready = True
            line = self.status_line()
            self.notifier.ready(line)
            log.info("ready: %s", line)
        if now >= self._next_check:
            self._next_check = now + 0.5
            self._check()
        interval = self.notifier.watchdog_interval
        if interval is None or now < self._next_ping:
            return
        self._next_ping = now + interval
        self._check()  # fresh: a ping must never vouch for a part that just got stuck
        if not self.stuck:
            self.notifier.watchdog()
            self.notifier.status(self.status_line())
        else:  # no ping: the service manager restarts the agent after WatchdogSec
            self.notifier.status("unhealthy: " + ", ".join(self.stuck))

    def healthy(self) -> bool:
        return not self.health.stuck()

    def _check(self) -> None:
        problems = self.health.problems()
        stuck = sorted(problems)
        if stuck == self.stuck:
            return
        self.stuck = stuck
        if stuck:
            log.error(
                "unhealthy, no watchdog ping: %s",
                "; ".join(f"{name} {why}" for name, why in sorted(problems.items())),
            )
        else:
            log.info("healthy again: watchdog pings resume")
        if self.on_change is not None:
            self.on_change(stuck)
