"""Claims, leases and schedules that one host writes to Redis and another compares are on Redis's
clock (jobs/clock.py), not each caller's. Two "hosts" here are two callers in one process whose
``time.time`` is moved by a few seconds (or an hour) while each one calls; the right answer is the
one a single clock gives. Real Redis (the test db)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import redis as redis_lib

from jobs.clock import redis_now
from jobs.names import job_key
from jobs.schemas import JobMessage, RenderRequest

REAL_TIME = time.time


@pytest.fixture
def r(redis_url):
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@contextmanager
def host_clock(monkeypatch, offset_s: float):
    """The calling host's clock is ``offset_s`` off (every ``time.time()`` in the process, while inside)."""
    monkeypatch.setattr(time, "time", lambda: REAL_TIME() + offset_s)
    try:
        yield
    finally:
        monkeypatch.setattr(time, "time", REAL_TIME)


def test_redis_now_is_the_servers_clock_whatever_the_hosts(r, monkeypatch):
    before = redis_now(r)
    with host_clock(monkeypatch, 3600):
        now = redis_now(r)
    assert before <= now <= redis_now(r)
    assert abs(now - REAL_TIME()) < 60, "this test's Redis runs on this machine's clock"


# -- webhooks ---------------------------------------------------------------------------------------
def test_a_delivery_slot_is_not_freed_by_a_host_whose_clock_runs_ahead(r, monkeypatch):
    """One slot, 2 s leases. A host 3 s behind takes it; a host 3 s ahead must not see that lease
    as ended (on the callers' clocks it ended a second ago, and a second delivery ran)."""
    from webhooks.store import DeliveryStore

    behind, ahead = DeliveryStore(r), DeliveryStore(r)
    with host_clock(monkeypatch, -3):
        assert behind.acquire_slot("acme", 1, 2.0, "evt_a:1:1")
    with host_clock(monkeypatch, +3):
        assert not ahead.acquire_slot("acme", 1, 2.0, "evt_b:1:1"), "the tenant's one slot was taken twice"
    behind.release_slot("acme", "evt_a:1:1")
    with host_clock(monkeypatch, +3):
        assert ahead.acquire_slot("acme", 1, 2.0, "evt_b:1:1")


def test_a_claimed_attempt_is_not_taken_over_by_a_host_whose_clock_runs_ahead(r, monkeypatch):
    from webhooks.store import DeliveryStore, EventRecord

    behind, ahead = DeliveryStore(r), DeliveryStore(r)
    behind.create(EventRecord(id="evt_c", type="job.succeeded", url="http://127.0.0.1:9/", payload="{}"))
    t0 = redis_now(r)
    with host_clock(monkeypatch, -3):
        held = behind.claim("evt_c", 1, 1, 2.0)
    with host_clock(monkeypatch, +3):
        assert ahead.claim("evt_c", 1, 1, 2.0) is None, "a live claim was taken over: the attempt ran twice"
    assert held is not None and t0 + 2.0 <= held.claimed_until <= redis_now(r) + 2.0, "a lease on Redis's clock"
    assert behind.claim("evt_c", 1, 2, 2.0) is None and behind.claim("evt_c", 2, 1, 2.0) is None  # wrong message


def test_an_attempt_is_scheduled_on_redis_clock(r, monkeypatch):
    """``not_before`` is compared by whichever worker runs the next attempt."""
    from webhooks.delivery import Deliverer
    from webhooks.signing import generate_secret
    from webhooks.store import DeliveryStore, EventRecord

    store = DeliveryStore(r)
    store.create(EventRecord(id="evt_d", type="job.succeeded", url="http://127.0.0.1:9/", payload="{}",
                             secrets=(generate_secret(),)))
    rec = store.claim("evt_d", 1, 1, 30.0)
    deliverer = Deliverer(store, timeout_s=1.0, schedule=[0, 10, 10], allow_hosts=["127.0.0.1"])
    before = redis_now(r)
    with host_clock(monkeypatch, -3600):
        assert deliverer.attempt(rec).outcome == "retry"  # nothing listens on port 9
    after = store.get("evt_d")
    assert before + 5 <= after.not_before <= redis_now(r) + 10, "next attempt due on Redis's clock"
    assert before <= after.updated_at <= redis_now(r), "the sweep compares updated_at on another host"


# -- jobs ---------------------------------------------------------------------------------------------
def message(job_id: str) -> JobMessage:
    return JobMessage(job_id=job_id, submitted_at=REAL_TIME(),
                      request=RenderRequest(prompt="a lamp", model="tiny", seed=1, width=64, height=64, steps=2,
                                            guidance_scale=7.5))


def test_a_jobs_time_limit_counts_on_redis_clock_across_hosts(r, monkeypatch, tmp_path):
    """The first claim (and its time) on a host an hour behind; the next claim on a host with the
    right time must not find the job an hour over its 30-minute limit."""
    from jobs.settings import Settings
    from jobs.store import JobStore
    from worker.runner import JobRunner

    store = JobStore(r)
    msg = message("job_clock1")
    store.create(msg)
    runner = JobRunner(SimpleNamespace(settings=Settings(home=tmp_path, job_time_limit_s=1800), store=store))
    with host_clock(monkeypatch, -3600):
        runner.recheck(msg)  # the first claim sets the job's first start
    runner.recheck(msg)  # raised TimeLimitExceeded ("rendering for 3600 s") on the callers' clocks
    first = float(r.hget(job_key(msg.job_id), "first_started_at"))
    assert abs(first - redis_now(r)) < 60


def test_a_dispatched_job_is_not_resent_by_a_sweep_on_a_host_whose_clock_runs_ahead(r, monkeypatch, tmp_path):
    """``dispatched`` is written by the worker that moved the job out of its lane and read by the
    job sweep on any worker: a job dispatched a moment ago is "being published", not lost."""
    from jobs import fairshare
    from jobs.settings import Settings
    from jobs.store import JobStore
    from worker.sweep import waiting_elsewhere

    store = JobStore(r)
    msg = message("job_clock2")
    store.create(msg)
    fairshare.enqueue(r, msg, Settings(home=tmp_path))
    with host_clock(monkeypatch, -600):
        [(job_id, _score, _raw)] = fairshare.Dispatcher(None, r).pop("tiny", want=1)
    assert job_id == msg.job_id
    with host_clock(monkeypatch, +60):
        assert waiting_elsewhere(r, [job_id], overdue_s=120) == [], "re-sent as lost a job dispatched just now"
    assert waiting_elsewhere(r, [job_id], overdue_s=0) == [job_id]  # overdue at once: a suspect
