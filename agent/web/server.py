"""The local page's HTTP server: the standard library's ``ThreadingHTTPServer`` (a thread per
connection, bounded; README "Web page" has the memory measured against aiohttp), GET and HEAD
only, small requests only, no CORS, the bearer token checked before any data is read, and MJPEG
streams that send each new frame and give up on a client that stops reading."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.config import WebConfig
from agent.errors import ConfigError
from agent.health import Heartbeat, supervised
from agent.web.auth import BearerAuth
from agent.web.routes import Reply, Routes, Stream, WebSources, error

log = logging.getLogger("agent.web")

#: connections served at once; more are answered 503 and closed
MAX_CONNECTIONS = 32
#: MJPEG streams at once (each holds a thread and encodes while its client reads)
MAX_STREAMS = 8
#: longest request target accepted (414 beyond)
MAX_TARGET = 2048
#: seconds a client may take to send its request, or to take the next part of a stream
CLIENT_TIMEOUT_S = 10.0
#: kernel send buffer of a stream: what a viewer that stops reading can hold up (Linux doubles it)
STREAM_SNDBUF = 128 * 1024
BOUNDARY = "edge-agent-frame"
_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    # the live view's URL may carry access_token: never in a Referer
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' blob:; frame-ancestors 'none'"),
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stalled stream never holds up the agent's stop

    def __init__(self, address: tuple[str, int], web: WebServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.web = web
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                                b"Content-Length: 0\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr: a client that went away is not news,
        # anything else is a bug to log
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("web: the connection of %s broke", client_address[0], exc_info=True)
        else:
            log.exception("web: a request from %s failed", client_address[0])

    def service_actions(self) -> None:
        # serve_forever calls this at every poll: the server's pulse for the watchdog
        if self.web.heartbeat is not None:
            self.web.heartbeat.beat()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    # --- methods ---

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _refuse_method(self) -> None:
        self._send(error(405, f"{self.command} is not accepted; only GET and HEAD"),
                   extra=(("Allow", "GET, HEAD"),))

    def do_POST(self) -> None:
        self._refuse_method()

    def do_PUT(self) -> None:
        self._refuse_method()

    def do_DELETE(self) -> None:
        self._refuse_method()

    def do_PATCH(self) -> None:
        self._refuse_method()

    def do_OPTIONS(self) -> None:  # no CORS preflight answered either
        self._refuse_method()

    # --- the request ---

    def _serve(self, body: bool) -> None:
        web = self.server.web
        if len(self.path) > MAX_TARGET:
            self._send(error(414, f"the request target is longer than {MAX_TARGET} characters"))
            return
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0") != "0":
            self._send(error(413, "requests with a body are not accepted"))
            return
        url = urlsplit(self.path)
        try:
            query = parse_qs(url.query, max_num_fields=16)
        except ValueError:
            self._send(error(400, "more than 16 query parameters"))
            return
        if not web.routes.is_public(url.path) and not web.auth.allows(
            self.headers.get("Authorization"),
            query.get("access_token", [None])[-1],
            self.client_address[0],
        ):
            self._send(
                error(401, "a bearer token is needed (Authorization: Bearer TOKEN)"),
                extra=(("WWW-Authenticate", 'Bearer realm="edge-agent"'),),
            )
            return
        try:
            answer = web.routes.answer(url.path, query)
        except Exception:  # a bug in one route: this request fails, the server goes on
            log.exception("web: %s %s failed", self.command, url.path)
            answer = error(500, "internal error (the agent's log has the details)")
        if isinstance(answer, Stream):
            self._stream(answer.camera, body)
        else:
            self._send(answer, body=body)

    def _send(
        self, reply: Reply, body: bool = True, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in (*_HEADERS, *extra):
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(reply.body)

    def _stream(self, camera: str, body: bool) -> None:
        web = self.server.web
        if not web.open_stream():
            self._send(error(503, f"already {MAX_STREAMS} streams open; try again later"))
            return
        try:
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            for name, value in _HEADERS:
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self._frames(camera)
        finally:
            web.close_stream()

    def _frames(self, camera: str) -> None:
        web = self.server.web
        frames = web.sources.frames
        seq = 0
        try:
            while not web.stopping.is_set():
                if frames.wait_newer(camera, seq, timeout=1.0) <= seq:
                    continue
                encoded = frames.jpeg(camera)  # encoded here, only because this client watches
                if encoded is None:
                    continue
                seq = encoded.seq
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(encoded.jpeg)}\r\n\r\n".encode()
                    + encoded.jpeg
                    + b"\r\n"
                )
        except (ConnectionError, TimeoutError) as exc:
            # the viewer left, or stopped reading for CLIENT_TIMEOUT_S: its thread ends
            log.debug("web: stream of %s to %s ended: %r", camera, self.client_address[0], exc)
        except Exception:  # a bug: this stream ends, the server and the camera go on
            log.exception("web: the stream of %s failed", camera)

    def version_string(self) -> str:
        return "edge-agent"  # not the Python version: nothing for a scanner to match

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web: %s %s", self.client_address[0], format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path without its query: an access_token must not reach the log.
        log.debug("web: %s %s %s %s", self.client_address[0], self.command,
                  urlsplit(self.path).path, code)


class WebServer:
    """The page's server: bound when made (a port in use stops the start: exit 78), serving
    from ``start`` on a supervised thread whose heartbeat the watchdog reads."""

    def __init__(self, config: WebConfig, sources: WebSources, token: str | None) -> None:
        self.config = config
        self.sources = sources
        self.routes = Routes(sources)
        self.auth = BearerAuth(token)
        self.heartbeat: Heartbeat | None = None
        self.stopping = threading.Event()
        self._streams = 0
        self._lock = threading.Lock()
        sources.streams = lambda: self._streams
        try:
            self._server = _Server(config.address, self)
        except OSError as exc:
            raise ConfigError(
                f"web.listen {config.listen}: cannot listen: {exc.strerror or exc}"
            ) from exc
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def open_stream(self) -> bool:
        with self._lock:
            if self._streams >= MAX_STREAMS:
                return False
            self._streams += 1
            return True

    def close_stream(self) -> None:
        with self._lock:
            self._streams -= 1

    def start(self, heartbeat: Heartbeat | None = None) -> None:
        self.heartbeat = heartbeat
        self._thread = supervised("web", lambda: self._server.serve_forever(0.5), heartbeat)
        self._thread.start()
        host, _ = self.config.address
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "web page on http://%s:%d/%s", shown, self.port,
            " (bearer token required for the API)" if self.auth.required else "",
        )

    def stop(self) -> None:
        self.stopping.set()
        self.sources.frames.wake()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
