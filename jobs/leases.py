"""Claim leases: whether the worker that claimed a job still lives, on Redis's clock.

A claimed job's record names its worker (``worker``: ``host:pid``, worker/runner.py stage 1).
While that worker holds the job, the job's message normally sits in kombu's unacknowledged set,
and if the worker dies the message comes back after the visibility timeout. But the message can
go while the record still says ``running`` (worker/sweep.py lists how), and then nothing would
ever take the job again. The job sweep re-sends such a job only when its worker is gone, never
while a live worker may still be rendering it; the lease is how it tells.

Every process that claims jobs holds a lease: a sorted set ``claim-leases`` of worker ids scored
by the Redis ``TIME`` of their last renewal (jobs/clock.py: the sweep may run on another host).
A process renews at each claim when its last renewal is older than ``RENEW_EVERY_S``, and from a
daemon thread every ``RENEW_EVERY_S`` once it has claimed a job (so a long render does not let it
lapse). The thread is started by the first claim in the process, so whatever the pool, the
process that claims is the process that renews. A lease not renewed for ``stale_s`` has expired:
its worker died, was stopped, or has been cut off from Redis that long. Leases are never
released at shutdown (a warm shutdown finishes its jobs first); entries idle for
``FORGET_S`` are dropped. A worker with no entry at all (a claim made before leases existed)
counts as expired.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterable

from jobs.clock import NOW_LUA
from jobs.names import KEY_PREFIX

log = logging.getLogger(__name__)

#: Zset: worker id (``host:pid``) -> Redis time of its last lease renewal.
LEASES_KEY = f"{KEY_PREFIX}claim-leases"
#: How often a claiming process renews its lease.
RENEW_EVERY_S = 2.0
#: The shortest silence that counts as expired: three renewals missed.
MIN_STALE_S = 3 * RENEW_EVERY_S
#: Entries not renewed for this long are dropped (longer than any record lives).
FORGET_S = 8 * 24 * 3600.0

#: KEYS: leases. ARGV: worker, forget_s. Returns Redis's time.
_RENEW = NOW_LUA + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return string.format('%.6f', now)
"""

#: KEYS: leases. ARGV: stale_s, then worker ids. Returns the ids whose lease has expired.
_EXPIRED = NOW_LUA + """
local out = {}
for i = 2, #ARGV do
  local at = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not at or now - tonumber(at) > tonumber(ARGV[1]) then out[#out + 1] = ARGV[i] end
end
return out
"""


def renew(r: Any, worker: str) -> None:
    """Renew ``worker``'s lease now (Redis time)."""
    r.eval(_RENEW, 1, LEASES_KEY, worker, FORGET_S)


def expired(r: Any, workers: Iterable[str], stale_s: float) -> set[str]:
    """Those of ``workers`` whose lease was not renewed in the last ``stale_s`` seconds (or ever)."""
    ids = sorted(set(workers))
    if not ids:
        return set()
    return set(r.eval(_EXPIRED, 1, LEASES_KEY, max(stale_s, MIN_STALE_S), *ids))


class _Holder:
    """This process's lease: the client to renew it on, when it was last renewed, its thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.r: Any = None
        self.worker = ""
        self.renewed = float("-inf")  # time.monotonic() of the last renewal
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def renew(self) -> None:
        renew(self.r, self.worker)
        self.renewed = time.monotonic()

    def loop(self) -> None:
        quiet_until = 0.0
        while True:
            time.sleep(RENEW_EVERY_S)
            try:
                self.renew()
            except Exception as e:  # noqa: BLE001 - Redis away: the next round tries again
                if time.monotonic() >= quiet_until:
                    log.warning("claim lease not renewed (%s); retrying every %.0f s", e, RENEW_EVERY_S)
                    quiet_until = time.monotonic() + 60


_holder: _Holder | None = None
_holder_lock = threading.Lock()


def hold(r: Any, worker: str) -> None:
    """Called as this process claims a job: renew its lease unless that was done within
    ``RENEW_EVERY_S``, and keep renewing it from a daemon thread for as long as the process lives.
    Raises what Redis raises (the claim that follows would fail the same way)."""
    global _holder
    with _holder_lock:
        if _holder is None or _holder.pid != os.getpid():
            _holder = _Holder()  # a forked child holds a lease of its own
        h = _holder
    with h.lock:
        h.r, h.worker = r, worker
        if time.monotonic() - h.renewed >= RENEW_EVERY_S:
            h.renew()
        if h.thread is None:
            h.thread = threading.Thread(target=h.loop, name="batchrender-claim-lease", daemon=True)
            h.thread.start()


__all__ = ["FORGET_S", "LEASES_KEY", "MIN_STALE_S", "RENEW_EVERY_S", "expired", "hold", "renew"]
