"""Find queued jobs whose task message no longer exists anywhere, and publish it again.

A job's message can vanish while its record still says ``queued``: Redis dropped a connection
while a retry was being published, or a worker died in kombu's window between popping a message
(BRPOP) and recording it as unacknowledged. Nothing would ever take such a job: it is stuck. The
chaos suite (benchmarks/chaos.py) found one in 320 jobs.

Render workers run this sweep themselves, one at a time (a Redis lock), every
``BATCHRENDER_JOB_SWEEP_EVERY_S``: jobs queued for longer than ``BATCHRENDER_JOB_SWEEP_OVERDUE_S``
whose id is neither in their model's queue nor in the transport's unacknowledged set (messages a
worker holds, ETA retries included) nor waiting in a tenant's lane (jobs/fairshare.py) get a new message, built from the job record, after a
second look a moment later. A message that was only in flight is harmless: the claim step
makes a second copy of an ended job a no-op. Jobs of a batch that were never published belong
to ``Client.reconcile`` and are left alone.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterable

from jobs.celery_app import publish_render
from jobs.clock import redis_now
from jobs.names import KEY_PREFIX, render_queue
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


def sweep_lost_jobs(app: Any, store: JobStore, overdue_s: float, recheck_s: float = 1.0) -> list[str]:
    """Publish a new message for each overdue queued job that has none. Returns their ids."""
    r = store.r
    # Submission times are the producers' clocks; Redis's is the one every sweeping worker shares.
    before = redis_now(r) - overdue_s
    candidates: dict[str, str] = {}  # job id -> model
    for key in r.scan_iter(match=f"{KEY_PREFIX}queued:*", count=100):
        model = key.removeprefix(f"{KEY_PREFIX}queued:")
        for job_id in store.queued_before(model, before):
            candidates[job_id] = model
    if not candidates:
        return []
    queues = {render_queue(m) for m in candidates.values()}
    present = message_ids(r, queues)
    if present is None:
        log.warning("job sweep skipped: more than %d messages queued", MAX_MESSAGES)
        return []
    suspects = waiting_elsewhere(r, [j for j in candidates if j not in present], overdue_s)
    if not suspects:
        return []
    time.sleep(recheck_s)  # a message popped just now is in the unacked set by the second look
    present = message_ids(r, queues) or set()
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
    if sent:
        log.warning("job sweep re-sent %d lost job message(s): %s", len(sent), ", ".join(sent[:10]))
    return sent


def maybe_sweep_lost_jobs(app: Any, store: JobStore, every_s: float, overdue_s: float) -> list[str]:
    """Run ``sweep_lost_jobs`` if no worker ran one in the last ``every_s`` seconds."""
    if not take_turn(store.r, LOCK_KEY, every_s):
        return []
    return sweep_lost_jobs(app, store, overdue_s)
