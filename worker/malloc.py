"""The render worker's C heap: how glibc's malloc is tuned before the worker starts its threads.

A render process allocates and frees image-sized buffers (decoded pixels, PNG and WebP encodes,
C2PA manifests, S3 bodies) from several threads at once: the render thread, post-processing
threads, webhook and storage I/O. glibc gives a thread that finds an arena busy an arena of its
own, up to 8 per core, and sizes "large" allocations by a threshold that rises each time such a
block is freed, so image buffers end up carved from those arenas' heaps, where the holes they leave
are rarely returned to the system. Measured (issue 26, benchmarks/memory.py --realistic): resident
memory grew ~20 MiB per 1,000 jobs while the machine's cores were contended, ~2.5 alone.

``tune()`` caps the arenas (``BATCHRENDER_MALLOC_ARENA_MAX``, 2: threads share them) and, when
asked (``BATCHRENDER_MALLOC_MMAP_THRESHOLD``, bytes; off by default, since mapping every large
tensor costs a CPU render page faults), pins the mmap threshold: a buffer at least that large is
mapped on its own and unmapped when freed. 0 leaves either as glibc sets it, and a
``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` in the environment (glibc reads those itself)
wins over the setting. Not glibc (macOS, musl): nothing to tune; ``tune()`` says so and returns.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("worker.malloc")

#: mallopt(3) parameters (glibc malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune(arena_max: int, mmap_threshold: int) -> dict[str, int]:
    """Apply what the environment does not already set; returns what was applied (for the log)."""
    if not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or "").lower():
        return {}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    applied: dict[str, int] = {}
    for name, env, param, value in (("arena_max", "MALLOC_ARENA_MAX", M_ARENA_MAX, arena_max),
                                    ("mmap_threshold", "MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, mmap_threshold)):
        if value <= 0 or os.environ.get(env):
            continue
        if mallopt(param, value) == 1:
            applied[name] = value
        else:
            log.warning("mallopt(%s, %d) was refused; glibc's default stays", name, value)
    return applied
