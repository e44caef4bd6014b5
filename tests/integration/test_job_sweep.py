"""Issue 10, found by benchmarks/chaos.py: a job whose task message was lost stayed ``queued``
forever (Redis dropped a connection while a retry was published). Workers now sweep for queued
jobs with no message anywhere and publish it again (worker/sweep.py)."""
from __future__ import annotations

import pytest

from jobs.names import render_queue
from jobs.status import JobStatus

pytestmark = pytest.mark.timeout(180)
SMALL = {"width": 64, "height": 64, "steps": 2}


def test_the_sweep_republishes_only_what_is_missing(br_env, client_for):
    from worker.sweep import sweep_lost_jobs

    client = client_for({**br_env, "BATCHRENDER_SCHEDULER": "fifo"})  # both messages published at once
    present = client.submit({"prompt": "a lighthouse", "seed": 1, **SMALL})
    lost = client.submit({"prompt": "a harbour", "seed": 2, **SMALL})
    r = client.store.r
    queue = render_queue("tiny")
    # Lose one message, as a dropped connection or a worker killed mid-pop does.
    for raw in r.lrange(queue, 0, -1):
        if lost in raw:
            r.lrem(queue, 1, raw)
    assert sweep_lost_jobs(client.app, client.store, overdue_s=3600, recheck_s=0) == [], "not overdue yet"
    assert sweep_lost_jobs(client.app, client.store, overdue_s=0, recheck_s=0) == [lost]
    assert sorted(j for j in (present, lost) if any(j in raw for raw in r.lrange(queue, 0, -1))) == sorted([present, lost])
    assert sweep_lost_jobs(client.app, client.store, overdue_s=0, recheck_s=0) == [], "each message exists once"


def test_with_fair_share_jobs_waiting_in_a_lane_are_not_lost_but_a_dispatched_one_is(br_env, client_for):
    """jobs/fairshare.py: a job in its tenant's lane has no message by design; one that left the
    lane (dispatched) and whose message then vanished is re-sent once overdue."""
    from jobs import fairshare
    from worker.sweep import sweep_lost_jobs

    client = client_for({**br_env, "BATCHRENDER_SCHEDULER": "fair"})
    first = client.submit({"prompt": "a lighthouse", "seed": 1, **SMALL}, tenant="ten_a")
    waiting = client.submit({"prompt": "a harbour", "seed": 2, **SMALL}, tenant="ten_a")
    r = client.store.r
    queue = render_queue("tiny")
    assert [first in raw for raw in r.lrange(queue, 0, -1)] == [True], "one ready message; the rest wait"
    assert r.zscore(fairshare.lane_key("tiny", "ten_a"), waiting) is not None
    r.delete(queue)  # the dispatched job's message is lost
    assert sweep_lost_jobs(client.app, client.store, overdue_s=3600, recheck_s=0) == [], "dispatched just now"
    r.hset(f"br:job:{first}", "dispatched", "1")  # long ago
    assert sweep_lost_jobs(client.app, client.store, overdue_s=0, recheck_s=0) == [first]
    assert any(first in raw for raw in r.lrange(queue, 0, -1))
    assert not any(waiting in raw for raw in r.lrange(queue, 0, -1)), "the waiting job is left in its lane"


def test_a_batch_record_never_published_is_left_to_reconcile(br_env, client_for):
    from jobs.schemas import JobMessage, RenderRequest
    from worker.sweep import sweep_lost_jobs

    client = client_for(br_env)
    msg = JobMessage(job_id="job_unpub1", batch_id="bat_unpub1", request=RenderRequest(prompt="a lighthouse", **SMALL))
    client.store.create_batch_records("bat_unpub1", [msg], tenant=None)  # the producer died here
    assert sweep_lost_jobs(client.app, client.store, overdue_s=0, recheck_s=0) == []


def test_a_worker_sweeps_and_renders_a_job_whose_message_was_lost(br_env, client_for, start_worker):
    env = {**br_env, "BATCHRENDER_JOB_SWEEP_EVERY_S": "1", "BATCHRENDER_JOB_SWEEP_OVERDUE_S": "1"}
    client = client_for(env)
    start_worker(env, queues="render.tiny")
    # Recorded, message lost: nothing else will ever take it.
    msg = client.prepare({"prompt": "a lighthouse", "seed": 3, **SMALL})
    assert client.store.create(msg)
    rec = client.wait(msg.job_id, timeout=120)
    assert rec.status is JobStatus.SUCCEEDED and rec.attempts == 1, rec.to_dict()
