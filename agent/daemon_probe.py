"""The daemon measured from outside, as a device runs it: a real ``edge-agent run`` process on a
real local broker, its memory, threads and open files read from ``/proc``, and the delay from
each frame's capture (the payload's ``ts``) to the broker handing the message to a subscriber
(same clock: one machine). ``bench`` gives one JSON line, ``soak`` a table over time.

    python -m agent.daemon_probe bench [--seconds 60] [--fps 0] [--json]
    python -m agent.daemon_probe soak --minutes 30 [--interval 10] [--csv FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import DEFAULT_MODEL, DEFAULT_VIDEO
from agent.localbroker import LocalBroker

DEVICE_ID = "probe"


@dataclass(frozen=True)
class ProcSample:
    """One reading of a process: seconds since the run started, resident and peak resident
    memory (``VmRSS``, ``VmHWM``) in MB, threads, open file descriptors."""

    elapsed_s: float
    rss_mb: float
    peak_rss_mb: float
    threads: int
    open_files: int
    messages: int = 0


def read_proc(pid: int, elapsed_s: float = 0.0, messages: int = 0) -> ProcSample:
    """``/proc/PID/status`` and ``/proc/PID/fd`` of a live process (OSError once it is gone)."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            fields[key] = value.strip()

    def mb(key: str) -> float:
        return round(int(fields[key].split()[0]) / 1024, 1)  # the kernel says kB

    return ProcSample(
        round(elapsed_s, 1),
        mb("VmRSS"),
        mb("VmHWM"),
        int(fields["Threads"]),
        sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()),
        messages,
    )


@dataclass
class Arrival:
    """A detections message as the subscriber got it: arrival wall time and its payload."""

    at: float
    body: dict[str, Any]

    @property
    def capture_to_broker_ms(self) -> float:
        return (self.at - float(self.body["ts"])) * 1e3


@dataclass
class Arrivals:
    """An MQTT subscriber on one topic that stamps each message when it arrives."""

    port: int
    topic: str
    got: list[Arrival] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{os.getpid()}")
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", self.port)
        self._client.subscribe(self.topic, qos=1)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.time()  # first: the stamp is the broker's hand-over, not our parsing
        with contextlib.suppress(ValueError):
            arrival = Arrival(at, json.loads(msg.payload))
            with self._lock:
                self.got.append(arrival)

    def count(self) -> int:
        with self._lock:
            return len(self.got)

    def since(self, index: int) -> list[Arrival]:
        with self._lock:
            return self.got[index:]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        for name in ("_sockpairR", "_sockpairW"):  # paho leaves loop_start's socket pair open
            sock = getattr(self._client, name, None)
            if sock is not None:
                sock.close()


def daemon_config(
    port: int, store: Path, *, model: Path, source: str, fps: float, threads: int
) -> dict[str, Any]:
    """A device's config: a looping camera-like source (read at its own frame rate), every
    frame published at QoS 1 through the outbox."""
    return {
        "device_id": DEVICE_ID,
        "source": {"uri": source, "fps": fps, "loop": True, "realtime": True},
        "model": {"path": str(model), "threads": threads},
        "mqtt": {"host": "127.0.0.1", "port": port, "qos": 1},
        "publish": {"mode": "every_frame", "metrics_interval_s": 30},
        "store": {"path": str(store)},
    }


@contextlib.contextmanager
def running_daemon(
    config: dict[str, Any], folder: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``edge-agent run`` in a process group of its own, stopped (the whole group) on exit."""
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with open(folder / "agent.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class DaemonRun:
    """A running daemon with its broker, state folder and detections subscriber."""

    proc: subprocess.Popen[bytes]
    folder: Path
    arrivals: Arrivals
    broker_kind: str


@contextlib.contextmanager
def daemon_run(
    prefix: str, *, model: Path, source: str, fps: float, threads: int
) -> Iterator[DaemonRun]:
    """A fresh broker, a temporary state folder and ``edge-agent run`` on them, with a
    subscriber on its detections; all stopped and removed on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, LocalBroker() as broker:
        folder = Path(tmp)
        config = daemon_config(
            broker.port, folder / "state", model=model, source=source, fps=fps, threads=threads
        )
        arrivals = Arrivals(broker.port, f"edge-agent/{DEVICE_ID}/detections")
        try:
            with running_daemon(config, folder) as proc:
                yield DaemonRun(proc, folder, arrivals, broker.kind)
        finally:
            arrivals.close()


def _check_alive(proc: subprocess.Popen[bytes], folder: Path) -> None:
    if proc.poll() is not None:
        tail = (folder / "agent.log").read_text(errors="replace").splitlines()[-5:]
        raise SystemExit(f"the agent exited with {proc.returncode}:\n" + "\n".join(tail))


def _wait_messages(
    proc: subprocess.Popen[bytes], folder: Path, arrivals: Arrivals, count: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while arrivals.count() < count:
        _check_alive(proc, folder)
        if time.monotonic() > deadline:
            raise SystemExit(f"fewer than {count} detections messages within {timeout:.0f} s")
        time.sleep(0.1)


def _p(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def bench_daemon(
    *,
    model: Path = DEFAULT_MODEL,
    source: str = str(DEFAULT_VIDEO),
    fps: float = 0.0,
    threads: int = 2,
    seconds: float = 60.0,
    warmup_messages: int = 3,
) -> dict[str, object]:
    """Run the daemon for ``seconds`` after its first ``warmup_messages`` detections; its peak
    RSS and each message's capture-to-broker delay against the payload's own figures."""
    with daemon_run(
        "edge-agent-probe-", model=model, source=source, fps=fps, threads=threads
    ) as run:
        _wait_messages(run.proc, run.folder, run.arrivals, warmup_messages, timeout=120)
        start = run.arrivals.count()
        time.sleep(seconds)
        _check_alive(run.proc, run.folder)
        end = read_proc(run.proc.pid)
    measured = run.arrivals.since(start)
    delay = [a.capture_to_broker_ms for a in measured]
    latency = [a.body.get("latency_ms", {}) for a in measured]
    inference = [float(x["inference"]) for x in latency if "inference" in x]
    total = [float(x["total"]) for x in latency if "total" in x]
    queued = [float(x["queued"]) for x in latency if "queued" in x]
    inference_p50 = _p(inference, 0.5)
    return {
        "model": str(model),
        "source": source,
        "fps_cap": fps,
        "threads": threads,
        "seconds": seconds,
        "messages": len(measured),
        "peak_rss_mb": end.peak_rss_mb,
        "rss_mb": end.rss_mb,
        "threads_os": end.threads,
        "open_files": end.open_files,
        "capture_to_broker_ms_p50": _p(delay, 0.5),
        "capture_to_broker_ms_p95": _p(delay, 0.95),
        "payload_total_ms_p50": _p(total, 0.5),
        "payload_queued_ms_p50": _p(queued, 0.5) if queued else None,
        "inference_ms_p50": inference_p50,
        "capture_to_broker_vs_inference": (
            round(_p(delay, 0.5) / inference_p50, 2) if inference_p50 else None
        ),
        "broker": run.broker_kind,
    }


def soak(
    *,
    minutes: float,
    interval_s: float = 10.0,
    warmup_s: float | None = None,
    model: Path = DEFAULT_MODEL,
    source: str = str(DEFAULT_VIDEO),
    fps: float = 5.0,
    threads: int = 2,
    csv_path: Path | None = None,
    out: TextIO | None = sys.stdout,
) -> dict[str, object]:
    """Run the daemon for ``minutes``, one row of RSS, threads and open files every
    ``interval_s``; returns the growth after the warm-up (default: a tenth of the run, at least
    one interval, at most 5 minutes) and the peak. The table goes to ``out`` as it is measured."""
    duration = minutes * 60
    warmup = warmup_s if warmup_s is not None else min(300.0, max(interval_s, duration / 10))
    rows: list[ProcSample] = []
    names = list(ProcSample.__dataclass_fields__)
    writer = None
    csv_fh = open(csv_path, "w", newline="") if csv_path is not None else None
    try:
        if csv_fh is not None:
            writer = csv.writer(csv_fh)
            writer.writerow(names)
        if out is not None:
            print(" ".join(f"{n:>12}" for n in names), file=out, flush=True)
        with daemon_run(
            "edge-agent-soak-", model=model, source=source, fps=fps, threads=threads
        ) as run:
            t0 = time.monotonic()
            while True:
                _check_alive(run.proc, run.folder)
                elapsed = time.monotonic() - t0
                row = read_proc(run.proc.pid, elapsed, run.arrivals.count())
                rows.append(row)
                if out is not None:
                    print(" ".join(f"{v:>12}" for v in asdict(row).values()), file=out)
                    out.flush()
                if writer is not None and csv_fh is not None:
                    writer.writerow(asdict(row).values())
                    csv_fh.flush()
                if elapsed >= duration:
                    break
                time.sleep(min(interval_s, max(0.0, duration - elapsed)))
    finally:
        if csv_fh is not None:
            csv_fh.close()
    after = [r for r in rows if r.elapsed_s >= warmup] or rows[-1:]
    first, last = after[0], rows[-1]
    # RSS swings by a few MB as frames and tensors come and go: growth is the median of the last
    # three samples against that of the first three after the warm-up.
    span = min(3, max(1, len(after) // 2))
    start_mb = statistics.median(r.rss_mb for r in after[:span])
    end_mb = statistics.median(r.rss_mb for r in after[-span:])
    return {
        "minutes": minutes,
        "samples": len(rows),
        "warmup_s": round(warmup, 1),
        "messages": last.messages,
        "rss_mb_after_warmup": start_mb,
        "rss_mb_end": last.rss_mb,
        "rss_growth_mb": round(end_mb - start_mb, 1),
        "rss_max_mb": max(r.rss_mb for r in after),
        "peak_rss_mb": last.peak_rss_mb,
        "threads_growth": last.threads - first.threads,
        "open_files_growth": last.open_files - first.open_files,
        "threads_end": last.threads,
        "open_files_end": last.open_files,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.daemon_probe", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="model file (default: %(default)s)"
    )
    common.add_argument(
        "--source", default=str(DEFAULT_VIDEO), help="video, looped (default: %(default)s)"
    )
    common.add_argument(
        "--threads", type=int, default=2, help="inference threads (default: %(default)s)"
    )
    common.add_argument("--json", action="store_true", help="only the summary, as one JSON line")
    bench = sub.add_parser(
        "bench", parents=[common], help="peak RSS and capture-to-broker delay of the daemon"
    )
    bench.add_argument(
        "--seconds", type=float, default=60, help="measured time after warm-up (default: 60)"
    )
    bench.add_argument(
        "--fps",
        type=float,
        default=0,
        help="source fps cap; 0 = the video's own rate, above the model's: saturated "
        "(default: %(default)s)",
    )
    run = sub.add_parser(
        "soak", parents=[common], help="RSS, threads and open files of the daemon over time"
    )
    run.add_argument("--minutes", type=float, default=30, help="run time (default: %(default)s)")
    run.add_argument(
        "--interval", type=float, default=10, help="seconds between samples (default: 10)"
    )
    run.add_argument(
        "--warmup", type=float, help="seconds before growth is counted (default: a tenth, <= 300)"
    )
    run.add_argument("--fps", type=float, default=5, help="source fps cap (default: %(default)s)")
    run.add_argument("--csv", type=Path, help="also write the samples to this CSV file")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the agent's process group and the broker are stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.mode == "bench":
        result = bench_daemon(
            model=args.model,
            source=args.source,
            fps=args.fps,
            threads=args.threads,
            seconds=args.seconds,
        )
    else:
        result = soak(
            minutes=args.minutes,
            interval_s=args.interval,
            warmup_s=args.warmup,
            model=args.model,
            source=args.source,
            fps=args.fps,
            threads=args.threads,
            csv_path=args.csv,
            out=None if args.json else sys.stdout,
        )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
