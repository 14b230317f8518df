"""Split inference through the real transport: a tail agent and a head agent (two processes) on a
local mosquitto, the head's sends paced by its token bucket (`split.link_mbps`), at several cuts and
links; the head's per-frame inference time (head + coding + link + tail + reply) against the
planner's prediction for the same link with the peer as fast as the head (one machine).

    .venv/bin/python scripts/bench_split_mqtt.py [--cuts input,c24,c46,output] [--links 5,20,100]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "person-yolov8s.onnx"


def start(config: dict[str, Any], folder: Path, name: str) -> subprocess.Popen[bytes]:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(folder / f"{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--cuts", default="input,c24,c46,output", help="cut ids, comma-separated")
    parser.add_argument("--links", default="5,20,100", help="simulated links in Mbit/s")
    parser.add_argument("--frames", type=int, default=6, help="frames per cut and link")
    parser.add_argument("--codec", default="int8", help="coding of the cut tensors")
    args = parser.parse_args()

    import cv2

    from agent.detection import Detector
    from agent.localbroker import LocalBroker
    from agent.split.plan import predict
    from agent.split.profile import profile_model

    # Coded sizes depend on the picture: profile on the very frame the head will send.
    detector = Detector.load(MODEL, threads=2, warmup=False)
    sample, _ = detector.preprocess(cv2.imread(str(ROOT / "models/media/astronaut.png")))
    detector.close()
    profile = profile_model(MODEL, runs=3, threads=2, methods=(args.codec,), sample=sample)
    work = Path(tempfile.mkdtemp(prefix="bench-split-mqtt-"))
    photos = work / "photos"
    photos.mkdir()
    (photos / "astronaut.png").write_bytes((ROOT / "models/media/astronaut.png").read_bytes())
    rows = []
    with LocalBroker() as broker:
        mqtt_cfg = {"host": "127.0.0.1", "port": broker.port}
        model = {"path": str(MODEL), "threads": 2}
        got: list[dict[str, Any]] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.on_message = lambda c, u, m: got.append({"topic": m.topic, **json.loads(m.payload)})
        client.connect("127.0.0.1", broker.port)
        client.subscribe(
            [("edge-agent/cam-bench/detections", 0), ("edge-agent/cam-bench/metrics", 0)]
        )
        client.loop_start()
        tail = start(
            {
                "device_id": "gw-bench",
                "model": model,
                "mqtt": mqtt_cfg,
                "split": {"role": "tail"},
                "store": {"path": str(work / "tail")},
            },
            work,
            "tail",
        )
        try:
            for cut in args.cuts.split(","):
                for link in [float(x) for x in args.links.split(",")]:
                    if cut == "output" and rows and rows[-1]["cut"] == "output":
                        break  # all local does not depend on the link
                    got.clear()
                    head = start(
                        {
                            "device_id": "cam-bench",
                            "source": {"uri": str(photos), "fps": 0, "loop": True},
                            "model": model,
                            "mqtt": mqtt_cfg,
                            "publish": {"metrics_interval_s": 1},
                            "store": {"path": str(work / "head")},
                            "split": {
                                "role": "head",
                                "peer": "gw-bench",
                                "at": cut,
                                "codec": args.codec,
                                "link_mbps": link,
                                "deadline_ms": 20000,
                            },
                        },
                        work,
                        "head",
                    )
                    latencies: list[float] = []
                    deadline = time.monotonic() + 240
                    while len(latencies) < args.frames + 2 and time.monotonic() < deadline:
                        time.sleep(0.2)
                        latencies = [
                            m["latency_ms"]["inference"]
                            for m in got
                            if m["topic"].endswith("/detections")
                        ]
                    metrics = [m for m in got if m["topic"].endswith("/metrics")]
                    stop(head)
                    split = metrics[-1]["split"] if metrics else {}
                    plan = {r.cut: r for r in predict(profile, link, 0.5, 1.0, args.codec)}
                    rows.append(
                        {
                            "cut": cut,
                            "link_mbps": link,
                            "predicted_ms": round(plan[cut].total_ms, 1),
                            "coded_kb": round(plan[cut].coded_bytes / 1e3, 1),
                            "measured_ms": round(statistics.median(latencies[2:]), 1),
                            "frames": len(latencies) - 2,
                            "local_frames": split.get("local_frames"),
                            "remote_frames": split.get("remote_frames"),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            stop(tail)
            client.loop_stop()
            client.disconnect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
