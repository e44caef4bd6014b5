"""Decoding untrusted images under a CPU and memory budget.

An image can be small on the wire and still cost minutes of CPU to decode (a progressive JPEG
with thousands of scans) or gigabytes of memory. Headers are read in-process (cheap); the full
decode runs in a throwaway child process started with ``RLIMIT_CPU`` and ``RLIMIT_AS`` set, so a
hostile image costs at most the budget and never a request thread's time or the parent's memory.
The child imports only Pillow.
"""
from __future__ import annotations

import math
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

_CHILD = Path(__file__).with_name("decode_child.py")
#: Address space for the decoding child: Python, Pillow and one image of the pixel limit.
CHILD_MEMORY_BYTES = 1536 * 1024 * 1024


@dataclass(frozen=True)
class Decoded:
    image: Image.Image | None
    #: Why it was refused (``decode_budget``, ``corrupt_image``...); None when decoded.
    refused: str | None = None


def decode_bounded(data: bytes, *, max_pixels: int, formats: tuple[str, ...], cpu_s: float,
                   mode: str = "RGB") -> Decoded:
    """The image in ``mode`` (RGB or RGBA), decoded in a child with ``cpu_s`` seconds of CPU at most."""
    limit = max(1, math.ceil(cpu_s))

    def limits() -> None:  # runs in the child, before Python starts
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 1))
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))

    try:
        done = subprocess.run([sys.executable, "-I", str(_CHILD), str(max_pixels), mode, *formats], input=data,
                              capture_output=True, preexec_fn=limits, timeout=limit * 10 + 20)
    except subprocess.TimeoutExpired:  # stuck without using CPU (it never should)
        return Decoded(None, "decode_budget")
    if done.returncode == 0:
        head, _, raw = done.stdout.partition(b"\n")
        width, height = (int(x) for x in head.split())
        return Decoded(Image.frombytes(mode, (width, height), raw))
    if done.returncode == 3:
        return Decoded(None, done.stderr.decode("utf-8", "replace")[:200] or "corrupt_image")
    if done.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return Decoded(None, f"decode_budget:more than {limit}s of CPU")
    # MemoryError under RLIMIT_AS, or anything else that killed the decoder.
    return Decoded(None, f"decode_budget:decoder failed (exit {done.returncode})")
