"""Issue 10, found by benchmarks/chaos.py: a job whose task message was lost stayed ``queued``
forever (Redis dropped a connection while a retry was published). Workers now sweep for queued
jobs with no message anywhere and publish it again (worker/sweep.py).

Issue 24, found by the chaos suite with FIFO scheduling: a job stuck ``running`` under a dead
worker's claim with no message anywhere. The sweep re-sends such a job once its worker's claim
lease (jobs/leases.py) has expired, never while a live worker renders it."""
from __future__ import annotations

import time

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


# -- running jobs whose worker is gone and whose message was lost (issue 24, chaos FIFO run) ------
def _restore_held_messages(redis_url: str) -> None:
    """What kombu does once a held message's visibility timeout has passed (every worker does it
    every few seconds): messages in the unacked set go back on their queue, marked redelivered.
    Done at once here, by kombu's own code, instead of waiting out the timeout."""
    from kombu import Connection

    with Connection(redis_url, transport_options={"visibility_timeout": 0}) as conn:
        conn.default_channel.qos.restore_visible(num=1000)


def _messages_of(r, job_id: str) -> int:
    from worker.sweep import UNACKED_KEY

    queued = sum(job_id in raw for raw in r.lrange(render_queue("tiny"), 0, -1))
    return queued + sum(job_id in raw for raw in r.hvals(UNACKED_KEY))


@pytest.mark.timeout(400)
def test_a_running_job_whose_worker_died_and_whose_message_was_lost_renders_once(
        br_env, client_for, start_worker, tmp_path):
    """The stuck state made for real: a worker claims the job and is killed; the message comes
    back and the next worker pops it and is killed before kombu records it as unacknowledged.
    The record says ``running``, under a dead worker's claim, and there is no message anywhere."""
    from tests.workers import stored_files, wait_for
    from worker.sweep import sweep_lost_jobs

    env = {**br_env, "BATCHRENDER_SCHEDULER": "fifo"}  # as in the chaos run that found it
    client = client_for(env)
    job = client.submit({"prompt": "a lighthouse at dusk", "seed": 4, **SMALL})
    r = client.store.r
    crash = {**env, "BR_TEST_CRASH_MARK": str(tmp_path / "claimed"), "BR_TEST_CRASH_AT": "after_claim"}
    first = start_worker(crash, queues="render.tiny", app="tests.crash_points")
    wait_for(lambda: first.proc.poll() is not None, timeout=120, what="the first worker to die after claiming")
    rec = client.status(job)
    assert rec.status is JobStatus.RUNNING and rec.attempts == 1 and _messages_of(r, job) == 1, rec.to_dict()

    _restore_held_messages(env["BATCHRENDER_REDIS_URL"])
    crash = {**env, "BR_TEST_CRASH_MARK": str(tmp_path / "popped"), "BR_TEST_CRASH_AT": "before_unacked"}
    second = start_worker(crash, queues="render.tiny", app="tests.crash_points")
    wait_for(lambda: second.proc.poll() is not None, timeout=120, what="the second worker to die after popping")
    rec = client.status(job)
    assert rec.status is JobStatus.RUNNING and rec.attempts == 1, rec.to_dict()
    assert _messages_of(r, job) == 0, "the message went with the second worker"
    assert sweep_lost_jobs(client.app, client.store, overdue_s=3600, recheck_s=0) == [], "not overdue yet"

    # A healthy worker's own sweep finds it once the dead worker's claim lease has expired.
    healthy = start_worker({**env, "BATCHRENDER_JOB_SWEEP_EVERY_S": "1", "BATCHRENDER_JOB_SWEEP_OVERDUE_S": "1"},
                           queues="render.tiny")
    rec = client.wait(job, timeout=150)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    assert (rec.attempts, rec.retries) == (2, 0), "the dead worker's claim and this one"
    assert len(stored_files(env)) == 1, "rendered and stored once"
    assert "job sweep re-sent 1 lost job message(s): " + job in healthy.log()
    assert sweep_lost_jobs(client.app, client.store, overdue_s=0, recheck_s=0) == [], "sent exactly once"
    # The record says succeeded before the worker acknowledges the message (late acks): wait for it.
    wait_for(lambda: _messages_of(r, job) == 0, timeout=60, what="the message to be acknowledged", every=0.2)


@pytest.mark.timeout(400)
def test_a_job_a_live_worker_renders_is_never_resent_and_is_once_that_worker_dies(
        br_env, client_for, start_worker, tmp_path):
    """No message, but its worker is alive and rendering (held at a gate): its claim lease is
    renewed, so the sweep leaves it alone. Killed, the lease expires and the job is re-sent once."""
    from jobs import leases
    from tests.workers import stored_files, wait_for
    from worker.sweep import UNACKED_KEY, sweep_lost_jobs

    gate = tmp_path / "gate"
    gate.touch()
    client = client_for(br_env)
    job = client.submit({"prompt": "a harbour at noon", "seed": 5, **SMALL})
    r = client.store.r
    slow = start_worker({**br_env, "BR_TEST_CALL_GATE": str(gate)}, queues="render.tiny", app="tests.slow_worker")
    wait_for(lambda: client.status(job).status is JobStatus.RUNNING, timeout=120, what="the job to be claimed")
    # Its message goes (a stale holder's late ack deletes it: see worker/sweep.py's module doc).
    r.delete(UNACKED_KEY, UNACKED_KEY + "_index")
    assert _messages_of(r, job) == 0
    time.sleep(leases.MIN_STALE_S + 1)  # claimed long enough ago for the sweep to look at it
    assert sweep_lost_jobs(client.app, client.store, overdue_s=0, recheck_s=0) == [], "its worker is alive"
    assert client.status(job).status is JobStatus.RUNNING

    slow.kill()
    sent = wait_for(lambda: sweep_lost_jobs(client.app, client.store, overdue_s=0, recheck_s=0, lease_recheck_s=0),
                    timeout=60, what="the dead worker's lease to expire", every=0.5)
    assert sent == [job]
    rec = client.status(job)
    assert rec.status is JobStatus.QUEUED and rec.error["code"] == "worker_lost", rec.to_dict()
    assert _messages_of(r, job) == 1
    assert sweep_lost_jobs(client.app, client.store, overdue_s=0, recheck_s=0, lease_recheck_s=0) == [], "once"

    gate.unlink()
    start_worker(br_env, queues="render.tiny")
    rec = client.wait(job, timeout=150)
    assert rec.status is JobStatus.SUCCEEDED and (rec.attempts, rec.retries) == (2, 0), rec.to_dict()
    assert len(stored_files(br_env)) == 1


def test_a_stranded_job_whose_worker_losses_are_used_up_ends_as_worker_lost(br_env, client_for, start_worker):
    """Re-sent once; the next claim counts the dead worker's claim as a loss (jobs/retry.py) and,
    past BATCHRENDER_MAX_WORKER_LOSSES, ends the job saying so instead of rendering it again."""
    from jobs import leases
    from jobs.names import job_key, running_key
    from worker.sweep import sweep_lost_jobs

    env = {**br_env, "BATCHRENDER_SCHEDULER": "fifo", "BATCHRENDER_MAX_WORKER_LOSSES": "0"}
    client = client_for(env)
    job = client.submit({"prompt": "a quiet pier", "seed": 6, **SMALL})
    r, store = client.store.r, client.store
    # Claimed long ago by a worker that is gone (it never renewed a lease here), message lost.
    assert store.transition(job, JobStatus.RUNNING, [JobStatus.QUEUED], worker="gone-host:4242").ok
    store.bump_attempts(job)
    r.zadd(running_key("tiny"), {job_key(job): float(r.time()[0]) - 600})
    r.delete(render_queue("tiny"))
    assert leases.expired(r, ["gone-host:4242"], 60) == {"gone-host:4242"}
    assert sweep_lost_jobs(client.app, store, overdue_s=0, recheck_s=0) == [job]
    start_worker(env, queues="render.tiny")
    rec = client.wait(job, timeout=150)
    assert rec.status is JobStatus.FAILED and rec.error["code"] == "worker_lost", rec.to_dict()
    assert "BATCHRENDER_MAX_WORKER_LOSSES=0" in rec.error["message"] and rec.attempts == 2


def test_a_lease_expires_when_it_is_not_renewed(redis_url):
    import redis as redis_lib

    from jobs import leases

    r = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    try:
        r.delete(leases.LEASES_KEY)
        leases.renew(r, "host-a:1")
        assert leases.expired(r, ["host-a:1", "host-b:2"], 3600) == {"host-b:2"}, "never renewed: expired"
        r.zadd(leases.LEASES_KEY, {"host-a:1": float(r.time()[0]) - 100})
        assert leases.expired(r, ["host-a:1"], 60) == {"host-a:1"}
        assert leases.expired(r, ["host-a:1"], 3600) == set()
        assert leases.expired(r, [], 0) == set()
    finally:
        r.close()
