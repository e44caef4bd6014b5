"""Issue 25: webhook delivery tasks built a plain Redis client (no retry) and died when Redis went
away under them; the event then waited for the sweep (120 s by default) before anyone tried again.
Here Redis is killed while the receiver is answering the first attempt, and comes back seconds
later; the sweep is pushed out of reach, so only the task's own handling of a Redis outage (the
project's: retry, reconnect) can record the delivery. Sent once, recorded once."""
from __future__ import annotations

import threading
import time

import pytest
import redis as redis_lib

from tests.workers import wait_for

pytestmark = pytest.mark.timeout(240)


def test_redis_going_away_mid_attempt_is_ridden_out_not_left_to_the_sweep(br_env, private_redis, start_worker):
    from jobs.celery_app import make_app
    from jobs.settings import Settings
    from webhooks import events as ev
    from webhooks.signing import generate_secret
    from webhooks.store import DELIVERED, DeliveryStore
    from webhooks.tasks import enqueue_event
    from webhooks.testing import LoopbackReceiver

    env = {**br_env, "BATCHRENDER_REDIS_URL": private_redis.url, "BATCHRENDER_WEBHOOK_SCHEDULE_S": "0,0.5,1",
           "BATCHRENDER_WEBHOOK_TIMEOUT_S": "10",
           # Out of reach: no sweep may rescue the event in this test.
           "BATCHRENDER_WEBHOOK_SWEEP_OVERDUE_S": "86400", "BATCHRENDER_WEBHOOK_SWEEP_EVERY_S": "86400"}
    settings = Settings.from_env(env)
    w = start_worker(env, queues="webhooks", app="webhooks.app:app")
    restarted = threading.Event()

    def restart_later() -> None:
        time.sleep(3)
        private_redis.start()
        restarted.set()

    def answer(req):
        if not restarted.is_set() and private_redis.proc.poll() is None and len(receiver.received) == 1:
            # The request reached the receiver; Redis dies before the deliverer records the answer.
            private_redis.kill()
            threading.Thread(target=restart_later, daemon=True).start()
        return 200, {}

    with LoopbackReceiver(answer) as receiver:
        client = redis_lib.Redis.from_url(private_redis.url)
        event_id = enqueue_event(make_app(settings), settings, client, url=f"{receiver.url}/hook",
                                 secret=generate_secret(), event_type=ev.JOB_STARTED, data=ev.job_started("j1", "b1"),
                                 job_id="j1", batch_id="b1")
        client.close()
        wait_for(restarted.is_set, timeout=60, what="Redis killed mid-attempt and back")
        store = DeliveryStore(redis_lib.Redis.from_url(private_redis.url), settings.record_ttl_s)

        def delivered() -> bool:
            rec = store.get(event_id)
            return rec is not None and rec.state == DELIVERED

        wait_for(delivered, timeout=120, what=f"the event recorded as delivered:\n{w.log()[-3000:]}", every=0.2)
        assert [r.headers["webhook-id"] for r in receiver.received] == [event_id], "sent once"
        assert [a.outcome for a in store.attempts(event_id)] == ["delivered"]
        store.redis.close()
    assert w.proc.poll() is None
