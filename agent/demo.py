"""The newcomer's demo: the agent on its built-in defaults, and a subscriber that prints the
detection messages it receives. Uses a broker on localhost:1883, or starts a local one.

The demo's state (outbox, live settings, model store) lives in a folder of its own, a fresh
temporary one unless ``--state DIR`` names one: never the service's ``/var/lib/edge-agent`` (the
unit's StateDirectory, the default store when run as root), whatever config ``-c`` names."""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import ASSETS_DIR
from agent.default_model import describe_default
from agent.localbroker import LocalBroker, port_open


def _describe(topic: str, payload: bytes) -> str:
    try:
        body = json.loads(payload)
    except ValueError:
        return f"{topic} {payload[:200]!r}"
    if topic.endswith("/detections"):
        objects = (
            ", ".join(
                f"{o['label']} {o['score']:.2f} [{', '.join(f'{v:.2f}' for v in o['box'])}]"
                for o in body["objects"]
            )
            or "-"
        )
        return (
            f"{topic} seq={body['seq']} frame={body['frame']['id']} "
            f"{body['latency_ms']['inference']:.0f} ms  {objects}"
        )
    return f"{topic} {json.dumps(body)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=20, help="how long to watch (0: until Ctrl-C)"
    )
    parser.add_argument("--port", type=int, default=1883, help="local broker port")
    parser.add_argument("--json", action="store_true", help="print raw payloads")
    parser.add_argument(
        "-c", "--config", help="run the agent with this config instead of the defaults"
    )
    parser.add_argument(
        "--state",
        type=Path,
        help="keep the demo's state (outbox, settings) in this folder "
        "(default: a new temporary folder, removed at the end)",
    )
    args = parser.parse_args(argv)
    state = args.state or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    try:
        return _run(args, state)
    finally:
        if args.state is None:
            shutil.rmtree(state, ignore_errors=True)


def demo_environment(environ: dict[str, str], port: int, state: Path) -> dict[str, str]:
    """The agent's environment in the demo: the local broker, and a store of the demo's own
    (environment overrides beat the config file, so a service config cannot point it back)."""
    return dict(
        environ,
        EDGE_AGENT_MQTT__HOST="127.0.0.1",
        EDGE_AGENT_MQTT__PORT=str(port),
        EDGE_AGENT_STORE__PATH=str(state.resolve()),
        EDGE_AGENT_MQTT__OUTBOX__PATH=str(state.resolve() / "outbox.sqlite"),
    )


def _run(args: argparse.Namespace, state: Path) -> int:
    broker = None
    if port_open("127.0.0.1", args.port):
        print(f"demo: using the MQTT broker already on localhost:{args.port}", flush=True)
    else:
        broker = LocalBroker(args.port).start()
        print(f"demo: started a local {broker.kind} broker on localhost:{args.port}", flush=True)

    messages: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        messages.put((msg.topic, bytes(msg.payload)))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-agent-demo-{os.getpid()}")
    sub.on_message = on_message
    sub.connect("127.0.0.1", args.port)
    sub.subscribe([("edge-agent/+/detections", 0), ("edge-agent/+/status", 0)])
    sub.loop_start()

    env = demo_environment(dict(os.environ), args.port, state)
    cmd = [sys.executable, "-m", "agent", "run"] + (["-c", args.config] if args.config else [])
    print(f"demo: {' '.join(cmd[2:])}  (subscriber on edge-agent/+/detections)", flush=True)
    if not args.config:
        print(f"demo: model {describe_default(ASSETS_DIR)}", flush=True)
    kept = "kept" if args.state else "removed at the end; --state DIR keeps it"
    print(f"demo: state in {state} ({kept})", flush=True)
    agent = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else float("inf")
    received = 0
    try:
        while time.monotonic() < deadline and agent.poll() is None:
            try:
                topic, payload = messages.get(timeout=0.5)
            except queue.Empty:
                continue
            received += topic.endswith("/detections")
            print(payload.decode() if args.json else _describe(topic, payload), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        time.sleep(0.5)
        while not messages.empty():
            topic, payload = messages.get()
            if topic.endswith("/status"):
                print(_describe(topic, payload), flush=True)
        sub.disconnect()
        sub.loop_stop()
        if broker is not None:
            broker.stop()
    print(f"demo: {received} detection messages received; agent exit code {agent.returncode}")
    return 0 if received > 0 and agent.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
