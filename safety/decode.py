"""Decoding untrusted images under a CPU and memory budget.

An image can be small on the wire and still cost minutes of CPU to decode (a progressive JPEG
with thousands of scans) or gigabytes of memory. Headers are read in-process (cheap); the full
decode runs in a throwaway child process started with ``RLIMIT_CPU`` and ``RLIMIT_AS`` set, so a
hostile image costs at most the budget and never a request thread's time or the parent's memory.
The child imports only Pillow.

**Per request, too.** One request may carry many images (an OpenAI edit: 16 images and a mask;
a job: an image, a mask and references), and a budget per image alone lets it cost 17 budgets.
``request_budget`` opens a ``RequestBudget`` for the images of one request (the context a
request's threads share): every decode draws on its pixels (counted once per distinct image, from
the header, before anything is decoded) and CPU seconds (what each child really used, reported by
itself; the next child may use no more than is left, enforced by a CPU timer to the millisecond).
What is over it is refused as ``decode_budget:request ...``, naming the limit.
"""
from __future__ import annotations

import hashlib
import math
import resource
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import Image

_CHILD = Path(__file__).with_name("decode_child.py")
#: Address space for the decoding child: Python, Pillow and one image of the pixel limit.
CHILD_MEMORY_BYTES = 1536 * 1024 * 1024


@dataclass
class RequestBudget:
    """What decoding the images of one request may cost in all: ``pixels`` and ``cpu_s``."""

    pixels: int
    cpu_s: float
    used_pixels: int = 0
    used_cpu_s: float = 0.0
    _seen: set[bytes] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def charge_pixels(self, data: bytes, count: int) -> str | None:
        """Count an image's pixels (once per distinct image: we may decode one twice); the
        refusal when they take the request over its budget, else None."""
        digest = hashlib.sha256(data).digest()
        with self._lock:
            if digest in self._seen:
                return None
            if self.used_pixels + count > self.pixels:
                return (f"decode_budget:request pixels: this request's images hold {self.used_pixels + count} "
                        f"pixels in all; one request may decode at most {self.pixels} "
                        "(BATCHRENDER_IMAGE_DECODE_REQUEST_PIXELS)")
            self._seen.add(digest)
            self.used_pixels += count
        return None

    def cpu_left(self) -> float:
        with self._lock:
            return self.cpu_s - self.used_cpu_s

    def charge_cpu(self, seconds: float) -> None:
        with self._lock:
            self.used_cpu_s += max(0.0, seconds)

    def cpu_refusal(self) -> str:
        return (f"decode_budget:request CPU: this request's images took {self.used_cpu_s:.2f} s of CPU to decode; "
                f"one request may use at most {self.cpu_s:g} s (BATCHRENDER_IMAGE_DECODE_REQUEST_CPU_S)")


_BUDGET: ContextVar[RequestBudget | None] = ContextVar("decode_request_budget", default=None)


@contextmanager
def request_budget(pixels: int, cpu_s: float) -> Iterator[RequestBudget]:
    """The decode budget of the request being handled: the one already open in this context
    (a route opens it, the code it calls joins it), else a new one for the ``with`` block."""
    current = _BUDGET.get()
    if current is not None:
        yield current
        return
    budget = RequestBudget(pixels, cpu_s)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def current_budget() -> RequestBudget | None:
    return _BUDGET.get()


@dataclass(frozen=True)
class Decoded:
    image: Image.Image | None
    #: Why it was refused (``decode_budget``, ``corrupt_image``...); None when decoded.
    refused: str | None = None


def decode_bounded(data: bytes, *, max_pixels: int, formats: tuple[str, ...], cpu_s: float,
                   mode: str = "RGB") -> Decoded:
    """The image in ``mode`` (RGB or RGBA), decoded in a child with ``cpu_s`` seconds of CPU at
    most, and no more than the current request has left (``request_budget``)."""
    budget = _BUDGET.get()
    allowed = cpu_s
    if budget is not None:
        allowed = min(cpu_s, budget.cpu_left())
        if allowed <= 0:
            return Decoded(None, budget.cpu_refusal())
    limit = max(1, math.ceil(allowed))

    def limits() -> None:  # runs in the child, before Python starts
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 1))
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
        # RLIMIT_CPU counts whole seconds; a CPU timer (kept across exec) ends it at ``allowed``.
        signal.setitimer(signal.ITIMER_PROF, allowed)

    try:
        done = subprocess.run([sys.executable, "-I", str(_CHILD), str(max_pixels), mode, *formats], input=data,
                              capture_output=True, preexec_fn=limits, timeout=limit * 10 + 20)
    except subprocess.TimeoutExpired:  # stuck without using CPU (it never should)
        if budget is not None:
            budget.charge_cpu(allowed)
        return Decoded(None, "decode_budget")
    if budget is not None:
        budget.charge_cpu(_cpu_used(done, allowed))
    over = budget is not None and budget.cpu_left() < 0
    if done.returncode == 0:
        if over:
            return Decoded(None, budget.cpu_refusal())  # type: ignore[union-attr]
        head, _, raw = done.stdout.partition(b"\n")
        width, height = (int(x) for x in head.split()[:2])
        return Decoded(Image.frombytes(mode, (width, height), raw))
    if done.returncode == 3:
        return Decoded(None, done.stderr.decode("utf-8", "replace").split("\n#cpu=")[0][:200] or "corrupt_image")
    if done.returncode in (-signal.SIGXCPU, -signal.SIGKILL, -signal.SIGPROF):
        if budget is not None and allowed < cpu_s:
            return Decoded(None, budget.cpu_refusal())
        return Decoded(None, f"decode_budget:more than {allowed:g}s of CPU")
    # MemoryError under RLIMIT_AS, or anything else that killed the decoder.
    return Decoded(None, f"decode_budget:decoder failed (exit {done.returncode})")


def _cpu_used(done: subprocess.CompletedProcess, allowed: float) -> float:
    """The CPU seconds the child reported (after the size, or after ``#cpu=`` on a refusal);
    ``allowed`` when it was killed or said nothing."""
    try:
        if done.returncode == 0:
            return float(done.stdout.split(b"\n", 1)[0].split()[2])
        if done.returncode == 3:
            return float(done.stderr.rsplit(b"#cpu=", 1)[1])
    except (IndexError, ValueError):
        pass
    return allowed
