"""The webhook delivery log in Redis: event records, every attempt, indexes and dead letters.

Keys (all under ``br:wh:``)::

    evt:{id}            hash   the event record (payload, url, state, counters; secrets for retries)
    evt:{id}:attempts   list   JSON attempt entries, oldest first
    job:{job_id}        zset   event ids of a job, by creation time
    tenant:{tenant}     zset   event ids of a tenant
    all                 zset   every event id (for ``webhooks deliveries``)
    dead                zset   dead-lettered event ids, by time
    gone                hash   endpoint URL -> JSON note; a 410 Gone disables the URL
    progress:{job_id}   string throttle slot for job.progress
    pending             zset   ids of events still to deliver, by creation time (for the sweep)

The secrets needed to sign retries live in the record (Redis is trusted with them) but never
appear in a repr, a log line or the CLI.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from jobs.clock import NOW_LUA, redis_now
from jobs.names import KEY_PREFIX

PREFIX = KEY_PREFIX + "wh:"
PENDING, DELIVERED, DEAD, GONE = "pending", "delivered", "dead", "gone"
STATES = (PENDING, DELIVERED, DEAD, GONE)

# Atomic create-if-absent: the same event id never gets a second record (nor a second send).
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return 1
"""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class EventRecord:
    """One event to one endpoint. ``generation`` changes on replay; ``next_attempt`` is the
    attempt number the next task message must carry (stale or duplicate messages are dropped)."""

    id: str
    type: str
    url: str
    payload: str
    job_id: str = ""
    batch_id: str = ""
    tenant: str = ""
    state: str = PENDING
    attempts: int = 0
    generation: int = 1
    next_attempt: int = 1
    scheduled_attempt: int = 0
    not_before: float = 0.0
    claimed_until: float = 0.0
    last_status: int = 0
    last_error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def to_hash(self) -> dict[str, str]:
        d = asdict(self)
        d["secrets"] = json.dumps(list(self.secrets))
        return {k: str(v) for k, v in d.items()}

    @classmethod
    def from_hash(cls, h: dict[Any, Any]) -> "EventRecord":
        d = {_s(k): _s(v) for k, v in h.items()}
        kw: dict[str, Any] = {}
        for f in cls.__dataclass_fields__.values():
            if f.name not in d:
                continue
            raw = d[f.name]
            if f.name == "secrets":
                kw[f.name] = tuple(json.loads(raw))
            elif f.type == "int":
                kw[f.name] = int(raw)
            elif f.type == "float":
                kw[f.name] = float(raw)
            else:
                kw[f.name] = raw
        return cls(**kw)


@dataclass(frozen=True)
class Attempt:
    """One logged attempt. ``status`` is 0 when no HTTP response came back."""

    attempt: int
    at: float
    status: int
    latency_ms: int
    outcome: str
    error: str = ""
    generation: int = 1


# KEYS: the tenant's slot set (holder -> lease end, Redis time). ARGV: lease, limit, token.
# Leases are on Redis's clock (jobs/clock.py): a worker whose clock runs ahead would otherwise
# free the others' slots early, and one behind would hold its own past their end.
_SLOT = NOW_LUA + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
return 1
"""

# KEYS: the event record. ARGV: generation, attempt, lease. The attempt's claim on Redis's clock:
# {1, record fields...} when taken; {0} when stale, a duplicate or held; {} for no record.
_CLAIM = NOW_LUA + """
local h = redis.call('HMGET', KEYS[1], 'state', 'generation', 'next_attempt', 'claimed_until')
if not h[1] then return {} end
if h[1] ~= 'pending' or tonumber(h[2]) ~= tonumber(ARGV[1]) or tonumber(h[3]) ~= tonumber(ARGV[2])
    or (tonumber(h[4] or '0') or 0) > now then
  return {0}
end
redis.call('HSET', KEYS[1], 'claimed_until', string.format('%.6f', now + tonumber(ARGV[3])))
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, 1)
return out
"""


class DeliveryStore:
    """Reads and writes the delivery log. ``redis`` is a redis-py client (bytes or str replies)."""

    def __init__(self, redis: Any, ttl_s: int = 7 * 24 * 3600) -> None:
        self.redis = redis
        self.ttl_s = int(ttl_s)
        self._create = redis.register_script(_CREATE)
        self._slot = redis.register_script(_SLOT)
        self._claim = redis.register_script(_CLAIM)

    def now(self) -> float:
        """Redis's time: what every worker compares claims, leases and schedules against."""
        return redis_now(self.redis)

    # -- keys ------------------------------------------------------------------------------------
    @staticmethod
    def key(event_id: str) -> str:
        return f"{PREFIX}evt:{event_id}"

    def _attempts_key(self, event_id: str) -> str:
        return self.key(event_id) + ":attempts"

    # -- records ---------------------------------------------------------------------------------
    def create(self, rec: EventRecord) -> bool:
        """Store a new record and index it; False (and nothing written) if the id exists."""
        now = self.now()
        rec = replace(rec, created_at=rec.created_at or now, updated_at=now)
        keys = [self.key(rec.id), PREFIX + "all"]
        if rec.state == PENDING:
            keys.append(PREFIX + "pending")
        if rec.job_id:
            keys.append(f"{PREFIX}job:{rec.job_id}")
        if rec.tenant:
            keys.append(f"{PREFIX}tenant:{rec.tenant}")
        flat: list[str] = []
        for k, v in rec.to_hash().items():
            flat += [k, v]
        return bool(self._create(keys=keys, args=[self.ttl_s, rec.created_at, rec.id, *flat]))

    def get(self, event_id: str) -> EventRecord | None:
        """The record, or None when unknown or expired."""
        h = self.redis.hgetall(self.key(event_id))
        return EventRecord.from_hash(h) if h else None

    def update(self, event_id: str, **fields: Any) -> None:
        """Overwrite some fields (used under the task's claim; see ``claim``). ``updated_at`` is
        Redis's time: the sweep compares it, on whichever worker runs it."""
        fields["updated_at"] = self.now()
        pipe = self.redis.pipeline()
        pipe.hset(self.key(event_id), mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(self.key(event_id), self.ttl_s)
        if fields.get("state") == DEAD:
            pipe.zadd(PREFIX + "dead", {event_id: fields["updated_at"]})
        elif "state" in fields:
            pipe.zrem(PREFIX + "dead", event_id)
        if fields.get("state") == PENDING:
            pipe.zadd(PREFIX + "pending", {event_id: fields["updated_at"]}, nx=True)
        elif "state" in fields:
            pipe.zrem(PREFIX + "pending", event_id)
        pipe.execute()

    # -- per-tenant concurrency -------------------------------------------------------------------
    def acquire_slot(self, tenant: str, limit: int, lease_s: float, token: str) -> bool:
        """One of ``tenant``'s ``limit`` delivery slots for ``token``; a slot whose holder died
        frees itself after ``lease_s``. False when all are taken."""
        return bool(self._slot(keys=[f"{PREFIX}slots:{tenant or '-'}"], args=[lease_s, limit, token]))

    def release_slot(self, tenant: str, token: str) -> None:
        self.redis.zrem(f"{PREFIX}slots:{tenant or '-'}", token)

    def claim(self, event_id: str, generation: int, attempt: int, lease_s: float) -> EventRecord | None:
        """Take the right to run ``attempt``: None if the message is stale, a duplicate, or
        another worker holds an unexpired claim (a crashed worker's claim expires). Atomic, and
        on Redis's clock: a worker whose clock runs ahead cannot take over a live claim."""
        got = self._claim(keys=[self.key(event_id)], args=[generation, attempt, lease_s])
        if not got or int(got[0]) != 1:
            return None
        flat = got[1:]
        return EventRecord.from_hash(dict(zip(flat[0::2], flat[1::2])))

    def log_attempt(self, event_id: str, entry: Attempt) -> None:
        """Append one attempt to the event's log."""
        k = self._attempts_key(event_id)
        pipe = self.redis.pipeline()
        pipe.rpush(k, json.dumps(asdict(entry)))
        pipe.expire(k, self.ttl_s)
        pipe.execute()

    def attempts(self, event_id: str) -> list[Attempt]:
        """Every logged attempt of an event, oldest first."""
        return [Attempt(**json.loads(_s(x))) for x in self.redis.lrange(self._attempts_key(event_id), 0, -1)]

    # -- indexes ---------------------------------------------------------------------------------
    def _records(self, index: str, limit: int) -> list[EventRecord]:
        ids = [_s(i) for i in self.redis.zrevrange(index, 0, max(limit, 1) - 1)]
        out = [self.get(i) for i in ids]
        return [r for r in out if r is not None]

    def by_job(self, job_id: str, limit: int = 1000) -> list[EventRecord]:
        """A job's events, newest first."""
        return self._records(f"{PREFIX}job:{job_id}", limit)

    def by_tenant(self, tenant: str, limit: int = 1000) -> list[EventRecord]:
        """A tenant's events, newest first."""
        return self._records(f"{PREFIX}tenant:{tenant}", limit)

    def recent(self, limit: int = 50) -> list[EventRecord]:
        """The newest events of everyone."""
        return self._records(PREFIX + "all", limit)

    def pending_ids(self, limit: int = 1000) -> list[str]:
        """Ids of events still to deliver, oldest first."""
        return [_s(i) for i in self.redis.zrange(PREFIX + "pending", 0, max(limit, 1) - 1)]

    def forget_pending(self, event_id: str) -> None:
        self.redis.zrem(PREFIX + "pending", event_id)

    def dead_letters(self, limit: int = 1000) -> list[EventRecord]:
        """Events whose last attempt failed, newest first."""
        return self._records(PREFIX + "dead", limit)

    # -- endpoints and throttles -----------------------------------------------------------------
    def disable_endpoint(self, url: str, event_id: str) -> None:
        """Remember that ``url`` answered 410 Gone; later events to it are not attempted."""
        self.redis.hset(PREFIX + "gone", url, json.dumps({"at": time.time(), "event_id": event_id}))

    def is_disabled(self, url: str) -> bool:
        """True when ``url`` answered 410 Gone earlier and was not re-enabled."""
        return bool(self.redis.hexists(PREFIX + "gone", url))

    def enable_endpoint(self, url: str) -> None:
        """Forget a 410 Gone (an operator says the endpoint is back)."""
        self.redis.hdel(PREFIX + "gone", url)

    def progress_slot(self, job_id: str, interval_s: float) -> bool:
        """True at most once per ``interval_s`` per job, across every worker process."""
        if interval_s <= 0:
            return True
        return bool(self.redis.set(f"{PREFIX}progress:{job_id}", 1, nx=True, px=max(int(interval_s * 1000), 1)))
