"""What the web page adds to the running agent's RSS: the same agent (default person model on
bikes.mp4 at 5 fps, events on) without ``web:``, with it but nobody looking, and with the page
open (one MJPEG viewer reading, status and events polled every 2 s as the page does).

    python scripts/web_agent_rss.py [--seconds 40]      # prints one JSON line

Needs mosquitto (or amqtt) for the agent's broker; README "Web page" quotes the figures."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import DEFAULT_MODEL  # noqa: E402
from agent.localbroker import LocalBroker, free_port  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def watch(port: int, stop: threading.Event) -> None:
    """One browser: the MJPEG stream read as it comes, the API polled every 2 s."""

    def stream() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /api/cameras/main/stream.mjpeg HTTP/1.1\r\nHost: x\r\n\r\n")
            while not stop.is_set() and sock.recv(65536):
                pass

    threading.Thread(target=stream, daemon=True).start()
    while not stop.is_set():
        for path in ("/api/status", "/api/events?limit=20"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as resp:
                resp.read()
        stop.wait(2.0)


def run(folder: Path, broker: int, web: bool, look: bool, seconds: float) -> float:
    port = free_port()
    config = {
        "device_id": "rss",
        "source": {"uri": str(ROOT / "models" / "media" / "bikes.mp4"), "fps": 5, "loop": True},
        "model": {"path": str(DEFAULT_MODEL), "threads": 2},
        "mqtt": {"host": "127.0.0.1", "port": broker},
        "store": {"path": str(folder / f"state-{web}-{look}")},
        **({"web": {"listen": f"127.0.0.1:{port}"}} if web else {}),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    stop = threading.Event()
    try:
        time.sleep(8)  # model loaded, first frames
        if look:
            threading.Thread(target=watch, args=(port, stop), daemon=True).start()
        samples = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1)
            samples.append(rss_mb(proc.pid))
        return max(samples[len(samples) // 2 :])  # the settled half's peak
    finally:
        stop.set()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        folder = Path(tmp)
        off = run(folder, broker.port, web=False, look=False, seconds=args.seconds)
        idle = run(folder, broker.port, web=True, look=False, seconds=args.seconds)
        watched = run(folder, broker.port, web=True, look=True, seconds=args.seconds)
    print(json.dumps({
        "model": DEFAULT_MODEL.name,
        "rss_mb_without_web": round(off, 1),
        "rss_mb_web_idle": round(idle, 1),
        "rss_mb_web_watched": round(watched, 1),
        "added_mb_idle": round(idle - off, 1),
        "added_mb_watched": round(watched - off, 1),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }))


if __name__ == "__main__":
    main()
