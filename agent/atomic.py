"""Crash-safe file writes: readers see the old file or the whole new one, and a rename survives
a power cut (temp file, fsync, rename, fsync the folder)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part.

    The temporary file is created with ``mode`` from the start (mkstemp makes it 0600, then it is
    widened if asked), so a private key is never readable by others, not even for a moment. Without
    ``overwrite`` the file is put in place with a hard link, which fails if ``path`` exists even
    when another process creates it at the same time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # explicit, so the umask does not decide
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            tmp.replace(path)
        else:
            os.link(tmp, path)  # FileExistsError if it is there, even if created just now
            tmp.unlink()
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
