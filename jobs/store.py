"""Job and batch records in Redis, with atomic status transitions.

A record is one hash per job. Every status change goes through one Lua script that checks the
current status, so a cancel racing a worker, or a redelivered message racing its first delivery,
resolves to exactly one winner. Entering a terminal status bumps the batch's ``done`` counter in
the same script, so "the batch is complete" is observed exactly once.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

import redis

from jobs.clock import NOW_LUA, lua_time
from jobs import redisconn
from jobs.errors import BrokerUnavailable, JobNotFound
from jobs.metrics import job_finished, job_submitted
from jobs.names import (ALL_BATCHES_KEY, ALL_JOBS_KEY, FINISHED_STATS_KEY, KEY_PREFIX, batch_index_key,
                        batch_jobs_key, batch_key, cancel_key, deleted_key, events_channel, idem_key, index_member,
                        job_key, queued_key, running_key, tenant_batches_key, tenant_jobs_key, tenant_key)
from jobs.redisconn import REDIS_AWAY
from jobs.schemas import JobMessage, JobResult, RenderRequest
from jobs.status import TERMINAL, JobStatus

#: Job records written before their message was published (batches): job key -> creation time.
UNPUBLISHED_KEY = f"{KEY_PREFIX}unpublished"
#: Errors that mean "Redis is not reachable right now" (down, restarting, loading its data,
#: a dropped connection, a failover: no master, or a server that is a replica now): retrying
#: later can succeed, so they become ``BrokerUnavailable`` (jobs/redisconn.py).
REDIS_DOWN = REDIS_AWAY
F = TypeVar("F", bound=Callable[..., Any])
#: Index entries one listing call reads at most when it filters by status.
LIST_SCAN_MAX = 1000


def client_for(url: str, settings: Any = None) -> redis.Redis:
    """A redis-py client that rides out connection blips (a killed connection, a failover):
    each command is retried on a fresh connection (to the current master), with backoff, for
    about two seconds before ``BrokerUnavailable`` is raised. Built by ``jobs.redisconn.client``,
    the one place clients are made (``redis://``, ``rediss://``, ``sentinel://``)."""
    return redisconn.client(url, settings)


def translate_redis_errors(fn: F) -> F:
    """Raise ``BrokerUnavailable`` (a TransientError) instead of redis-py's connection errors."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except REDIS_DOWN as e:
            raise BrokerUnavailable(redisconn.away_message(e, redisconn.client_of(fn, *args[:1]))) from e
    return wrapper  # type: ignore[return-value]

# KEYS: job, batch (or ""), tenant (or ""), queued zset of the model, running zset of the model,
# the fleet's finished-job counts (a hash "status|model" -> jobs ended so; the API's /metrics).
# ARGV: new status, allowed-from csv, ttl, then field/value pairs.
# Returns {1, done_count_or_-1} on success, {0, current_status_or_false} when refused.
# The running zset holds each running job with the time of its last claim, on Redis's clock: the
# job sweep (worker/sweep.py) reads it to find running jobs whose worker is gone.
_TRANSITION = NOW_LUA + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, false} end
local ok = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then ok = true end end
if not ok then return {0, cur} end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local terminal = ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'blocked' or ARGV[1] == 'canceled'
if ARGV[1] ~= 'queued' then
  redis.call('ZREM', KEYS[4], KEYS[1])
elseif KEYS[4] ~= '' then
  -- back in the queue (a retry): back in the queued index, at its original place
  redis.call('ZADD', KEYS[4], tonumber(redis.call('HGET', KEYS[1], 'created_at') or '0'), KEYS[1])
end
if ARGV[1] == 'running' then
  redis.call('ZADD', KEYS[5], now, KEYS[1])
else
  redis.call('ZREM', KEYS[5], KEYS[1])
end
local done = -1
if terminal then
  if KEYS[2] ~= '' then
    done = redis.call('HINCRBY', KEYS[2], 'done', 1)
    redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  end
  if KEYS[3] ~= '' then redis.call('HINCRBY', KEYS[3], 'active', -1) end
  redis.call('HINCRBY', KEYS[6], ARGV[1] .. '|' .. (redis.call('HGET', KEYS[1], 'model') or '-'), 1)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return {1, done}
"""


# KEYS: job. Sets first_started_at once, on Redis's clock (jobs/clock.py: the worker that claims a
# job again may be another host). Returns {first_started_at, now}.
_FIRST_STARTED = NOW_LUA + """
redis.call('HSETNX', KEYS[1], 'first_started_at', string.format('%.6f', now))
return {redis.call('HGET', KEYS[1], 'first_started_at'), string.format('%.6f', now)}
"""


# KEYS: tenant hash. ARGV: n, limit. Returns {1, active before} or {0, active}.
_RESERVE = """
local active = tonumber(redis.call('HGET', KEYS[1], 'active') or '0')
if active + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, active} end
redis.call('HINCRBY', KEYS[1], 'active', ARGV[1])
return {1, active}
"""


@dataclass
class JobRecord:
    """What a client sees of one job."""

    job_id: str
    status: JobStatus
    batch_id: str | None
    tenant: str | None
    custom_id: str | None
    model: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict[str, int] | None = None
    attempts: int = 0
    #: Times a transient error sent the job back to the queue (attempts - 1 - retries = workers lost).
    retries: int = 0
    request: dict[str, Any] = field(default_factory=dict)
    result: JobResult | None = None
    error: dict[str, Any] | None = None
    #: A refinement: parent job and image index, turn, root (``jobs.lineage.Lineage``); None: turn 0.
    lineage: dict[str, Any] | None = None
    #: The completion time planned when the job was accepted with a ``deliver_by`` (jobs/fairshare.py).
    planned_completion: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "id": self.job_id, "status": self.status.value, "batch_id": self.batch_id,
            "custom_id": self.custom_id, "model": self.model, "created_at": self.created_at,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "progress": self.progress, "attempts": self.attempts, "retries": self.retries,
        }
        if self.result is not None:
            d["outputs"] = [i.model_dump(mode="json") for i in self.result.images]
            d["timings"] = self.result.timings.model_dump()
            if self.result.prompt_tokens is not None:
                d["prompt_tokens"] = self.result.prompt_tokens
            if self.result.references is not None:
                d["references"] = self.result.references
            if self.result.moderation:
                d["moderation"] = self.result.moderation
        if self.error:
            d["error"] = self.error
        if self.lineage:
            d["lineage"] = {k: self.lineage[k] for k in ("parent_id", "parent_index", "turn", "root_id")}
        d["priority"] = self.request.get("priority") or "normal"
        if self.request.get("deliver_by") is not None:
            d["deliver_by"] = self.request["deliver_by"]
            d["planned_completion"] = self.planned_completion
        return d


@dataclass
class Transition:
    ok: bool
    current: JobStatus | None
    batch_done: int | None = None

    @property
    def already(self) -> bool:
        """Refused because the job is already in the target status: a redelivered message, or a
        retried call whose first reply was lost. Callers that only need the effect treat it as done."""
        return not self.ok and self.current is not None and self.current.value == self._target

    _target: str = field(default="", repr=False)


class JobStore:
    """Reads and writes job/batch records. Thread-safe (redis-py pools connections).

    Every public method raises ``BrokerUnavailable`` when Redis cannot be reached, never a raw
    redis-py error: callers (producer, API, worker) treat it as transient (the public methods are
    wrapped at the end of this module).
    """

    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.ttl_s = ttl_s
        self._transition = client.register_script(_TRANSITION)
        self._reserve = client.register_script(_RESERVE)
        self._first_started = client.register_script(_FIRST_STARTED)

    @classmethod
    def from_url(cls, url: str, ttl_s: int = 7 * 24 * 3600, settings: Any = None) -> "JobStore":
        """A store on ``url`` (a ``Settings.redis_url`` carries its Sentinel master name)."""
        return cls(client_for(url, settings), ttl_s)

    # -- creating --------------------------------------------------------------------------------
    def reserve(self, tenant: str, n: int, limit: int) -> int | None:
        """Count ``n`` more active jobs for ``tenant`` if that keeps it within ``limit``, atomically
        (concurrent submits cannot overshoot); None when it would not. Returns the count before."""
        ok, active = self._reserve(keys=[tenant_key(tenant)], args=[n, limit])
        return int(active) if ok else None

    def release(self, tenant: str, n: int) -> None:
        """Give back reserved slots that did not become jobs."""
        if n:
            self.r.hincrby(tenant_key(tenant), "active", -n)

    def create(self, msg: JobMessage, *, reserved: bool = False) -> bool:
        """Write the queued record. Returns False when it exists already (idempotent submit).

        ``reserved``: the tenant's active count already holds this job (``reserve``); when the
        record turns out to exist already, the slot is given back."""
        key = job_key(msg.job_id)
        fields = self._fields(msg)
        with self.r.pipeline() as p:
            p.hsetnx(key, "status", JobStatus.QUEUED.value)
            created = p.execute()[0]
        if not created:
            if reserved and msg.tenant:
                self.release(msg.tenant, 1)
            return False
        with self.r.pipeline() as p:
            p.hset(key, mapping=fields)
            # Queue position and the per-tenant active count; the transition script undoes both.
            p.zadd(queued_key(msg.request.model), {key: msg.submitted_at})
            if msg.tenant and not reserved:
                p.hincrby(tenant_key(msg.tenant), "active", 1)
            self._index(p, msg)
            p.execute()
        job_submitted(msg.request.model, msg.tenant)
        return True

    @staticmethod
    def _index(p: Any, msg: JobMessage) -> None:
        """Listing (per tenant, per batch) and retention entries for one job, in pipeline ``p``."""
        member = index_member(msg.submitted_at, msg.job_id)
        p.zadd(tenant_jobs_key(msg.tenant), {member: 0})
        if msg.batch_id:
            p.zadd(batch_index_key(msg.batch_id), {member: 0})
        p.zadd(ALL_JOBS_KEY, {msg.job_id: msg.submitted_at})

    @staticmethod
    def _fields(msg: JobMessage) -> dict[str, str]:
        return {
            "status": JobStatus.QUEUED.value, "created_at": repr(msg.submitted_at),
            "model": msg.request.model, "request": msg.request.model_dump_json(),
            "batch_id": msg.batch_id or "", "tenant": msg.tenant or "",
            "custom_id": msg.request.custom_id or "", "attempts": "0",
            # the signed nonce of its messages: a worker drops a message with another (jobs/signing.py)
            **({"nonce": msg.nonce} if msg.nonce else {}),
            # the whole queue payload, so a lost message can be published again (worker/sweep.py)
            "message": msg.model_dump_json(),
            **({"lineage": msg.lineage.model_dump_json()} if msg.lineage else {}),
        }

    def queued_before(self, model: str, before: float, limit: int = 10000) -> list[str]:
        """Ids of this model's jobs still queued that were submitted before ``before``."""
        keys = self.r.zrangebyscore(queued_key(model), "-inf", before, start=0, num=limit)
        return [k.removeprefix(job_key("")) for k in keys]

    def queue_position(self, job_id: str, model: str) -> int | None:
        """0-based position among this model's queued jobs (None once it left the queue)."""
        return self.r.zrank(queued_key(model), job_key(job_id))

    def tenant_state(self, tenant: str) -> str | None:
        """``active``, ``disabled``, or None for a tenant that does not exist."""
        created, disabled = self.r.hmget(tenant_key(tenant), "created_at", "disabled")
        if created is None:
            return None
        return "disabled" if disabled == "1" else "active"

    def tenant_active(self, tenant: str) -> int:
        return int(self.r.hget(tenant_key(tenant), "active") or 0)

    def create_batch_records(self, batch_id: str, msgs: list[JobMessage], *, tenant: str | None,
                             meta: dict[str, Any] | None = None, reserved: bool = False,
                             total: int | None = None) -> None:
        """The batch and ALL its job records, atomically (MULTI/EXEC): all exist, or none does.

        The records are marked *unpublished* until ``mark_published``: a record whose message was
        never published (Redis or the producer died half-way through a batch) is found by
        ``stale_unpublished`` and ended as ``failed`` (code ``not_queued``) by ``Client.reconcile``,
        so the batch still completes and says why.
        """
        now = time.time()
        with self.r.pipeline(transaction=True) as p:
            p.hset(batch_key(batch_id), mapping={
                "total": len(msgs) if total is None else total, "done": 0, "created_at": repr(now),
                "tenant": tenant or "", "meta": json.dumps(meta or {}),
            })
            p.expire(batch_key(batch_id), self.ttl_s)
            p.zadd(tenant_batches_key(tenant), {index_member(now, batch_id): 0})
            p.zadd(ALL_BATCHES_KEY, {batch_id: now})
            self._add_batch_jobs(p, batch_id, msgs, tenant, now, reserved)
            p.execute()
        for m in msgs:
            job_submitted(m.request.model, tenant)

    def append_batch_records(self, batch_id: str, msgs: list[JobMessage], *, tenant: str | None,
                             reserved: bool = False) -> None:
        """More job records for a batch made with ``total`` set ahead (a campaign submits its cells
        in chunks, so no apply holds them all): atomically, marked unpublished like the first."""
        if not msgs:
            return
        with self.r.pipeline(transaction=True) as p:
            self._add_batch_jobs(p, batch_id, msgs, tenant, time.time(), reserved)
            p.execute()
        for m in msgs:
            job_submitted(m.request.model, tenant)

    def shrink_batch(self, batch_id: str, by: int) -> int | None:
        """Lower a batch's planned ``total`` by jobs that will never be recorded (a campaign apply
        stopped half-way); returns ``done`` when the batch is now complete, else None."""
        with self.r.pipeline(transaction=True) as p:
            p.hincrby(batch_key(batch_id), "total", -by)
            p.hget(batch_key(batch_id), "done")
            total, done = p.execute()
        return int(done or 0) if int(done or 0) >= int(total) else None

    def _add_batch_jobs(self, p: Any, batch_id: str, msgs: list[JobMessage], tenant: str | None, now: float,
                        reserved: bool) -> None:
        if msgs:
            p.rpush(batch_jobs_key(batch_id), *[m.job_id for m in msgs])
        p.expire(batch_jobs_key(batch_id), self.ttl_s)
        for m in msgs:
            key = job_key(m.job_id)
            p.hset(key, mapping={**self._fields(m), "published": "0"})
            p.zadd(queued_key(m.request.model), {key: m.submitted_at})
            p.zadd(UNPUBLISHED_KEY, {m.job_id: now})
            self._index(p, m)
        if tenant and msgs and not reserved:
            p.hincrby(tenant_key(tenant), "active", len(msgs))

    def mark_published(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        with self.r.pipeline(transaction=False) as p:
            for j in ids:
                p.hset(job_key(j), "published", "1")
            p.zrem(UNPUBLISHED_KEY, *ids)
            p.execute()

    def stale_unpublished(self, older_than_s: float, limit: int = 1000) -> list[str]:
        """Job ids recorded more than ``older_than_s`` ago whose message was never published."""
        return list(self.r.zrangebyscore(UNPUBLISHED_KEY, "-inf", time.time() - older_than_s, start=0, num=limit))

    def forget_unpublished(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if ids:
            self.r.zrem(UNPUBLISHED_KEY, *ids)

    # -- transitions -----------------------------------------------------------------------------
    def transition(self, job_id: str, to: JobStatus, allowed_from: Iterable[JobStatus],
                   **fields: Any) -> Transition:
        """Move ``job_id`` to ``to`` if its status is one of ``allowed_from``; atomic."""
        batch_id, tenant, model = self.r.hmget(job_key(job_id), "batch_id", "tenant", "model")
        keys = [job_key(job_id), batch_key(batch_id) if batch_id else "", tenant_key(tenant) if tenant else "",
                queued_key(model or ""), running_key(model or ""), FINISHED_STATS_KEY]
        argv: list[Any] = [to.value, ",".join(s.value for s in allowed_from), self.ttl_s]
        for k, v in fields.items():
            argv += [k, v if isinstance(v, str) else json.dumps(v)]
        if to in TERMINAL:
            argv += ["finished_at", repr(time.time())]
        ok, cur = self._transition(keys=keys, args=argv)
        if ok:
            done = int(cur) if cur is not None and int(cur) >= 0 else None
            self.r.publish(events_channel(job_id), to.value)
            if to in TERMINAL:  # every way a job ends passes here, in whichever process ends it
                job_finished(to.value, model or "-")
            return Transition(True, to, done)
        return Transition(False, JobStatus(cur) if cur else None, _target=to.value)

    def set_progress(self, job_id: str, step: int, total: int) -> None:
        self.r.hset(job_key(job_id), "progress", json.dumps({"step": step, "total": total}))

    def bump_attempts(self, job_id: str) -> tuple[int, int]:
        """Count a claim; returns ``(attempts, retries)`` as they stand after it."""
        with self.r.pipeline(transaction=True) as p:
            p.hincrby(job_key(job_id), "attempts", 1)
            p.hget(job_key(job_id), "retries")
            attempts, retries = p.execute()
        return int(attempts), int(retries or 0)

    def first_started(self, job_id: str) -> float:
        """When the job was first claimed (set once, on Redis's clock; its total time limit counts from here)."""
        return lua_time(self._first_started(keys=[job_key(job_id)])[0])

    def time_used(self, job_id: str) -> float:
        """Seconds since the job was first claimed (set now if it never was), on Redis's clock: the
        worker that claims it again may be another host, with another clock."""
        first, now = self._first_started(keys=[job_key(job_id)])
        return lua_time(now) - lua_time(first)

    def bump_retries(self, job_id: str) -> int:
        return int(self.r.hincrby(job_key(job_id), "retries", 1))

    # -- cancellation ----------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> None:
        self.r.set(cancel_key(job_id), "1", ex=self.ttl_s)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(cancel_key(job_id)))

    # -- reading ---------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        h = self.r.hgetall(job_key(job_id))
        if not h or "status" not in h:
            raise JobNotFound(f"no job {job_id!r}")
        return self._record(job_id, h)

    def message(self, job_id: str) -> JobMessage:
        """The job's queue payload: the copy stored with the record, or (records written before
        it was stored) one rebuilt from the record's fields."""
        raw = self.r.hget(job_key(job_id), "message")
        if raw:
            return JobMessage.model_validate_json(raw)
        rec = self.get(job_id)
        return JobMessage(job_id=job_id, batch_id=rec.batch_id, tenant=rec.tenant,
                          request=RenderRequest.model_validate(rec.request), submitted_at=rec.created_at)

    def get_many(self, job_ids: list[str]) -> list[JobRecord]:
        with self.r.pipeline() as p:
            for j in job_ids:
                p.hgetall(job_key(j))
            rows = p.execute()
        return [self._record(j, h) for j, h in zip(job_ids, rows) if h and "status" in h]

    def status(self, job_id: str) -> JobStatus | None:
        s = self.r.hget(job_key(job_id), "status")
        return JobStatus(s) if s else None

    def batch_job_ids(self, batch_id: str) -> list[str]:
        if not self.r.exists(batch_key(batch_id)):
            raise JobNotFound(f"no batch {batch_id!r}")
        return list(self.r.lrange(batch_jobs_key(batch_id), 0, -1))

    def batch_info(self, batch_id: str) -> dict[str, Any]:
        h = self.r.hgetall(batch_key(batch_id))
        if not h:
            raise JobNotFound(f"no batch {batch_id!r}")
        counts = {s.value: int(h.get(s.value, 0)) for s in TERMINAL}
        total, done = int(h["total"]), int(h.get("done", 0))
        return {
            "id": batch_id, "tenant": h.get("tenant") or None, "total": total, "done": done,
            "created_at": float(h["created_at"]), "counts": {"total": total, **counts, "pending": total - done},
            "status": "completed" if done >= total else "in_progress", "meta": json.loads(h.get("meta", "{}")),
        }

    # -- listing ---------------------------------------------------------------------------------
    def list_jobs(self, tenant: str | None, *, batch_id: str | None = None, status: JobStatus | None = None,
                  created_after: float | None = None, limit: int = 20, after: str | None = None,
                  scan_max: int = LIST_SCAN_MAX) -> tuple[list[JobRecord], str | None]:
        """A page of ``tenant``'s jobs (of one batch, when given), newest first, and the cursor of
        the next page (None at the end). ``after`` is the previous page's cursor: the page holds
        only jobs older than it, so jobs created while a client pages never shift a page.

        A status filter reads records page by page: at most ``scan_max`` index entries per call,
        so a page may hold fewer than ``limit`` jobs while the cursor still says there is more.
        """
        key = batch_index_key(batch_id) if batch_id else tenant_jobs_key(tenant)
        out: list[JobRecord] = []
        cursor, scanned = after, 0
        floor = f"({created_after:017.6f}|~" if created_after is not None else "-"
        while len(out) < limit and scanned < scan_max:
            chunk = min(max(limit - len(out), 1) * (4 if status else 1), 200, scan_max - scanned)
            members = self.r.zrevrangebylex(key, f"({cursor}" if cursor else "+", floor, start=0, num=chunk)
            if not members:
                return out, None
            records = {r.job_id: r for r in self.get_many([m.split("|", 1)[1] for m in members])}
            for member in members:
                scanned += 1
                cursor = member
                rec = records.get(member.split("|", 1)[1])
                if rec is None or rec.tenant != (tenant or None):
                    continue  # expired, deleted, or (batch index) not this tenant's
                if status is None or rec.status is status:
                    out.append(rec)
                    if len(out) >= limit:
                        break
            if len(members) < chunk and cursor == members[-1]:
                return out, None
        return out, cursor

    def list_batches(self, tenant: str | None, *, created_after: float | None = None, limit: int = 20,
                     after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of ``tenant``'s batches, newest first, and the next page's cursor (see ``list_jobs``)."""
        floor = f"({created_after:017.6f}|~" if created_after is not None else "-"
        members = self.r.zrevrangebylex(tenant_batches_key(tenant), f"({after}" if after else "+", floor,
                                        start=0, num=limit + 1)
        out = []
        for member in members[:limit]:
            try:
                out.append(self.batch_info(member.split("|", 1)[1]))
            except JobNotFound:
                continue
        return out, (members[limit - 1] if len(members) > limit else None)

    # -- retention -------------------------------------------------------------------------------
    def created_before(self, cutoff: float, limit: int = 1000) -> list[str]:
        """Ids of jobs created before ``cutoff`` (oldest first): what retention removes."""
        return list(self.r.zrangebyscore(ALL_JOBS_KEY, "-inf", f"({cutoff}", start=0, num=limit))

    def batches_created_before(self, cutoff: float, limit: int = 1000) -> list[str]:
        return list(self.r.zrangebyscore(ALL_BATCHES_KEY, "-inf", f"({cutoff}", start=0, num=limit))

    def delete(self, job_id: str, *, tombstone: bool = True) -> JobRecord | None:
        """Remove a job's record and index entries; returns what was removed (None if nothing was).

        With ``tombstone`` a later read of the id says ``deleted`` (for the retention time)
        instead of "not found". Outputs and provenance entries are the caller's (``Client.delete``).
        The tombstone also makes workers drop the job's messages (jobs/signing.py), so it lasts at
        least until its signed message expires, and is written then even without ``tombstone``.
        """
        try:
            rec = self.get(job_id)
        except JobNotFound:
            self.r.zrem(ALL_JOBS_KEY, job_id)
            return None
        expires_at = self._message_expiry(job_id)
        message_left = int(expires_at - time.time()) + 60 if expires_at is not None else 0
        member = index_member(rec.created_at, job_id)
        with self.r.pipeline(transaction=True) as p:
            p.delete(job_key(job_id), cancel_key(job_id))
            p.zrem(tenant_jobs_key(rec.tenant), member)
            if rec.batch_id:
                p.zrem(batch_index_key(rec.batch_id), member)
            p.zrem(ALL_JOBS_KEY, job_id)
            p.zrem(queued_key(rec.model), job_key(job_id))
            p.zrem(running_key(rec.model), job_key(job_id))
            p.zrem(UNPUBLISHED_KEY, job_id)
            if rec.tenant and not rec.status.terminal:
                p.hincrby(tenant_key(rec.tenant), "active", -1)
            if tombstone or message_left > 0:
                p.set(deleted_key(job_id), rec.tenant or "-",
                      ex=max(self.ttl_s if tombstone else 0, message_left))
            p.execute()
        return rec

    def _message_expiry(self, job_id: str) -> float | None:
        """The signed expiry of the job's stored message; None without one (or when unreadable:
        then the tombstone's own lifetime, ``ttl_s``, is all there is)."""
        raw = self.r.hget(job_key(job_id), "message")
        try:
            return JobMessage.model_validate_json(raw).expires_at if raw else None
        except ValueError:
            return None

    # -- idempotency keys ------------------------------------------------------------------------
    def idempotency_claim(self, tenant: str, key: str, body_digest: str, job_id: str) -> bool:
        """Claim ``key`` for ``tenant`` (True), or find it claimed by an earlier request (False)."""
        return bool(self.r.set(idem_key(tenant, key), json.dumps({"body": body_digest, "job_id": job_id}),
                               nx=True, ex=self.ttl_s))

    def idempotency_prior(self, tenant: str, key: str) -> dict[str, str] | None:
        """``{"body", "job_id"}`` of the request that holds ``key``, or None once it is released."""
        raw = self.r.get(idem_key(tenant, key))
        return json.loads(raw) if raw else None

    def idempotency_release(self, tenant: str, key: str) -> None:
        self.r.delete(idem_key(tenant, key))

    def deleted_for(self, job_id: str) -> str | None:
        """The tenant (``-`` for none) of a deleted job, while its tombstone lasts."""
        return self.r.get(deleted_key(job_id))

    def delete_batch(self, batch_id: str) -> None:
        """Remove a batch record (its jobs are deleted one by one by the caller) and its indexes."""
        h = self.r.hgetall(batch_key(batch_id))
        with self.r.pipeline(transaction=True) as p:
            if h:
                p.zrem(tenant_batches_key(h.get("tenant") or None), index_member(float(h["created_at"]), batch_id))
            p.delete(batch_key(batch_id), batch_jobs_key(batch_id), batch_index_key(batch_id))
            p.zrem(ALL_BATCHES_KEY, batch_id)
            p.execute()

    @staticmethod
    def _record(job_id: str, h: dict[str, str]) -> JobRecord:
        f = lambda k: float(h[k]) if h.get(k) else None  # noqa: E731
        return JobRecord(
            job_id=job_id, status=JobStatus(h["status"]), batch_id=h.get("batch_id") or None,
            tenant=h.get("tenant") or None, custom_id=h.get("custom_id") or None,
            model=h.get("model", ""), created_at=f("created_at") or 0.0, started_at=f("started_at"),
            finished_at=f("finished_at"), progress=json.loads(h["progress"]) if h.get("progress") else None,
            attempts=int(h.get("attempts", 0)), retries=int(h.get("retries", 0)), request=json.loads(h.get("request", "{}")),
            result=JobResult.model_validate_json(h["result"]) if h.get("result") else None,
            error=json.loads(h["error"]) if h.get("error") else None,
            lineage=json.loads(h["lineage"]) if h.get("lineage") else None,
            planned_completion=f("planned_completion"),
        )


def _translate_public(cls: type) -> None:
    for name, attr in list(vars(cls).items()):
        if callable(attr) and not name.startswith("_") and not isinstance(attr, (staticmethod, classmethod)):
            setattr(cls, name, translate_redis_errors(attr))


_translate_public(JobStore)
