"""This host's clock against Redis ``TIME``: the clock the fleet agrees on (``batchrender doctor``).

Rate buckets, webhook slots and claims count time on Redis' clock; a host whose own clock is off
still writes skewed times into logs, job records and retention cutoffs, so ``doctor`` says by
how much, and warns above ``SKEW_WARN_S``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

#: Skew (beyond the round trip's uncertainty) above which ``doctor`` warns.
SKEW_WARN_S = 1.0


@dataclass(frozen=True)
class Skew:
    #: This host's clock minus Redis' (positive: this host is ahead), measured at the round trip's midpoint.
    offset_s: float
    #: The ``TIME`` round trip: the measurement is good to about half of it.
    rtt_s: float

    @property
    def beyond_rtt_s(self) -> float:
        """How far the clocks differ for sure (the offset less half the round trip)."""
        return max(0.0, abs(self.offset_s) - self.rtt_s / 2)

    def describe(self) -> str:
        direction = "ahead of" if self.offset_s >= 0 else "behind"
        return f"{abs(self.offset_s):.3f} s {direction} Redis TIME (round trip {self.rtt_s * 1000:.1f} ms)"


def measure(r: Any, clock: Callable[[], float] = time.time, tries: int = 3) -> Skew:
    """The skew of ``clock`` against Redis ``TIME``: the try with the shortest round trip of ``tries``."""
    best: Skew | None = None
    for _ in range(max(1, tries)):
        t0 = clock()
        seconds, micros = r.time()
        t1 = clock()
        found = Skew(offset_s=(t0 + t1) / 2 - (int(seconds) + int(micros) / 1e6), rtt_s=max(0.0, t1 - t0))
        if best is None or found.rtt_s < best.rtt_s:
            best = found
    assert best is not None
    return best


def verdict(skew: Skew, host: str, warn_above_s: float = SKEW_WARN_S) -> tuple[bool, str]:
    """``(ok, detail)`` for ``doctor``: not ok when the clocks differ by more than ``warn_above_s``."""
    if skew.beyond_rtt_s > warn_above_s:
        return False, (f"this host ({host}) is {skew.describe()}: more than {warn_above_s:g} s; its logs, "
                       "job times and retention cutoffs disagree with the fleet's")
    return True, f"this host ({host}) is {skew.describe()}"
