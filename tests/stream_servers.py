"""Real camera-like servers on loopback for source tests: an MJPEG-over-HTTP camera served from
this process, a real RTSP server (GStreamer's gst-rtsp-server, run as its own process group), and
the sockets that make each network failure a camera shows: refused, silent, not answering.

    with MjpegServer(frames) as camera:       # http://127.0.0.1:PORT/video.mjpg
        camera.stop(); camera.start()          # an outage: the same port goes away and comes back
    with RtspServer() as camera:               # rtsp://127.0.0.1:PORT/cam (skips without GStreamer)
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
import numpy.typing as npt
import pytest

BOUNDARY = "frame"


def video_frames(path: Path, count: int = 20, width: int = 320) -> list[bytes]:
    """The first ``count`` frames of a video, scaled to ``width``, as JPEG bytes."""
    cap = cv2.VideoCapture(str(path))
    frames: list[bytes] = []
    try:
        while len(frames) < count:
            ok, image = cap.read()
            if not ok:
                break
            height = round(image.shape[0] * width / image.shape[1])
            small: npt.NDArray[np.uint8] = cv2.resize(image, (width, height))
            ok, jpeg = cv2.imencode(".jpg", small)
            assert ok
            frames.append(jpeg.tobytes())
    finally:
        cap.release()
    assert frames, f"no frame read from {path}"
    return frames


def free_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def do_GET(self) -> None:
        camera = self.server.camera
        if self.path == "/page":
            body = b"<html><body>a web page, not a video</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/private":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/video.mjpg":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        i = 0
        with contextlib.suppress(OSError):
            while not camera.stopping.is_set():
                jpeg = camera.frames[i % len(camera.frames)]
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                    + jpeg
                    + b"\r\n"
                )
                self.wfile.flush()
                i += 1
                camera.stopping.wait(1 / camera.fps)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    camera: MjpegServer


class MjpegServer:
    """An MJPEG camera on ``http://127.0.0.1:PORT/video.mjpg``; ``/page`` is HTML, ``/private``
    asks for a login (401), the rest is 404.

    ``stop()`` closes the listening socket and every open stream, as a camera that lost power;
    ``start()`` listens again on the same port.
    """

    def __init__(self, frames: Sequence[bytes], fps: float = 10.0, port: int = 0) -> None:
        self.frames = list(frames)
        self.fps = fps
        self.port = port
        self.stopping = threading.Event()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def start(self) -> None:
        self.stopping.clear()
        self._httpd = _HttpServer(("127.0.0.1", self.port), _Handler)
        self._httpd.camera = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="mjpeg-camera",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> MjpegServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SilentPort:
    """A loopback port that does not answer.

    ``accepting=True``: TCP connects succeed (the kernel completes them) and nothing is ever said,
    a hung camera firmware. ``accepting=False``: the accept queue is kept full, so new connection
    attempts are never answered at all, a camera that is powered off behind a switch.
    """

    def __init__(self, accepting: bool) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(0 if not accepting else 8)
        self.port = int(self._server.getsockname()[1])
        self._fill: list[socket.socket] = []
        if not accepting:
            # backlog 0 holds one connection; once it is taken, SYNs are dropped
            filler = socket.socket()
            filler.settimeout(2)
            filler.connect(("127.0.0.1", self.port))
            self._fill.append(filler)

    def close(self) -> None:
        for sock in self._fill:
            sock.close()
        self._server.close()

    def __enter__(self) -> SilentPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The RTSP server runs under the system Python, where Debian's python3-gi and
# gir1.2-gst-rtsp-server-1.0 live (the test venv has no GObject bindings).
_RTSP_SCRIPT = textwrap.dedent(
    """
    import sys, gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import Gst, GstRtspServer, GLib
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1])
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,"
        "framerate=25/1,format=I420 ! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    audio = GstRtspServer.RTSPMediaFactory()
    audio.set_launch(
        "( audiotestsrc is-live=true ! audioconvert ! audio/x-raw,channels=1,rate=8000"
        " ! rtpL16pay name=pay0 )"
    )
    server.get_mount_points().add_factory("/audio", audio)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()
    """
)

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_PACKAGES = "gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good python3-gi"


@functools.cache
def rtsp_server_missing() -> str | None:
    """Why the RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} is missing"
    check = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0');"
            "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
            "assert Gst.ElementFactory.find('jpegenc') and Gst.ElementFactory.find('rtpjpegpay')",
        ],
        capture_output=True,
        timeout=60,
    )
    if check.returncode != 0:
        return f"GStreamer's RTSP server is not installed (apt-get install {RTSP_PACKAGES})"
    return None


class RtspServer:
    """A real RTSP camera, ``rtsp://127.0.0.1:PORT/cam`` (MJPEG over RTP); ``/audio`` has only
    an audio track; other paths are 404.

    ``stop()`` kills its process group, ``start()`` runs it again on the same port.
    """

    def __init__(self, port: int = 0) -> None:
        reason = rtsp_server_missing()
        if reason is not None:
            pytest.skip(reason)
        self.port = port or free_port()
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", _RTSP_SCRIPT, str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._proc = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise AssertionError(f"the RTSP server did not start (said {line!r})")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"the RTSP server does not listen on {self.port}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
