"""Find jobs whose task message no longer exists anywhere, and publish it again.

A job's message can vanish while its record still says ``queued``: Redis dropped a connection
while a retry was being published, or a worker died in kombu's window between popping a message
(BRPOP) and recording it as unacknowledged. Nothing would ever take such a job: it is stuck. The
chaos suite (benchmarks/chaos.py) found one in 320 jobs.

It can vanish while the record says ``running`` too (the chaos suite, FIFO, found one): the job
was claimed by a worker that then died, so its record keeps that claim, and then the message
that would have redelivered it was lost. Two ways, both in kombu's Redis transport:

- a worker pops the redelivered message (BRPOP, or a gatherer's ``basic_get``: RPOP) and dies
  (SIGKILL, out of memory) before its next command records it as unacknowledged;
- a message the visibility timeout put back while its first holder still had it keeps its
  delivery tag, so the first holder's late ack deletes the *second* holder's unacknowledged
  entry; the second holder then dies.

Render workers run this sweep themselves, one at a time (a Redis lock), every
``BATCHRENDER_JOB_SWEEP_EVERY_S``: jobs queued for longer than ``BATCHRENDER_JOB_SWEEP_OVERDUE_S``
whose id is neither in their model's queue nor in the transport's unacknowledged set (messages a
worker holds, ETA retries included) nor waiting in a tenant's lane (jobs/fairshare.py) get a new
message, built from the job record, after a second look a moment later. A message that was only
in flight is harmless: the claim step makes a second copy of an ended job a no-op. Jobs of a
batch that were never published belong to ``Client.reconcile`` and are left alone.

A running job is re-sent the same way only when the worker that claimed it is gone: its claim
lease (jobs/leases.py, on Redis's clock) has not been renewed for the overdue time (at least
``leases.MIN_STALE_S``), on both looks, the second one after a lease renewal period. A live
worker renews its lease from a thread while it renders, so a job a live worker is rendering is
never re-sent, message or not. The job goes back to ``queued`` (its record says why:
``worker_lost``, retryable) and gets one message; the next claim counts the dead worker's claim
as a worker loss (jobs/retry.py), so a job whose losses are used up ends ``failed`` as
``worker_lost`` there instead of rendering again.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterable

from jobs import leases
from jobs.celery_app import publish_render
from jobs.clock import redis_now
from jobs.names import KEY_PREFIX, job_key, render_queue
from jobs.periodic import take_turn
from jobs.status import JobStatus
from jobs.store import JobStore

log = logging.getLogger(__name__)
LOCK_KEY = f"{KEY_PREFIX}job-sweep-lock"
#: kombu's Redis transport: the hash of messages delivered and not yet acknowledged.
UNACKED_KEY = "unacked"
#: kombu's priority sub-queues (``priority_steps`` 0, 3, 6, 9) use these key suffixes.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
#: Messages read per LRANGE/HSCAN page, and the most one sweep reads before it gives up.
PAGE, MAX_MESSAGES = 1000, 200_000


def _task_id(raw: str) -> str | None:
    try:
        return json.loads(raw)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None


def message_ids(r: Any, queues: Iterable[str]) -> set[str] | None:
    """Task ids of every message in ``queues`` and in the unacknowledged set (None: too many)."""
    ids: set[str] = set()
    seen = 0
    for q in queues:
        for key in (q + s for s in PRIORITY_SUFFIXES):
            for start in range(0, MAX_MESSAGES, PAGE):
                page = r.lrange(key, start, start + PAGE - 1)
                seen += len(page)
                ids.update(i for i in map(_task_id, page) if i)
                if len(page) < PAGE:
                    break
            if seen >= MAX_MESSAGES:
                return None
    for _, raw in r.hscan_iter(UNACKED_KEY, count=PAGE):
        try:
            ids.add(json.loads(raw)[0]["headers"]["id"])
        except (ValueError, KeyError, TypeError, IndexError):
            pass
    return ids


def waiting_elsewhere(r: Any, job_ids: list[str], overdue_s: float) -> list[str]:
    """``job_ids`` less those that wait in a tenant's lane (jobs/fairshare.py: no message yet, by
    design) or left it less than ``overdue_s`` ago (their message is being published)."""
    if not job_ids:
        return []
    with r.pipeline(transaction=False) as p:
        for j in job_ids:
            p.hmget(f"{KEY_PREFIX}job:{j}", "lane", "dispatched")
        got = p.execute()
    now = redis_now(r)  # ``dispatched`` is Redis's time; this sweep may run on another host
    out = []
    for j, (lane, dispatched) in zip(job_ids, got):
        if lane == "1":
            continue
        try:
            if dispatched and now - float(dispatched) < overdue_s:
                continue
        except ValueError:
            pass
        out.append(j)
    return out


def stranded_running(r: Any, stale_s: float, limit: int = 10000) -> dict[str, tuple[str, str]]:
    """Running jobs claimed over ``stale_s`` ago whose claiming worker's lease has expired (and
    not waiting in a lane): job id -> (model, worker). Their messages are not looked at here."""
    now = redis_now(r)
    found: dict[str, str] = {}
    prefix = f"{KEY_PREFIX}running:"
    for key in r.scan_iter(match=f"{prefix}*", count=100):
        for member in r.zrangebyscore(key, "-inf", now - stale_s, start=0, num=limit):
            found[member.removeprefix(job_key(""))] = key.removeprefix(prefix)
    if not found:
        return {}
    with r.pipeline(transaction=False) as p:
        for j in found:
            p.hmget(job_key(j), "status", "worker", "lane")
        rows = dict(zip(found, p.execute()))
    owned = {j: row[1] or "" for j, row in rows.items() if row[0] == JobStatus.RUNNING.value and row[2] != "1"}
    gone = leases.expired(r, owned.values(), stale_s)
    return {j: (found[j], w) for j, w in owned.items() if w in gone}


def _requeue_stranded(app: Any, store: JobStore, job_id: str, worker: str, stale_s: float) -> bool:
    """Back to ``queued`` (only from ``running``) and one new message. A publish that fails leaves
    it queued with no message: the next sweep re-sends it as a lost queued job."""
    error = {"code": "worker_lost", "retryable": True, "message": (
        f"the worker that claimed it ({worker or 'unknown'}) stopped renewing its claim lease over {stale_s:.0f} s "
        "ago and left no message for the job; sent again by the job sweep")}
    if not store.transition(job_id, JobStatus.QUEUED, [JobStatus.RUNNING], error=error).ok:
        return False
    publish_render(app, store.message(job_id))
    return True


def sweep_lost_jobs(app: Any, store: JobStore, overdue_s: float, recheck_s: float = 1.0,
                    lease_recheck_s: float | None = None) -> list[str]:
    """Publish a new message for each overdue queued job that has none, and for each running job
    that has none and whose worker is gone (see the module doc). Returns their ids.
    ``lease_recheck_s``: the wait before the second look when running jobs are suspect (default:
    a lease renewal period and a half, so a lease renewed meanwhile is seen)."""
    r = store.r
    # Submission times are the producers' clocks; Redis's is the one every sweeping worker shares.
    before = redis_now(r) - overdue_s
    candidates: dict[str, str] = {}  # job id -> model
    for key in r.scan_iter(match=f"{KEY_PREFIX}queued:*", count=100):
        model = key.removeprefix(f"{KEY_PREFIX}queued:")
        for job_id in store.queued_before(model, before):
            candidates[job_id] = model
    stale_s = max(overdue_s, leases.MIN_STALE_S)
    running = stranded_running(r, stale_s)
    if not candidates and not running:
        return []
    queues = {render_queue(m) for m in [*candidates.values(), *(m for m, _ in running.values())]}
    present = message_ids(r, queues)
    if present is None:
        log.warning("job sweep skipped: more than %d messages queued", MAX_MESSAGES)
        return []
    suspects = waiting_elsewhere(r, [j for j in candidates if j not in present], overdue_s)
    stranded = [j for j in running if j not in present]
    if not suspects and not stranded:
        return []
    wait = recheck_s
    if stranded:
        wait = max(recheck_s, leases.RENEW_EVERY_S * 1.5 if lease_recheck_s is None else lease_recheck_s)
    time.sleep(wait)  # a message popped just now is in the unacked set by the second look
    present = message_ids(r, queues)
    if present is None:
        log.warning("job sweep skipped: more than %d messages queued", MAX_MESSAGES)
        return []
    sent = []
    for job_id in suspects:
        status, published = r.hmget(f"{KEY_PREFIX}job:{job_id}", "status", "published")
        if status != JobStatus.QUEUED.value or job_id in present:
            continue  # taken, ended, or expired meanwhile
        if published == "0":
            continue  # a batch record never published: Client.reconcile ends it as not_queued
        msg = store.message(job_id)
        publish_render(app, msg)
        sent.append(job_id)
    still = stranded_running(r, stale_s) if stranded else {}
    for job_id in stranded:
        # Still running under the same dead claim, its lease still expired, still no message.
        if job_id in present or still.get(job_id) != running[job_id]:
            continue
        if _requeue_stranded(app, store, job_id, running[job_id][1], stale_s):
            sent.append(job_id)
    if sent:
        log.warning("job sweep re-sent %d lost job message(s): %s", len(sent), ", ".join(sent[:10]))
    return sent


def maybe_sweep_lost_jobs(app: Any, store: JobStore, every_s: float, overdue_s: float) -> list[str]:
    """Run ``sweep_lost_jobs`` if no worker ran one in the last ``every_s`` seconds."""
    if not take_turn(store.r, LOCK_KEY, every_s):
        return []
    return sweep_lost_jobs(app, store, overdue_s)
