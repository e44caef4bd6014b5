"""Fair share of render time between tenants, priorities and deadlines inside a tenant.

The one module that decides which queued job a render worker gets next (docs/scheduling.md).

With ``scheduler: fair`` a job is not published to its model's Celery queue when it is submitted:
its id waits in its tenant's *lane* (a Redis sorted set per model and tenant). A *dispatch* moves
ids from the lanes into the model's queue (``render.<model>``, the list Celery consumes) only
as workers need them, so that queue never holds more than the work a worker is about to take:
render workers top it up when their batch gatherer finds it empty (worker/batching.py) and every
``dispatch_every_s`` from a thread (an idle worker waits in Celery's BRPOP); a producer tops it up
once after each submit, so an idle fleet starts at once. Everything after the queue (Celery
messages, acks, Flower events, batching, the chaos guarantees) is unchanged: a dispatched job's
message is the signed copy stored with its record, published the one way messages are published.

Between tenants: start-time fair queueing (Goyal et al., SFQ), in one Lua script. Each tenant
has a finish tag F, the model a virtual time V; the next job comes from the tenant whose start tag
``max(V, F)`` is least, whose F then grows by the job's cost over the tenant's weight, and V
becomes that start tag. Costs are pipeline work (rows x pixels x steps), so two tenants with
weights 2:1 get 2:1 of the render time while both have work; a tenant's idle time earns no
credit (its start tag is lifted to V); the queue is work-conserving (a dispatch takes whatever
any tenant has). Inside a tenant: earliest order score first, where an ``interactive`` job's
score is its submission time, ``normal`` and ``bulk`` ones compete as if submitted
``priority_delay_*_s`` later, and a ``deliver_by`` deadline moves a job earlier (never later).
So a bulk job is never overtaken by its own tenant's interactive work submitted more than
``priority_delay_bulk_s`` after it: its wait is bounded.

Keys (``br:`` prefix): ``lane:<model>:<tenant>`` (zset job id -> order score), ``lanes:<model>``
(set of tenants with waiting jobs), ``fair:<model>`` (hash: ``v``, ``f:<tenant>``; deleted when
every lane is empty, so tags restart at 0). Job records get ``lane`` (1 while in a lane),
``cost`` and ``dispatched`` (when it left the lane: the job sweep, worker/sweep.py, re-sends a
dispatched job whose message was lost, and leaves waiting ones alone). Tenant records hold
``weight`` (``batchrender tenants set-weight``; default 1); no API route changes it.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from jobs.clock import NOW_LUA
from jobs.names import KEY_PREFIX, job_key, queued_key, render_queue, tenant_key

log = logging.getLogger(__name__)

PRIORITIES = ("interactive", "normal", "bulk")
DEFAULT_PRIORITY = "normal"
#: The lane of jobs without a tenant (CLI, Python client without one).
NO_TENANT = "-"
MAX_WEIGHT = 1000.0
#: Cost unit: one pipeline row of one megapixel for one step.
UNIT = 1_000_000.0


def lane_key(model: str, tenant: str | None) -> str:
    return f"{KEY_PREFIX}lane:{model}:{tenant or NO_TENANT}"


def lanes_key(model: str) -> str:
    return f"{KEY_PREFIX}lanes:{model}"


def state_key(model: str) -> str:
    return f"{KEY_PREFIX}fair:{model}"


def urgent_key(model: str) -> str:
    """Zset: interactive jobs of ``model`` waiting in a lane -> when they entered it. A busy
    worker looks at it between polls of its running call (worker/batching.py), so an interactive
    job does not wait for a next call that was gathered before it arrived."""
    return f"{KEY_PREFIX}urgent:{model}"


def urgent_ready_key(model: str) -> str:
    """Set: interactive jobs of ``model`` that the ordinary dispatch moved into the queue since a
    busy worker last looked (``Dispatcher.fill(urgent=True)`` counts and clears it). Such a job is
    no longer in a lane, yet a busy session that gathered its next call before it arrived would
    otherwise leave it in the queue for a call later. Short-lived: nobody looks on an idle fleet."""
    return f"{KEY_PREFIX}urgent-ready:{model}"


#: Seconds an entry of ``urgent_ready_key`` is kept when no busy worker looks.
URGENT_READY_TTL_S = 10


# -- what a job costs and where it stands in its tenant's lane ----------------------------------
def _req(request: Any) -> dict[str, Any]:
    if isinstance(request, dict):
        return request
    return request.model_dump(mode="json")


def rows_of(request: Any) -> int:
    """Pipeline rows a job renders (``jobs.callstats.request_shapes``; 1 for an unresolved one)."""
    from jobs.callstats import request_shapes

    return sum(request_shapes(_req(request)).values()) or 1


def shape_of(request: Any) -> tuple[int, int, int, str]:
    """(width, height, denoised steps, kind) of a job's main render, as callstats measures calls."""
    from jobs.callstats import request_shapes

    shapes = request_shapes(_req(request))
    return next(iter(shapes)) if shapes else (512, 512, 1, "render")


def cost_of(request: Any) -> float:
    """Render work of a job in megapixel-steps: the sum over its renders of rows x pixels x steps / 1e6."""
    from jobs.callstats import request_shapes

    shapes = request_shapes(_req(request)) or {(512, 512, 1, "render"): 1}
    return sum(rows * w * h * max(1, steps) for (w, h, steps, _kind), rows in shapes.items()) / UNIT


def priority_of(request: Any) -> str:
    given = request.get("priority") if isinstance(request, dict) else getattr(request, "priority", None)
    return given or DEFAULT_PRIORITY


def order_score(submitted_at: float, priority: str, settings: Any, deliver_by: float | None = None,
                lead_s: float = 0.0) -> float:
    """A job's place in its tenant's lane (least first): submission time, later by the priority's
    delay; a deadline moves it to ``deliver_by - lead_s`` when that is earlier."""
    delay = {"interactive": 0.0, "normal": float(settings.priority_delay_normal_s),
             "bulk": float(settings.priority_delay_bulk_s)}.get(priority, float(settings.priority_delay_normal_s))
    score = submitted_at + delay
    if deliver_by is not None:
        score = min(score, deliver_by - lead_s)
    return score


def weight(r: Any, tenant: str | None) -> float:
    if not tenant or tenant == NO_TENANT:
        return 1.0
    raw = r.hget(tenant_key(tenant), "weight")
    try:
        return float(raw) if raw else 1.0
    except ValueError:
        return 1.0


def check_weight(value: Any) -> float:
    """A tenant weight, or ValueError naming what is allowed."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"weight must be a number greater than 0 and at most {MAX_WEIGHT:g}; got {value!r}") from None
    if not (0 < w <= MAX_WEIGHT) or math.isnan(w):
        raise ValueError(f"weight must be greater than 0 and at most {MAX_WEIGHT:g}; got {value!r}")
    return w


# -- entering a lane and leaving it ---------------------------------------------------------------
def enqueue(r: Any, msg: Any, settings: Any, *, score: float | None = None, planned: float | None = None) -> None:
    """Put a recorded job's id in its tenant's lane (after its record exists: the dispatch reads the
    stored message). Atomic: lane entry, active tenant and the record's lane fields together.
    ``planned``: the completion time promised for its ``deliver_by``, kept with the record."""
    req = msg.request
    if score is None:
        score = order_score(msg.submitted_at, priority_of(req), settings, req.deliver_by)
    tenant = msg.tenant or NO_TENANT
    model = req.model
    with r.pipeline(transaction=True) as p:
        p.hset(job_key(msg.job_id), mapping={"lane": "1", "cost": repr(cost_of(req)),
                                             **({"planned_completion": repr(planned)} if planned else {})})
        p.zadd(lane_key(model, tenant), {msg.job_id: score})
        p.sadd(lanes_key(model), tenant)
        if priority_of(req) == "interactive":
            p.zadd(urgent_key(model), {msg.job_id: msg.submitted_at})
        p.execute()


#: KEYS: lanes set, fair state hash, the model's ready queue (a kombu Redis list), the urgent
#: zset, the urgent-ready set. ARGV: want (queue length to reach), limit (most to move), lane
#: prefix, job prefix, tenant prefix, urgent ('1'/'0'), the urgent-ready TTL. Returns {ready, id,
#: score, message, ...}: ``ready`` (urgent mode only, else 0) counts the interactive jobs the
#: ordinary dispatch put in the queue since the last urgent look; then the jobs moved out of their
#: lanes, in order.
#: ``dispatched`` is Redis's time (jobs/clock.py): the job sweep that compares it may run on
#: another host.
_DISPATCH = NOW_LUA + """
local urgent_only = ARGV[6] == '1'
local out = {0}
local n
if urgent_only then
  out[1] = redis.call('SCARD', KEYS[5])
  if out[1] > 0 then redis.call('DEL', KEYS[5]) end
  -- Only while the fair pick is an interactive job (cheap when there is none: one ZCARD).
  if redis.call('ZCARD', KEYS[4]) == 0 then return out end
  n = tonumber(ARGV[2])
else
  n = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - redis.call('LLEN', KEYS[3]))
end
if n <= 0 then return out end
local v = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
local moved = 0
while moved < n do
  local tenants = redis.call('SMEMBERS', KEYS[1])
  local best, best_s, best_score, best_id
  for _, t in ipairs(tenants) do
    local head = redis.call('ZRANGE', ARGV[3] .. t, 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('SREM', KEYS[1], t)
      redis.call('HDEL', KEYS[2], 'f:' .. t)
    else
      local f = tonumber(redis.call('HGET', KEYS[2], 'f:' .. t) or '0')
      local s = math.max(v, f)
      local sc = tonumber(head[2])
      if best == nil or s < best_s or (s == best_s and (sc < best_score or (sc == best_score and t < best))) then
        best, best_s, best_score, best_id = t, s, sc, head[1]
      end
    end
  end
  if best == nil then break end
  if urgent_only and not redis.call('ZSCORE', KEYS[4], best_id) then break end
  redis.call('ZREM', ARGV[3] .. best, best_id)
  if redis.call('ZREM', KEYS[4], best_id) == 1 and not urgent_only then
    redis.call('SADD', KEYS[5], best_id)
    redis.call('EXPIRE', KEYS[5], tonumber(ARGV[7]))
  end
  local jk = ARGV[4] .. best_id
  local rec = redis.call('HMGET', jk, 'status', 'cost', 'message')
  if rec[1] == 'queued' and rec[3] then
    local w = 1
    if best ~= '-' then
      w = tonumber(redis.call('HGET', ARGV[5] .. best, 'weight') or '1') or 1
      if w <= 0 then w = 1 end
    end
    local cost = tonumber(rec[2] or '1') or 1
    v = best_s
    redis.call('HSET', KEYS[2], 'f:' .. best, tostring(best_s + cost / w))
    redis.call('HSET', jk, 'lane', '0', 'dispatched', string.format('%.6f', now))
    out[#out + 1] = best_id
    out[#out + 1] = tostring(best_score)
    out[#out + 1] = rec[3]
    moved = moved + 1
  end
end
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
else
  redis.call('HSET', KEYS[2], 'v', tostring(v))
end
return out
"""


class Dispatcher:
    """Moves jobs from the lanes of a model into its Celery queue, fairly (see the module doc)."""

    def __init__(self, app: Any, r: Any) -> None:
        self.app = app
        self.r = r
        self._script = r.register_script(_DISPATCH)

    def pop(self, model: str, want: int, limit: int | None = None, *,
            urgent: bool = False) -> list[tuple[str, float, str]]:
        """Take up to ``limit`` jobs (default ``want``) out of the lanes, as long as the queue holds
        fewer than ``want`` messages: [(job id, order score, stored message)]. Marked dispatched.
        ``urgent``: regardless of the queue, only while the fair pick is an interactive job."""
        return self._pop(model, want, limit, urgent=urgent)[1]

    def _pop(self, model: str, want: int, limit: int | None = None, *,
             urgent: bool = False) -> tuple[int, list[tuple[str, float, str]]]:
        """``pop``, and (urgent) how many interactive jobs the ordinary dispatch had put in the queue
        since the last urgent look."""
        limit = want if limit is None else limit
        if limit <= 0 or (want <= 0 and not urgent):
            return 0, []
        got = self._script(keys=[lanes_key(model), state_key(model), render_queue(model), urgent_key(model),
                                 urgent_ready_key(model)],
                           args=[want, limit, f"{KEY_PREFIX}lane:{model}:", job_key(""), tenant_key(""),
                                 "1" if urgent else "0", URGENT_READY_TTL_S])
        return int(got[0]), [(got[i], float(got[i + 1]), got[i + 2]) for i in range(1, len(got), 3)]

    def fill(self, model: str, want: int, limit: int | None = None, *, urgent: bool = False) -> int:
        """Top the model's queue up to ``want`` messages (at most ``limit`` moved); returns how many
        were published, in one Redis round trip. Jobs whose messages could not be published go
        back to their lanes (all of the round trip's: a job whose message did reach the queue is
        then also in its lane, which a duplicate delivery tolerates, as it does a lost reply).
        ``urgent``: move up to ``limit`` interactive jobs the fair order would take next, however
        full the queue is (a busy worker takes them into its next call: worker/batching.py); the
        count returned then also includes the interactive jobs already waiting in the queue (moved
        there by the ordinary dispatch since the last such look), for the caller to take too."""
        from jobs.celery_app import publish_renders
        from jobs.schemas import JobMessage

        ready, moved = self._pop(model, want, limit, urgent=urgent)
        if moved:
            try:
                publish_renders(self.app, [JobMessage.model_validate_json(raw) for _id, _score, raw in moved])
            except Exception:
                self._back(model, moved)
                raise
        return len(moved) + ready

    def _back(self, model: str, items: Iterable[tuple[str, float, str]]) -> None:
        """Return jobs whose message was not published to their lanes (best effort: if Redis is
        away too, the job sweep re-sends them once they are overdue)."""
        try:
            for job_id, score, raw in items:
                tenant = json.loads(raw).get("tenant") or NO_TENANT
                with self.r.pipeline(transaction=True) as p:
                    p.zadd(lane_key(model, tenant), {job_id: score})
                    if priority_of(json.loads(raw).get("request") or {}) == "interactive":
                        p.zadd(urgent_key(model), {job_id: score})
                    p.sadd(lanes_key(model), tenant)
                    p.hset(job_key(job_id), mapping={"lane": "1"})
                    p.hdel(job_key(job_id), "dispatched")
                    p.execute()
        except Exception:  # noqa: BLE001
            log.warning("could not return undispatched jobs to their lanes; the job sweep re-sends them",
                        exc_info=True)

    def waiting(self, model: str) -> bool:
        return bool(self.r.scard(lanes_key(model)))


# -- render workers waiting for work (no hoarding: worker/batching.py hands jobs to them) ---------
#: A worker counts as idle once it has waited this long (a worker between two sessions, with work
#: in the queue, takes its next message within milliseconds; with work in the lanes, within one
#: ``dispatch_every_s`` top-up).
IDLE_GRACE_S = 1.0
#: An idle mark not renewed for this long belongs to a worker that died or stopped beating.
IDLE_STALE_S = 5.0


def idle_key(model: str) -> str:
    """Zset: render workers of ``model`` waiting for work -> since when (Redis time)."""
    return f"{KEY_PREFIX}idle:{model}"


def idle_seen_key(model: str) -> str:
    """Zset: those workers -> when each last said so (Redis time)."""
    return f"{KEY_PREFIX}idle-seen:{model}"


#: KEYS: (idle, seen) per model. ARGV: worker id, '1' idle / '0' busy. On Redis's clock.
_IDLE_BEAT = NOW_LUA + """
for i = 1, #KEYS, 2 do
  if ARGV[2] == '1' then
    redis.call('ZADD', KEYS[i], 'NX', now, ARGV[1])
    redis.call('ZADD', KEYS[i + 1], now, ARGV[1])
    redis.call('EXPIRE', KEYS[i], 3600)
    redis.call('EXPIRE', KEYS[i + 1], 3600)
  else
    redis.call('ZREM', KEYS[i], ARGV[1])
    redis.call('ZREM', KEYS[i + 1], ARGV[1])
  end
end
return 1
"""

#: KEYS: idle, seen, the model's ready queue. ARGV: this worker, grace, stale. How many other
#: workers have been idle for ``grace`` while the queue is empty (a worker that stays "idle" while
#: messages wait is not taking any: it does not count). Drops stale marks.
_IDLE_OTHERS = NOW_LUA + """
if redis.call('LLEN', KEYS[3]) > 0 then return 0 end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))) do
  redis.call('ZREM', KEYS[1], w)
  redis.call('ZREM', KEYS[2], w)
end
local n = 0
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))) do
  if w ~= ARGV[1] then
    if redis.call('ZSCORE', KEYS[2], w) then n = n + 1 else redis.call('ZREM', KEYS[1], w) end
  end
end
return n
"""


def idle_beat(r: Any, models: Iterable[str], worker: str, idle: bool) -> None:
    """Say whether ``worker`` waits for work of ``models`` (render workers, every top-up, and a
    session as it starts). An idle mark keeps the time it was first set."""
    keys = [k for m in models for k in (idle_key(m), idle_seen_key(m))]
    if keys:
        r.eval(_IDLE_BEAT, len(keys), *keys, worker, "1" if idle else "0")


def others_idle(r: Any, model: str, worker: str, grace_s: float = IDLE_GRACE_S,
                stale_s: float = IDLE_STALE_S) -> int:
    """Render workers of ``model`` other than ``worker`` that have been waiting for work for at
    least ``grace_s`` while its queue is empty."""
    return int(r.eval(_IDLE_OTHERS, 3, idle_key(model), idle_seen_key(model), render_queue(model),
                      worker, grace_s, stale_s))


# -- where a queued job stands, and when it should finish -----------------------------------------
@dataclass
class Place:
    """Jobs and render work (megapixel-steps) that go before a job, under the scheduler in use."""

    jobs_ahead: int
    work_ahead: float
    ready: int = 0


@dataclass
class _Lane:
    waiting: int
    start: float
    step: float  # head cost / weight
    head_cost: float


@dataclass
class Snapshot:
    """One read of a model's lanes and measured rates, for placing several jobs cheaply."""

    r: Any
    model: str
    scheduler: str
    v: float = 0.0
    ready: int = 0
    lanes: dict[str, _Lane] = field(default_factory=dict)
    workers: int = 0
    call_s: float | None = None
    _estimates: dict[tuple, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def read(cls, r: Any, model: str, scheduler: str) -> "Snapshot":
        from jobs import callstats

        snap = cls(r, model, scheduler)
        state = r.hgetall(state_key(model)) or {}
        snap.v = float(state.get("v") or 0.0)
        snap.ready = int(r.llen(render_queue(model)))
        tenants = sorted(r.smembers(lanes_key(model)))
        if tenants:
            with r.pipeline(transaction=False) as p:
                for t in tenants:
                    p.zcard(lane_key(model, t))
                    p.zrange(lane_key(model, t), 0, 0)
                    p.hget(tenant_key(t), "weight")
                counts = p.execute()
            heads = [counts[3 * i + 1][0] if counts[3 * i + 1] else None for i in range(len(tenants))]
            with r.pipeline(transaction=False) as p:
                for h in heads:
                    p.hget(job_key(h or "-"), "cost")
                costs = p.execute()
            for i, t in enumerate(tenants):
                n = int(counts[3 * i] or 0)
                if not n:
                    continue
                try:
                    w = float(counts[3 * i + 2] or 1.0) if t != NO_TENANT else 1.0
                except ValueError:
                    w = 1.0
                c = float(costs[i] or 1.0)
                f = float(state.get(f"f:{t}") or 0.0)
                snap.lanes[t] = _Lane(n, max(snap.v, f), c / max(w, 1e-9), c)
        snap.workers = len(callstats.live_workers(r, model))
        rate = callstats.model_rate(r, model)
        if rate["recent_calls"]:
            snap.call_s = rate["recent_seconds"] / rate["recent_calls"]
        return snap

    def place(self, tenant: str | None, score: float, cost: float, *, job_id: str | None = None) -> Place:
        """Where a job of ``tenant`` with order ``score`` and ``cost`` stands (``job_id``: it is in
        its lane already and does not count itself)."""
        tenant = tenant or NO_TENANT
        own = self.lanes.get(tenant)
        ahead_own = int(self.r.zcount(lane_key(self.model, tenant), "-inf", f"({score!r}")) if own else 0
        weight_t = (own.head_cost / own.step) if own and own.step > 0 else None
        if weight_t is None:
            weight_t = weight(self.r, tenant)
        start_own = own.start if own else self.v
        start_job = start_own + ahead_own * cost / weight_t
        jobs = self.ready + ahead_own
        work = self.ready * cost + ahead_own * cost
        for t, lane in self.lanes.items():
            if t == tenant or start_job <= lane.start or lane.step <= 0:
                continue
            k = min(lane.waiting, math.ceil((start_job - lane.start) / lane.step))
            jobs += k
            work += k * lane.head_cost
        return Place(jobs, work, self.ready)

    def estimate(self, request: Any):
        from jobs import callstats

        w, h, steps, kind = shape_of(request)
        key = (w, h, steps, kind)
        if key not in self._estimates:
            self._estimates[key] = callstats.estimate(self.r, model=self.model, width=w, height=h, steps=steps,
                                                      kind=kind)
        return self._estimates[key]

    def eta(self, request: Any, place: Place) -> dict[str, Any]:
        """Seconds until a job with this request and place should have finished, from the measured
        seconds per row of its shape (scaled by work for what goes before it), the live workers of
        the model and the call rendering now. ``eta_s`` None with ``eta_basis`` saying why."""
        est = self.estimate(request)
        if est is None:
            return {"eta_s": None, "eta_basis": f"no call of {self.model} measured yet"}
        if self.workers == 0:
            return {"eta_s": None, "eta_basis": f"no live worker serves {self.model}"}
        w, h, steps, _kind = shape_of(request)
        per_unit = est.seconds_per_row / max(1e-9, w * h * max(1, steps) / UNIT)
        own = est.seconds_per_row * rows_of(request)
        now_call = self.call_s if self.call_s is not None else own
        eta = (place.work_ahead * per_unit + own) / self.workers + now_call
        return {"eta_s": round(eta, 2), "eta_basis": (
            f"{place.jobs_ahead} job(s) ahead; {est.seconds_per_row:.3g} s per row ({est.source}, "
            f"{est.calls} call(s)); {self.workers} live worker(s)")}


_snapshots: dict[tuple[int, str, str], Snapshot] = {}
#: A view of many queued jobs (a list page) reads the lanes once per this many seconds.
SNAPSHOT_TTL_S = 0.5


def snapshot(r: Any, model: str, scheduler: str, *, fresh: bool = False) -> Snapshot:
    key = (id(r), model, scheduler)
    snap = _snapshots.get(key)
    if fresh or snap is None or time.monotonic() - snap.at > SNAPSHOT_TTL_S:
        snap = _snapshots[key] = Snapshot.read(r, model, scheduler)
        if len(_snapshots) > 256:
            _snapshots.clear()
            _snapshots[key] = snap
    return snap


def queued_place(r: Any, settings: Any, job_id: str, model: str, tenant: str | None,
                 request: dict[str, Any]) -> dict[str, Any]:
    """``queue_position``, ``eta_s``, ``estimated_completion`` (and ``eta_basis``) of a queued job."""
    fields = r.hmget(job_key(job_id), "lane", "dispatched")
    snap = snapshot(r, model, settings.scheduler)
    cost = cost_of(request)
    if fields[0] == "1":
        score = r.zscore(lane_key(model, tenant), job_id)
        if score is None:  # just dispatched
            place = Place(0, 0.0, snap.ready)
        else:
            place = snap.place(tenant, float(score), cost, job_id=job_id)
    elif fields[1]:
        place = Place(0, 0.0, snap.ready)  # in the model's queue or a worker's gatherer
    else:
        rank = r.zrank(queued_key(model), job_key(job_id))  # FIFO: submission order
        if rank is None:
            return {"queue_position": None}
        place = Place(int(rank), float(rank) * cost, snap.ready)
    out: dict[str, Any] = {"queue_position": place.jobs_ahead, **snap.eta(request, place)}
    if out["eta_s"] is not None:
        out["estimated_completion"] = round(time.time() + out["eta_s"], 2)
    return out


def plan_delivery(r: Any, settings: Any, msg: Any) -> tuple[float | None, float]:
    """(planned completion, order score) for a job about to be queued. With ``deliver_by`` set, a
    deadline in the past or one the plan cannot meet raises ``InvalidRequest`` naming the field and
    the earliest feasible time; without one, the planned completion may be None (no measurement)."""
    from datetime import datetime, timezone

    from jobs.errors import InvalidRequest

    req = msg.request
    now = time.time()
    deliver_by = req.deliver_by

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

    def refuse(message: str) -> InvalidRequest:
        return InvalidRequest(f"invalid request: deliver_by: {message}",
                              errors=[{"field": "deliver_by", "message": message}])

    past = deliver_by is not None and deliver_by <= now
    snap = snapshot(r, req.model, settings.scheduler, fresh=True)
    est = snap.estimate(req)
    own_s = est.seconds_per_row * rows_of(req) if est is not None else 0.0
    lead = own_s + (snap.call_s or own_s)
    score = order_score(msg.submitted_at, priority_of(req), settings, deliver_by, lead)
    cost = cost_of(req)
    if settings.scheduler == "fair":
        place = snap.place(msg.tenant, score, cost)
    else:
        queued = int(r.zcard(queued_key(req.model)))
        place = Place(queued, queued * cost, snap.ready)
    eta = snap.eta(req, place)
    if past:  # name the earliest feasible time where the fleet can plan one
        then = (f"the earliest feasible time is {iso(math.ceil(now + eta['eta_s']))} "
                f"({math.ceil(now + eta['eta_s'])})" if eta["eta_s"] is not None else "give a later time")
        raise refuse(f"{iso(deliver_by)} is in the past (now {iso(now)}); {then}")
    if eta["eta_s"] is None:
        if deliver_by is not None:
            raise refuse(f"cannot be planned: {eta['eta_basis']}; submit without deliver_by")
        return None, score
    planned = now + eta["eta_s"]
    if deliver_by is not None and planned > deliver_by:
        raise refuse(f"{iso(deliver_by)} cannot be met: {eta['eta_basis']}; the earliest feasible time is "
                     f"{iso(math.ceil(planned))} ({math.ceil(planned)})")
    return planned, score
