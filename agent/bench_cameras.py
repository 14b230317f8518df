"""Several cameras on one model: N cameras replaying the same video into one pipeline on one
loaded detector; per-camera results per second, total inferences per second, CPU and memory,
each configuration in a fresh process so that peak memory compares (``ru_maxrss`` only grows)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.config import DEFAULT_VIDEO
from agent.detection import Detector
from agent.errors import EdgeAgentError
from agent.memory import return_large_blocks
from agent.pipeline import Pipeline
from agent.scheduler import Feed
from agent.sources import open_source

#: the issue's targets for N cameras against one (measured, reported, not asserted in tests)
TARGET_RSS_RATIO = 1.3  # peak RSS of N cameras <= 1.3x that of one
TARGET_THROUGHPUT_RATIO = 0.9  # total inferences/s of N cameras >= 0.9x that of one
TARGET_FAIR_SHARE = 0.8  # the slowest camera >= 0.8x of total / N


class BenchError(EdgeAgentError):
    """A benchmark run could not be measured (its child process failed, or no frame came)."""


def _rss_now_mb() -> float:
    """This process's resident memory now (``VmRSS``), in MB; 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: kB


def _video(source: str | None, cameras: int) -> str:
    """The video to replay (the sample video by default), checked before anything loads."""
    if cameras < 1:
        raise BenchError(f"bench: --cameras must be at least 1, got {cameras}")
    video = source or str(DEFAULT_VIDEO)
    if not Path(video).is_file():
        raise BenchError(f"bench: no such video: {video}")
    return video


def camera_names(count: int) -> list[str]:
    return [f"cam{i + 1}" for i in range(count)]


def measure_cameras(
    model: str | Path,
    *,
    cameras: int,
    source: str | None = None,
    seconds: float = 30.0,
    warmup_s: float = 5.0,
    fps: float = 0.0,
    threads: int = 2,
    card: str | None = None,
) -> dict[str, Any]:
    """Here, in this process: ``cameras`` sources reading ``source`` at its own rate (looped,
    capped at ``fps`` when not 0), no motion gate, one pipeline on one detector; after
    ``warmup_s``, what each camera got in ``seconds``, the process's CPU and memory."""
    video = _video(source, cameras)
    return_large_blocks()  # as `edge-agent run` does before the model loads: the same memory
    detector = Detector.load(model, card=card, threads=threads)
    names = camera_names(cameras)
    feeds = [
        Feed(name, open_source(video, fps=fps, loop=True, realtime=True), gate=None)
        for name in names
    ]
    pipeline = Pipeline(feeds, detector, lambda result: None)
    for feed in feeds:
        feed.source.start()
    pipeline.start()
    try:
        deadline = time.monotonic() + warmup_s + 60
        time.sleep(warmup_s)
        # The first results of every camera (the model's first runs are slow): warm-up ends
        # when each camera has had one, however long the model took to get there.
        while any(pipeline.camera_stats[n].inferences == 0 for n in names):
            if time.monotonic() > deadline or not pipeline.alive:
                raise BenchError(
                    f"bench: no result from every camera within {warmup_s + 60:.0f} s "
                    f"({pipeline.crashed or 'check the video and the model'})"
                )
            time.sleep(0.1)
        start = _counts(pipeline, feeds)
        cpu0, t0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu, elapsed = time.process_time() - cpu0, time.monotonic() - t0
        end = _counts(pipeline, feeds)
    finally:
        pipeline.stop()
        for feed in feeds:
            feed.source.stop()
        detector.close()
    per_camera = {
        name: {
            "fps": round((end[name]["inferences"] - start[name]["inferences"]) / elapsed, 2),
            **{key: end[name][key] - start[name][key] for key in end[name]},
        }
        for name in names
    }
    inferences = sum(c["inferences"] for c in per_camera.values())
    return {
        "model": str(model),
        "source": video,
        "cameras": cameras,
        "seconds": round(elapsed, 2),
        "fps_cap": fps,
        "threads": threads,
        "per_camera": per_camera,
        "inferences_per_s": round(inferences / elapsed, 2),
        "cpu_percent": round(100 * cpu / elapsed, 1),
        # less sensitive to other processes' load than inferences/s: what each result cost
        "cpu_ms_per_inference": round(1e3 * cpu / inferences, 1) if inferences else 0.0,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_mb": _rss_now_mb(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _counts(pipeline: Pipeline, feeds: list[Feed]) -> dict[str, dict[str, int]]:
    """Per camera: frames the source decoded and dropped (replaced before the pipeline took
    them), frames the pipeline took and the model ran on."""
    counts = {}
    for feed in feeds:
        stats = pipeline.camera_stats[feed.name].snapshot()
        status = feed.source.status
        counts[feed.name] = {
            "decoded": status.frames,
            "dropped": status.dropped,
            "inferences": int(stats["inferences"]),
        }
    return counts


def _in_child(model: str | Path, cameras: int, options: dict[str, Any]) -> dict[str, Any]:
    """``measure_cameras`` in a fresh ``edge-agent bench --no-baseline`` process."""
    cmd = [sys.executable, "-m", "agent", "bench", str(model), "--cameras", str(cameras)]
    cmd += ["--no-baseline", "--json", "--seconds", str(options["seconds"])]
    cmd += ["--warmup", str(options["warmup_s"]), "--fps", str(options["fps"])]
    cmd += ["--threads", str(options["threads"])]
    cmd += ["--source", options["source"]]
    cmd += ["--card", options["card"]] if options["card"] else []
    limit = options["warmup_s"] + options["seconds"] + 180  # loading, warm-up, the run
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        raise BenchError(f"bench: the {cameras}-camera run took over {limit:.0f} s") from exc
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise BenchError(f"bench: the {cameras}-camera run failed: {why}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_cameras_bench(
    model: str | Path,
    *,
    cameras: int,
    source: str | None = None,
    seconds: float = 30.0,
    warmup_s: float = 5.0,
    fps: float = 0.0,
    threads: int = 2,
    card: str | None = None,
) -> dict[str, Any]:
    """One camera, then ``cameras``, each in its own child process, one after the other; both
    runs and how the second compares with the first, against the issue's targets."""
    options = {
        "source": _video(source, cameras),
        "seconds": seconds,
        "warmup_s": warmup_s,
        "fps": fps,
        "threads": threads,
        "card": card,
    }
    one = _in_child(model, 1, options)
    many = _in_child(model, cameras, options)
    return {**compare(one, many), "one_camera": one, "n_cameras": many}


def compare(one: dict[str, Any], many: dict[str, Any]) -> dict[str, Any]:
    """How the ``many``-camera run compares with the one-camera run, and the targets met."""
    count = int(many["cameras"])
    total = float(many["inferences_per_s"])
    lowest = min(float(c["fps"]) for c in many["per_camera"].values())
    rss_ratio = many["peak_rss_mb"] / one["peak_rss_mb"] if one["peak_rss_mb"] else 0.0
    throughput = total / one["inferences_per_s"] if one["inferences_per_s"] else 0.0
    share = lowest / (total / count) if total else 0.0
    (alone,) = one["per_camera"].values()
    return {
        "model": many["model"],
        "source": many["source"],
        "cameras": count,
        "fps_cap": many["fps_cap"],
        "rss_ratio": round(rss_ratio, 3),
        "inferences_per_s_ratio": round(throughput, 3),
        "lowest_camera_share": round(share, 3),
        # The one camera left frames unprocessed, so the model was busy all the time: only then
        # does the inferences/s ratio measure what sharing the model costs.
        "one_camera_saturates_model": alone["inferences"] < 0.95 * alone["decoded"],
        "targets_met": {
            f"rss_ratio <= {TARGET_RSS_RATIO}": rss_ratio <= TARGET_RSS_RATIO,
            f"inferences_per_s_ratio >= {TARGET_THROUGHPUT_RATIO}": (
                throughput >= TARGET_THROUGHPUT_RATIO
            ),
            f"lowest_camera_share >= {TARGET_FAIR_SHARE}": share >= TARGET_FAIR_SHARE,
        },
    }


def format_report(result: dict[str, Any]) -> str:
    """The comparison as lines for people: one row per run, then the ratios and targets."""
    runs = [result["one_camera"], result["n_cameras"]] if "n_cameras" in result else [result]
    lines = [
        f"{'cameras':>7} {'per-camera fps':>24} {'inferences/s':>12} {'CPU %':>6} "
        f"{'CPU ms/inf':>10} {'peak RSS MB':>11} {'RSS MB':>7} {'load':>5}"
    ]
    for run in runs:
        fps = " ".join(f"{c['fps']:g}" for c in run["per_camera"].values())
        lines.append(
            f"{run['cameras']:>7} {fps:>24} {run['inferences_per_s']:>12} "
            f"{run['cpu_percent']:>6} {run['cpu_ms_per_inference']:>10} "
            f"{run['peak_rss_mb']:>11} {run['rss_mb']:>7} "
            f"{run['load_avg_1m']:>5}"
        )
    if "n_cameras" in result:
        lines.append(
            f"rss ratio {result['rss_ratio']}, inferences/s ratio "
            f"{result['inferences_per_s_ratio']}, lowest camera's share of a fair one "
            f"{result['lowest_camera_share']}"
        )
        lines += [f"  {'met' if ok else 'MISSED'}: {k}" for k, ok in result["targets_met"].items()]
        if not result["one_camera_saturates_model"]:
            lines.append(
                "  (one camera did not keep the model busy: the inferences/s ratio is the "
                "cameras' rate, not the cost of sharing)"
            )
    return "\n".join(lines)
