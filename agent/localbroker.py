"""A throwaway local MQTT broker for the demo and the tests: mosquitto when installed, else the
pure-Python amqtt broker (MQTT 3.1.1)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_AMQTT_RUNNER = """
import asyncio, sys
from amqtt.broker import Broker

async def main(port):
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True},
        "topic-check": {"enabled": False},
    }
    broker = Broker(config)
    await broker.start()
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(candidate).is_file():
            return candidate
    return None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """Starts a broker on 127.0.0.1:``port``; ``stop`` ends it. ``restart`` keeps the port."""

    def __init__(
        self,
        port: int | None = None,
        prefer: str = "mosquitto",
        *,
        persistence: bool = False,
        listener_config: str = "allow_anonymous true\n",
    ) -> None:
        """``persistence``: keep sessions and queued messages across ``restart`` (mosquitto).
        ``listener_config``: mosquitto lines for the listener (auth, TLS files...)."""
        self.port = port or free_port()
        self.prefer = prefer
        self.persistence = persistence
        self.listener_config = listener_config
        self.process: subprocess.Popen[bytes] | None = None
        self.kind = ""
        self._dir = tempfile.TemporaryDirectory(prefix="edge-agent-broker-")
        # Started as root, mosquitto drops to its own user: let it write its persistence file.
        Path(self._dir.name).chmod(0o777)

    def start(self, timeout: float = 10.0) -> LocalBroker:
        binary = mosquitto_binary() if self.prefer == "mosquitto" else None
        if binary:
            conf = Path(self._dir.name) / "mosquitto.conf"
            persist = (
                f"persistence true\npersistence_location {self._dir.name}/\nautosave_interval 1\n"
                if self.persistence
                else "persistence false\n"
            )
            conf.write_text(
                f"per_listener_settings true\nlistener {self.port} 127.0.0.1\n"
                f"{self.listener_config}"
                f"{persist}log_dest stderr\nlog_type error\nlog_type warning\n"
            )
            cmd = [binary, "-c", str(conf)]
            self.kind = "mosquitto"
        else:
            cmd = [sys.executable, "-c", _AMQTT_RUNNER, str(self.port)]
            self.kind = "amqtt"
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise RuntimeError(f"{self.kind} exited at start: {err.strip()}")
            if port_open("127.0.0.1", self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()
