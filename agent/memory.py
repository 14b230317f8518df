"""The C allocator set for a daemon that holds a model for months: large blocks go back to the
system as soon as they are freed.

glibc serves blocks of 128 KiB and more with mmap, but raises that threshold (up to 32 MiB) each
time such a block is freed; from then on frames, tensors and a model's load-time copies of its
weights come from the heap, and the heap keeps what they leave behind. For the person model that
was ~40 MB of peak RSS. Fixing the threshold keeps large blocks mapped on their own, returned on
free; the runtimes' own arenas still reuse their memory, so inference does not fault pages in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("agent.memory")

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE_BLOCK = 128 * 1024


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where the C library is not glibc
    (musl, macOS: nothing to do) or refuses."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold %d bytes: %s", threshold, "set" if ok else "refused")
    return ok
