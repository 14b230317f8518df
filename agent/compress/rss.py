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
from typing import TYPE_CHECKING

from agent.errors import CompressError

if TYPE_CHECKING:
    from agent.serving import RuntimeSpec


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
    model: Path,
    data: str | Path,
    frames: Sequence[str],
    card: Path | None,
    threads: int,
    spec: RuntimeSpec | None = None,
) -> float:
    """Start a process that loads ``model`` (with ``spec``'s runtime, device and precision) and
    runs it on ``frames`` of ``data``; its peak RSS."""
    cmd = [sys.executable, "-m", "agent.compress.rss", str(model), str(data), *frames]
    cmd += ["--threads", str(threads)] + (["--card", str(card)] if card else [])
    if spec is not None:
        cmd += ["--runtime", spec.runtime, "--device", spec.device, "--precision", spec.precision]
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
    p.add_argument("--runtime", default="auto", help="auto, onnx, tflite or openvino")
    p.add_argument("--device", default="CPU", help="openvino: its device")
    p.add_argument("--precision", default="f32", help="openvino: its precision")
    args = p.parse_args(argv)
    from agent.compress.frames import read_frames
    from agent.serving import RuntimeSpec

    images = read_frames(args.data, args.frames)
    spec = RuntimeSpec(
        runtime=args.runtime, threads=args.threads, device=args.device, precision=args.precision
    )
    detector = spec.load(args.model, card=args.card)
    for frame in images:
        detector.detect(frame.image)
    print(peak_rss_mb())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
