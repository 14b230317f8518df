"""A real HTTP server for registry tests: serves a folder on a free loopback port, with
``Range: bytes=N-`` support and knobs that inject the faults a device meets on a real network.

    with RegistryServer(folder) as server:
        server.truncate_after = 50_000      # cut the next response longer than that
        RegistryClient(server.url).download(...)
        server.requests                     # [(path, range header or None), ...]
"""

from __future__ import annotations

import contextlib
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RegistryServer:
    """Serves ``root`` over HTTP on 127.0.0.1 until closed; the knobs may change at any time.

    truncate_after  close the connection after this many body bytes of the next response that is
                    longer, then reset itself to None (one cut, like a dropped link)
    ignore_range    answer every request with 200 and the whole file
    extra_bytes     serve every file with this many zero bytes appended (announced in the headers)
    omit_length     send no Content-Length: the body ends when the connection closes
    chunked         send the body with Transfer-Encoding: chunked (HTTP/1.1), 64 KiB a chunk
    delay_s         wait this long before answering (for timeouts)
    redirects       request path -> URL to answer with a 302 instead of the file
    fail            request path -> HTTP statuses to answer its next requests with, one each
                    (e.g. {"/face/2.0.0/face.tflite": [503]})
    requests        (path, Range header or None) of every request, in order
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.truncate_after: int | None = None
        self.ignore_range = False
        self.extra_bytes = 0
        self.omit_length = False
        self.chunked = False
        self.delay_s = 0.0
        self.redirects: dict[str, str] = {}
        self.fail: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.registry = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="registry-server",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in delay_s
        self._httpd.shutdown()
        self._httpd.server_close()  # joins the handler threads
        self._thread.join(5)

    def __enter__(self) -> RegistryServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _take_cut(self, body_len: int) -> int | None:
        """The byte count to cut this response at, consuming the one-shot knob."""
        with self._lock:
            cut = self.truncate_after
            if cut is None or body_len <= cut:
                return None
            self.truncate_after = None
            return cut


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() waits for them and no thread outlives a test.
    daemon_threads = False
    registry: RegistryServer

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (timeout test, cut download) is expected here, not a failure.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that connects and says nothing cannot hold server_close() forever

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        reg = self.server.registry
        range_header = self.headers.get("Range")
        reg.requests.append((self.path, range_header))
        if reg.delay_s and reg._stopping.wait(reg.delay_s):
            return
        with reg._lock:
            statuses = reg.fail.get(self.path)
            status_now = statuses.pop(0) if statuses else None
        if status_now is not None:
            self.send_error(status_now)
            return
        location = reg.redirects.get(self.path)
        if location is not None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self._resolve(reg.root)
        if path is None:
            self.send_error(404)
            return
        data = path.read_bytes() + b"\0" * reg.extra_bytes
        total = len(data)
        start = 0
        status = 200
        m = _RANGE.fullmatch(range_header.strip()) if range_header else None
        if m is not None and not reg.ignore_range:
            start = int(m.group(1))
            end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
            if start >= total or end < start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = data[start : end + 1]
            status = 206
        if reg.chunked:
            self.protocol_version = "HTTP/1.1"  # chunked framing needs it
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{total}")
        if reg.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
        elif not reg.omit_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.close_connection = True
        cut = reg._take_cut(len(data))
        body = data if cut is None else data[:cut]
        if reg.chunked:
            step = 64 * 1024
            frames = [b"%x\r\n%s\r\n" % (len(c), c) for c in _split(data, step)]
            framed = b"".join(frames) + b"0\r\n\r\n"
            # Cut at the same body byte, counted in the framed stream.
            body = framed if cut is None else framed[: _framed_offset(data, step, cut)]
        with contextlib.suppress(OSError):  # the client went away
            self.wfile.write(body)

    def _resolve(self, root: Path) -> Path | None:
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path


def _split(data: bytes, step: int) -> list[bytes]:
    return [data[i : i + step] for i in range(0, len(data), step)]


def _framed_offset(data: bytes, step: int, body_bytes: int) -> int:
    """Where body byte ``body_bytes`` falls in the chunked framing of ``data``."""
    offset = 0
    for chunk in _split(data, step):
        head = len(b"%x\r\n" % len(chunk))
        if body_bytes <= len(chunk):
            return offset + head + body_bytes
        offset += head + len(chunk) + 2
        body_bytes -= len(chunk)
    return offset
