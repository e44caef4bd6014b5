"""Housekeeping that every worker process runs in the background, one worker at a time.

Both sweeps (lost job messages, lost webhook messages) run this way: a daemon thread wakes every
half period and takes a turn only if no process in the fleet took one within the period (a Redis
``SET NX PX`` lock), so the fleet sweeps about once per period however many workers it has.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


def take_turn(redis: Any, key: str, every_s: float) -> bool:
    """True for the first caller across the fleet in each ``every_s`` window."""
    return bool(redis.set(key, "1", nx=True, px=int(every_s * 1000)))


def start_periodic(name: str, every_s: float, run: Callable[[], Any]) -> threading.Thread:
    """Call ``run`` every ``every_s / 2`` seconds in a daemon thread for as long as the process
    lives; a failure (Redis away) is logged and the next round tries again."""
    def loop() -> None:
        while True:
            time.sleep(every_s / 2)
            try:
                run()
            except Exception:  # noqa: BLE001 - never let housekeeping die
                log.warning("%s failed; trying again next round", name, exc_info=True)

    t = threading.Thread(target=loop, name=f"batchrender-{name}", daemon=True)
    t.start()
    return t
