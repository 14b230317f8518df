"""The web API's bearer token (RFC 6750): in the ``Authorization: Bearer`` header, or for what a
browser loads by URL (``<img>``: the live view, snapshots) the ``access_token`` query parameter.
Compared in constant time; wrong tokens are logged, at most once a minute with a count."""

from __future__ import annotations

import hmac
import logging
import threading
import time

log = logging.getLogger("agent.web")


class BearerAuth:
    """Who may read the API: anyone when no token is set (loopback only, see
    ``agent.preflight.web_problems``), else whoever presents the token."""

    def __init__(self, token: str | None, log_every_s: float = 60.0) -> None:
        self._token = token.encode() if token is not None else None
        self._log_every_s = log_every_s
        self._lock = threading.Lock()
        self._next_log = 0.0
        self._unlogged = 0
        #: requests refused for a wrong token, all told
        self.wrong = 0

    @property
    def required(self) -> bool:
        return self._token is not None

    def allows(self, header: str | None, query_token: str | None, peer: str) -> bool:
        """The request may go on. A wrong token (not a missing one: a browser's first try) is
        logged with the peer's address, rate-limited."""
        if self._token is None:
            return True
        given = _bearer(header) if header else query_token
        if given is None:
            return False
        if hmac.compare_digest(given.encode(), self._token):
            return True
        self._wrong(peer)
        return False

    def _wrong(self, peer: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.wrong += 1
            if now < self._next_log:
                self._unlogged += 1
                return
            self._next_log = now + self._log_every_s
            unlogged, self._unlogged = self._unlogged, 0
        more = f" ({unlogged} more since the last report)" if unlogged else ""
        log.warning("web: a request from %s had a wrong token%s", peer, more)


def _bearer(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
