"""Peak memory of a model in a fresh process: what a device running only this model would hold.

Measured in a child because memory a previous model used stays with the process (allocator
caches), which would make every later model look as big as the biggest one.
Run as ``python -m agent.compress.rss MODEL DATA FRAME... [--card C] [--threads T]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.errors import CompressError


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure_rss_mb(
    model: Path, data: str | Path, frames: Sequence[str], card: Path | None, threads: int
) -> float:
    """Start a process that loads ``model`` and runs it on ``frames`` of ``data``; its peak RSS."""
    cmd = [sys.executable, "-m", "agent.compress.rss", str(model), str(data), *frames]
    cmd += ["--threads", str(threads)] + (["--card", str(card)] if card else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise CompressError(f"{model}: memory measurement failed: {done.stderr.strip()[-500:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.compress.rss")
    p.add_argument("model", help="model file")
    p.add_argument("data", help="video, image folder or image")
    p.add_argument("frames", nargs="+", help="image names, or frame numbers of a video")
    p.add_argument("--card", help="model card (default: <model>.card.yaml)")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default: 2)")
    args = p.parse_args(argv)
    from agent.compress.frames import read_frames
    from agent.detection.detector import Detector

    images = read_frames(args.data, args.frames)
    detector = Detector.load(args.model, card=args.card, threads=args.threads)
    for frame in images:
        detector.detect(frame.image)
    print(peak_rss_mb())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
