"""End to end with a REAL ``celery worker`` process: the receiver is down (connection refused),
then answers 503, then comes back; every event arrives, verifies, with one webhook-id per event."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis as redis_lib
from standardwebhooks import Webhook

from jobs.celery_app import make_app
from jobs.settings import Settings
from tests.conftest import TEST_KEYS, free_port
from webhooks import events as ev
from webhooks.signing import generate_secret
from webhooks.store import DELIVERED, DeliveryStore
from webhooks.tasks import enqueue_event, replay
from webhooks.testing import LoopbackReceiver, Received

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = "0,0.5,1,1,1,1"


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def worker(redis_url: str, tmp_path):
    env = {**os.environ, "BATCHRENDER_REDIS_URL": redis_url, "BATCHRENDER_HOME": str(tmp_path),
           "BATCHRENDER_WEBHOOK_SCHEDULE_S": SCHEDULE, "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
           "BATCHRENDER_WEBHOOK_TIMEOUT_S": "5", "PYTHONPATH": str(ROOT), **TEST_KEYS}
    celery = Path(sys.executable).parent / "celery"
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([str(celery), "-A", "webhooks.app:app", "worker", "-P", "solo", "-Q", "webhooks",
                             "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("BATCHRENDER_")})
    try:
        yield settings, tmp_path / "worker.log"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_events_survive_a_receiver_outage_with_stable_ids(worker, redis_url: str) -> None:
    settings, worker_log = worker
    secret = generate_secret()
    client = redis_lib.Redis.from_url(redis_url)
    store = DeliveryStore(client, settings.record_ttl_s)
    app = make_app(settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    calls = [(ev.JOB_STARTED, ev.job_started("j1", "b1"), "j1"),
             (ev.JOB_SUCCEEDED, ev.job_finished("j1", "succeeded", "b1", outputs=["k/0.png"]), "j1"),
             (ev.BATCH_COMPLETED, ev.batch_completed("b1", {"succeeded": 1}), "j1")]
    ids = [enqueue_event(app, settings, client, url=url, secret=secret, event_type=t, data=d, job_id=j,
                         batch_id="b1", tenant="acme", event_filter=None) for t, d, j in calls]
    assert all(ids) and len(set(ids)) == 3
    # Redelivered job: the same events again create nothing and send nothing.
    assert [enqueue_event(app, settings, client, url=url, secret=secret, event_type=t, data=d, job_id=j,
                          batch_id="b1", tenant="acme", event_filter=None) for t, d, j in calls] == ids

    # Down: every event must see a refused connection before the receiver starts listening.
    wait_for(lambda: all(store.attempts(i) for i in ids), 60,
             "a first (refused) attempt of every event:\n" + worker_log.read_text())
    seen: set[str] = set()
    lock = threading.Lock()

    def flaky(req: Received) -> tuple[int, dict[str, str]]:
        with lock:  # first request per event: 503, then 200
            first = req.headers["webhook-id"] not in seen
            seen.add(req.headers["webhook-id"])
        return (503, {}) if first else (200, {})

    with LoopbackReceiver(flaky, port=port) as receiver:
        wait_for(lambda: all(store.get(i).state == DELIVERED for i in ids), 60,  # type: ignore[union-attr]
                 "every event delivered:\n" + worker_log.read_text())
        for i in ids:
            got = [r for r in receiver.received if r.headers["webhook-id"] == i]
            assert len(got) == 2  # one 503, one 200; same id on both
            for r in got:
                assert Webhook(secret).verify(r.body, r.headers)["type"] in {t for t, _, _ in calls}
            outcomes = [(a.status, a.outcome) for a in store.attempts(i)]
            assert outcomes[0] == (0, "retry") and outcomes[-2:] == [(503, "retry"), (200, "delivered")]

        # Replay: same webhook-id again, fresh timestamp.
        before = len(receiver.received)
        replay(app, settings, client, ids[1])
        wait_for(lambda: len(receiver.received) > before, 30, "the replayed delivery")
        again = receiver.received[-1]
        assert again.headers["webhook-id"] == ids[1]
        assert Webhook(secret).verify(again.body, again.headers)["type"] == ev.JOB_SUCCEEDED
    client.close()
