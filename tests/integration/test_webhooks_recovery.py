"""Issue 10, finding 1: a webhook event stayed ``pending`` forever after its worker died.

The dead worker's claim outlived the redelivered message, which then returned "duplicate" and
was acknowledged; nothing swept pending events whose message was lost. Real webhook worker,
real Redis, a loopback receiver.
"""
from __future__ import annotations

import json
import time

import pytest
import redis as redis_lib

from jobs.celery_app import make_app
from tests.workers import wait_for
from webhooks import events as ev
from webhooks.store import DELIVERED, PENDING, DeliveryStore, EventRecord
from webhooks.tasks import _send, enqueue_event

pytestmark = pytest.mark.timeout(180)
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def wh(br_env, settings_for, redis_url, start_worker):
    env = {**br_env, "BATCHRENDER_WEBHOOK_SECRET": SECRET, "BATCHRENDER_WEBHOOK_SCHEDULE_S": "0,0.5,1",
           "BATCHRENDER_WEBHOOK_TIMEOUT_S": "3"}
    settings = settings_for(env)
    client = redis_lib.Redis.from_url(redis_url)
    yield env, settings, client, DeliveryStore(client, settings.record_ttl_s), make_app(settings)
    client.close()


def test_an_attempt_claimed_by_a_dead_worker_is_run_once_the_claim_ends(wh, start_worker):
    from webhooks.testing import LoopbackReceiver

    env, settings, client, store, app = wh
    with LoopbackReceiver() as rx:
        # A worker took attempt 1 (its claim runs 6 more seconds), then died: its message is
        # redelivered (here: sent again) while the claim still holds.
        rec = EventRecord(id="evt_held_1", type=ev.JOB_SUCCEEDED, url=rx.url, job_id="job_h",
                          payload=json.dumps(ev.envelope(ev.JOB_SUCCEEDED, ev.job_finished("job_h", "succeeded"))),
                          secrets=(SECRET,), claimed_until=time.time() + 6, scheduled_attempt=1)
        assert store.create(rec)
        _send(app, rec, 0.0, 60)
        start_worker(env, queues="webhooks", app="webhooks.app")
        wait_for(lambda: store.get(rec.id).state == DELIVERED, timeout=90, what="the held attempt to run")
        assert len(rx.received) == 1 and rx.received[0].headers["webhook-id"] == rec.id


def test_a_pending_event_whose_message_was_lost_is_swept_and_delivered(wh, start_worker):
    from click.testing import CliRunner

    from producer.cli import cli
    from webhooks.testing import LoopbackReceiver

    env, settings, client, store, app = wh
    with LoopbackReceiver() as rx:
        # Recorded, but the worker died before sending its task message: no message exists.
        rec = EventRecord(id="evt_lost_1", type=ev.JOB_FAILED, url=rx.url, job_id="job_l",
                          payload=json.dumps(ev.envelope(ev.JOB_FAILED, ev.job_finished("job_l", "failed"))),
                          secrets=(SECRET,), not_before=time.time() - 5)
        assert store.create(rec)
        start_worker(env, queues="webhooks", app="webhooks.app")
        time.sleep(2)
        assert store.get(rec.id).state == PENDING and rx.received == []
        out = CliRunner().invoke(cli, ["webhooks", "sweep", "--overdue", "0"], env=env)
        assert out.exit_code == 0 and "re-sent 1" in out.output, out.output
        wait_for(lambda: store.get(rec.id).state == DELIVERED, timeout=60, what="the swept event to arrive")
        assert [r.headers["webhook-id"] for r in rx.received] == [rec.id]


def test_settings_refuse_a_visibility_timeout_inside_the_webhook_lease(settings_for, br_env):
    from jobs.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="webhook claim lease"):
        settings_for({**br_env, "BATCHRENDER_SOFT_TIME_LIMIT_S": "20", "BATCHRENDER_HARD_TIME_LIMIT_S": "21",
                      "BATCHRENDER_VISIBILITY_TIMEOUT_S": "40", "BATCHRENDER_WEBHOOK_TIMEOUT_S": "15"})


def test_enqueue_indexes_the_event_as_pending_until_it_is_delivered(wh, start_worker):
    from webhooks.testing import LoopbackReceiver

    env, settings, client, store, app = wh
    with LoopbackReceiver() as rx:
        event_id = enqueue_event(app, settings, client, url=rx.url, secret=SECRET, event_type=ev.JOB_STARTED,
                                 data=ev.job_started("job_p"), job_id="job_p")
        assert event_id in store.pending_ids()
        start_worker(env, queues="webhooks", app="webhooks.app")
        wait_for(lambda: store.get(event_id).state == DELIVERED, timeout=60, what="delivery")
        assert event_id not in store.pending_ids()


def test_an_idle_fleet_still_sweeps_a_lost_event(wh, start_worker):
    """Found by benchmarks/chaos.py: the sweep ran only when a worker started or delivered
    something, so once traffic stopped an event whose message was lost stayed pending forever.
    Workers now sweep on their own every ``webhook_sweep_every_s``."""
    from webhooks.testing import LoopbackReceiver

    env, settings, client, store, app = wh
    env = {**env, "BATCHRENDER_WEBHOOK_SWEEP_EVERY_S": "1", "BATCHRENDER_WEBHOOK_SWEEP_OVERDUE_S": "1"}
    with LoopbackReceiver() as rx:
        start_worker(env, queues="webhooks", app="webhooks.app")  # its start-up sweep finds nothing
        # Recorded after the worker started, and its message lost: no start-up sweep, no traffic.
        rec = EventRecord(id="evt_idle_1", type=ev.JOB_SUCCEEDED, url=rx.url, job_id="job_i",
                          payload=json.dumps(ev.envelope(ev.JOB_SUCCEEDED, ev.job_finished("job_i", "succeeded"))),
                          secrets=(SECRET,), not_before=time.time())
        assert store.create(rec)
        wait_for(lambda: store.get(rec.id).state == DELIVERED, timeout=60, what="the idle worker to sweep it")
        assert [r.headers["webhook-id"] for r in rx.received] == [rec.id]
