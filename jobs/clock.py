"""One clock for the fleet: Redis's.

Hosts share Redis, not a clock. A time that one process writes to Redis and another process
compares against its own clock (a claim's lease, a delivery slot, "dispatched N seconds ago", a
job's first start) is only as right as the two hosts' clocks agree: two API hosts 3 s apart
refused half the requests of a rate limit (issue 25). So every such time is read from the Redis
server, the one clock all of them see:

- in a Lua script, ``NOW_LUA`` (``redis.call('TIME')``; Redis >= 5 replicates a script's effects,
  so it may write after reading the time);
- in Python, ``redis_now(r)`` (one ``TIME`` round trip).

Times that are only shown (``created_at``, ``finished_at``, an event's ``at``) keep the caller's
clock; so does anything compared on the host that wrote it (``time.monotonic`` for waits).
"""
from __future__ import annotations

from typing import Any

#: Lua: sets the local ``now`` to the Redis server's time in seconds (float, microseconds).
NOW_LUA = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) + tonumber(_t[2]) / 1000000
"""


def redis_now(r: Any) -> float:
    """The Redis server's time (Unix seconds), the clock every host of a fleet compares against."""
    seconds, micros = r.time()
    return int(seconds) + int(micros) / 1_000_000


def lua_time(value: Any) -> float:
    """A time a script returned as a string (``string.format('%.6f', now)``): Lua's own
    ``tostring`` keeps only 14 significant digits."""
    return float(value.decode() if isinstance(value, bytes) else value)
