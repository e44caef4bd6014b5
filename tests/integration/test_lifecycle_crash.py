"""Issue 10, finding 2: a worker that dies between a job's terminal transition and the enqueue
of its events. The redelivered message finds the job ended; it must send the job's terminal
event and ``batch.completed`` then (and nothing twice), instead of skipping silently."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from jobs.status import JobStatus
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(240)
SMALL = {"width": 64, "height": 64, "steps": 2}


def test_events_lost_to_a_crash_after_the_terminal_transition_are_sent_on_redelivery(
        br_env, client_for, start_worker, tmp_path):
    from webhooks.testing import LoopbackReceiver

    env = {**br_env, "BATCHRENDER_WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
           "BATCHRENDER_WEBHOOK_SCHEDULE_S": "0,0.5,1,1", "BATCHRENDER_WEBHOOK_TIMEOUT_S": "5",
           "BATCHRENDER_SOFT_TIME_LIMIT_S": "20", "BATCHRENDER_HARD_TIME_LIMIT_S": "21",
           "BATCHRENDER_VISIBILITY_TIMEOUT_S": "40"}
    client = client_for(env)
    with LoopbackReceiver() as rx:
        sub = client.submit_batch([{"prompt": "a lighthouse", "seed": 1, "webhook": rx.url, **SMALL}])
        [job] = sub.job_ids
        crashing = start_worker({**env, "BR_TEST_CRASH_AT": "after_terminal_transition",
                                 "BR_TEST_CRASH_MARK": str(tmp_path / "crashed")},
                                queues="render.tiny", app="tests.crash_points")
        wait_for(lambda: crashing.proc.poll() is not None, timeout=120, what="the worker to die at the crash point")
        assert client.status(job).status is JobStatus.SUCCEEDED  # recorded as ended ...
        start_worker(env, queues="webhooks")
        types = lambda: [json.loads(r.body)["type"] for r in rx.received]  # noqa: E731
        assert "job.succeeded" not in types()  # ... but its events never left

        # The message comes back after the visibility timeout; a healthy worker takes it.
        start_worker(env, queues="render.tiny")
        wait_for(lambda: {"job.succeeded", "batch.completed"} <= set(types()), timeout=150,
                 what="job.succeeded and batch.completed after redelivery")
        by_id = Counter(r.headers["webhook-id"] for r in rx.received)
        events = {json.loads(r.body)["type"] for r in rx.received}
        assert events == {"job.started", "job.succeeded", "batch.completed"} or \
            events == {"job.succeeded", "batch.completed", "job.started"}
        assert len(by_id) == len(events), "one webhook-id per event"
        rec = client.status(job)
        assert rec.status is JobStatus.SUCCEEDED and rec.attempts == 1, "not rendered again"


def test_a_job_that_keeps_losing_its_worker_ends_as_worker_lost(br_env, client_for, start_worker, tmp_path):
    """Worker losses have their own budget (jobs/retry.py): past it the job ends, visibly, instead
    of being handed to the next worker forever (a job that runs workers out of memory would take
    the whole fleet down one worker at a time). The workers die after storing the job's image, so
    the job that fails has left objects that no record names: failing deletes them."""
    env = {**br_env, "BATCHRENDER_MAX_WORKER_LOSSES": "1", "BATCHRENDER_WEBHOOK_TIMEOUT_S": "1",
           "BATCHRENDER_SOFT_TIME_LIMIT_S": "20", "BATCHRENDER_HARD_TIME_LIMIT_S": "21",
           "BATCHRENDER_VISIBILITY_TIMEOUT_S": "32"}
    client = client_for(env)
    job = client.submit({"prompt": "a lighthouse", "seed": 2, **SMALL})
    crashing = {**env, "BR_TEST_CRASH_AT": "after_store", "BR_TEST_CRASH_MARK": str(tmp_path / "crashed"),
                "BR_TEST_CRASH_TIMES": "5"}
    out = Path(env["BATCHRENDER_STORAGE_URL"].removeprefix("file://"))
    left = lambda: sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and job in str(p))  # noqa: E731
    for n in (1, 2):  # two workers die holding the job; each time its message comes back
        w = start_worker(crashing, queues="render.tiny", app="tests.crash_points")
        wait_for(lambda: w.proc.poll() is not None, timeout=120, what=f"worker {n} to die after storing")
        assert client.status(job).attempts == n
        assert left(), "the dead worker stored the job's image before dying"
    start_worker(crashing, queues="render.tiny", app="tests.crash_points")  # would die again
    rec = client.wait(job, timeout=150)
    assert rec.status is JobStatus.FAILED, rec.to_dict()
    assert rec.error["code"] == "worker_lost" and rec.error["retryable"] is False, rec.error
    assert "BATCHRENDER_MAX_WORKER_LOSSES=1" in rec.error["message"]
    assert (rec.attempts, rec.retries) == (3, 0)
    assert not (tmp_path / "crashed.3").exists(), "the third worker ended the job instead of dying"
    # The worker deletes them after recording the failure and sending its events (worker/runner.py
    # ``_end``), so the record can read FAILED a moment before they are gone.
    wait_for(lambda: left() == [], timeout=60, what="the failed job's leftovers to be deleted")
