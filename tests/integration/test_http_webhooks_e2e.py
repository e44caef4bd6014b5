"""Done-when for webhooks over HTTP: jobs submitted through the API (real uvicorn server), rendered by a
real celery worker, their events signed with the tenant's secret and delivered to a real loopback
receiver that goes down mid-run and comes back on the same port. Every event arrives, verifiable
with the ``standardwebhooks`` library, exactly once per ``webhook-id`` after deduplication.
"""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tests.conftest import free_port
from tests.workers import wait_for
from tests.integration.test_api_http_client import ApiServer

pytestmark = pytest.mark.timeout(180)

N_JOBS = 3


def worker_app_delivers_webhooks() -> bool:
    """Whether ``celery -A worker.app`` registers the webhook delivery task (checked in a child process,
    since importing ``worker.app`` configures logging)."""
    import subprocess
    import sys

    code = "import worker.app as w; from jobs.names import WEBHOOK_TASK as t; print(t in w.app.tasks)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() == "True"


def test_worker_app_registers_webhook_delivery():
    """``start_worker(env, queues="render.tiny,webhooks")`` runs ``worker.app``: it must deliver webhooks,
    or a worker consuming the webhooks queue drops every delivery as an unregistered task."""
    assert worker_app_delivers_webhooks()


def start_render_and_webhook_workers(start_worker, env) -> None:
    start_worker(env, queues="render.tiny,webhooks")


def test_every_event_is_delivered_once_per_id_across_a_receiver_outage(br_env, settings_for, redis_url,
                                                                     start_worker):
    import redis
    from standardwebhooks.webhooks import Webhook

    from producer.api import create_app
    from producer.http_client import HttpClient
    from producer.tenants import Tenants
    from webhooks.testing import LoopbackReceiver

    env = {**br_env, "BATCHRENDER_WEBHOOK_SCHEDULE_S": "0,0.5,1,1,1,2,2,2",
           "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    alice = Tenants(r, settings_for(env)).create("alice")
    app = create_app(settings_for(env))
    port = free_port()
    received = []

    first = LoopbackReceiver(port=port).__enter__()
    try:
        with ApiServer(app) as server, HttpClient(server.url, alice.api_key) as api:
            # Slow enough (tens of steps) that later jobs start and end while the receiver is down.
            batch = api.create_batch([{"prompt": f"a teapot {i}", "seed": i, "custom_id": f"t{i}", "steps": 12} for i in range(N_JOBS)],
                                     webhook=first.url)
            assert batch["accepted"] == N_JOBS, batch
            start_render_and_webhook_workers(start_worker, env)

            wait_for(lambda: first.received, 60, "the first event")
            first.__exit__()  # the receiver goes away while jobs run
            received += first.received

            def failed_attempts():
                return [a for d in api.deliveries() for a in d["attempt_log"] if a["outcome"] != "delivered"]

            wait_for(failed_attempts, 30, "a delivery attempt to fail against the stopped receiver", every=0.1)
            time.sleep(0.5)
            second = LoopbackReceiver(port=port).__enter__()  # back, on the same port
            try:
                wait_for(lambda: api.get_batch(batch["id"])["status"] == "completed", 90, "the batch to complete",
                         every=0.2)
                expected = 2 * N_JOBS + 1

                def all_delivered():
                    events = api.deliveries()
                    assert not [e for e in events if e["state"] in ("dead", "gone")], events
                    return len(events) == expected and all(e["state"] == "delivered" for e in events)

                wait_for(all_delivered, 60, "every event to be delivered", every=0.2)
                events = api.deliveries()
            finally:
                second.__exit__()
            received += second.received
            assert {res["status"] for res in api.batch_results(batch["id"])} == {"succeeded"}
    finally:
        app.state.client.close()
        r.close()

    assert any(a["outcome"] != "delivered" for e in events for a in e["attempt_log"]), "the outage was not seen"
    verifier = Webhook(alice.webhook_secret)
    by_id: dict[str, list[bytes]] = {}
    for req in received:
        payload = verifier.verify(req.body, req.headers)  # raises on a bad signature or stale timestamp
        assert payload["type"] == json.loads(req.body)["type"]
        by_id.setdefault(req.headers["webhook-id"], []).append(req.body)
    for event_id, bodies in by_id.items():  # duplicates (redeliveries) carry the same id and body
        assert len(set(bodies)) == 1, event_id
    unique = {event_id: json.loads(bodies[0]) for event_id, bodies in by_id.items()}
    assert set(unique) == {e["id"] for e in events}
    assert Counter(e["type"] for e in unique.values()) == {"job.started": N_JOBS, "job.succeeded": N_JOBS,
                                                           "batch.completed": 1}
    job_ids = {res["data"]["job_id"] for res in unique.values() if res["type"] == "job.succeeded"}
    assert len(job_ids) == N_JOBS
    completed = next(e for e in unique.values() if e["type"] == "batch.completed")
    assert completed["data"]["batch_id"] == batch["id"] and completed["data"]["counts"]["succeeded"] == N_JOBS
    assert sorted(i["custom_id"] for i in completed["data"]["items"]) == [f"t{i}" for i in range(N_JOBS)]
