"""What an HTTP library adds to a process's RSS, serving the agent's kind of load (a JSON body,
a 200 KB JPEG of noise, an MJPEG stream of it): the standard library's ThreadingHTTPServer
against aiohttp, each in a fresh interpreter with numpy and OpenCV already loaded, as in the agent.

    python scripts/web_library_rss.py stdlib|aiohttp     # prints one JSON line

aiohttp is no dependency of the agent: run the comparison in a throwaway venv
(``python -m venv /tmp/v && /tmp/v/bin/pip install aiohttp numpy opencv-python-headless``). The
client (urllib) runs in the same process for both, so both figures include it.

The figure chose the web page's server (README "Web page")."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request

import cv2
import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 1e6


JPEG = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (272, 640, 3), np.uint8))[
    1
].tobytes()
BODY = json.dumps({"cameras": {f"c{i}": {"fps": 5.0} for i in range(4)}}).encode()


def stdlib(port: int) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/stream":
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=f")
                self.end_headers()
                for _ in range(20):
                    self.wfile.write(b"--f\r\nContent-Type: image/jpeg\r\n\r\n" + JPEG + b"\r\n")
                return
            body = JPEG if self.path == "/jpg" else BODY
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def aiohttp_server(port: int) -> None:
    import asyncio

    from aiohttp import web

    async def status(request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    async def jpg(request: web.Request) -> web.Response:
        return web.Response(body=JPEG)

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "multipart/x-mixed-replace; boundary=f"}
        )
        await resp.prepare(request)
        for _ in range(20):
            await resp.write(b"--f\r\nContent-Type: image/jpeg\r\n\r\n" + JPEG + b"\r\n")
        return resp

    def run() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.add_routes([web.get("/", status), web.get("/jpg", jpg), web.get("/stream", stream)])
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()


def main() -> None:
    kind = sys.argv[1]
    before = rss_mb()
    port = 28971
    (stdlib if kind == "stdlib" else aiohttp_server)(port)
    time.sleep(0.5)
    for _ in range(50):
        for path in ("/", "/jpg", "/stream"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as resp:
                resp.read()
    after = rss_mb()
    print(json.dumps({"library": kind, "rss_before_mb": round(before, 1),
                      "rss_after_mb": round(after, 1), "added_mb": round(after - before, 1)}))


if __name__ == "__main__":
    main()
