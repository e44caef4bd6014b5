"""Delivery classification against a real HTTP server on loopback, with the Redis delivery log."""
from __future__ import annotations

import random
import time

import pytest
import redis as redis_lib
from standardwebhooks import Webhook

from webhooks.delivery import USER_AGENT, Deliverer, classify, HttpResult, parse_retry_after, post_event
from webhooks.events import envelope
from webhooks.signing import generate_secret
from webhooks.store import DEAD, DELIVERED, GONE, PENDING, DeliveryStore, EventRecord
from webhooks.testing import LoopbackReceiver, Received

SECRET = generate_secret()
ALLOW = ["127.0.0.1"]


@pytest.fixture
def store(redis_url: str):
    client = redis_lib.Redis.from_url(redis_url)
    yield DeliveryStore(client, 3600)
    client.close()


def record(store: DeliveryStore, url: str, event_id: str = "evt_a") -> EventRecord:
    import json

    rec = EventRecord(id=event_id, type="job.succeeded", url=url, job_id="j1", tenant="t1",
                      payload=json.dumps(envelope("job.succeeded", {"job_id": "j1"})), secrets=(SECRET,))
    assert store.create(rec)
    got = store.get(event_id)
    assert got is not None
    return got


def deliverer(store: DeliveryStore, schedule=(0, 1, 10)) -> Deliverer:
    return Deliverer(store, timeout_s=5, schedule=list(schedule), allow_hosts=ALLOW, rng=random.Random(1))


def reply(status: int, headers: dict[str, str] | None = None):
    return lambda req: (status, headers or {})


def test_2xx_is_delivered_signed_and_logged(store: DeliveryStore) -> None:
    with LoopbackReceiver(reply(204)) as r:
        rec = record(store, r.url)
        assert deliverer(store).attempt(rec).outcome == "delivered"
        req: Received = r.received[0]
    assert Webhook(SECRET).verify(req.body, req.headers)["type"] == "job.succeeded"
    assert req.headers["webhook-id"] == "evt_a" and req.headers["user-agent"] == USER_AGENT
    assert req.headers["content-type"] == "application/json"
    after = store.get("evt_a")
    assert after and after.state == DELIVERED and after.attempts == 1 and after.last_status == 204
    [log] = store.attempts("evt_a")
    assert log.status == 204 and log.outcome == "delivered" and log.latency_ms >= 0


def test_500_is_retried_then_dead_lettered_after_the_last_attempt(store: DeliveryStore) -> None:
    with LoopbackReceiver(reply(500)) as r:
        d = deliverer(store, schedule=(0, 1))
        first = d.attempt(record(store, r.url))
        assert first.outcome == "retry" and 0.5 <= first.delay_s <= 1
        rec = store.get("evt_a")
        assert rec and rec.state == PENDING and rec.next_attempt == 2
        assert d.attempt(rec).outcome == "dead"
    assert [a.status for a in store.attempts("evt_a")] == [500, 500]
    assert [r.id for r in store.dead_letters()] == ["evt_a"]
    assert store.get("evt_a").state == DEAD  # type: ignore[union-attr]


def test_redirect_is_not_followed(store: DeliveryStore) -> None:
    with LoopbackReceiver(reply(302, {"location": "http://169.254.169.254/"})) as r:
        assert deliverer(store).attempt(record(store, r.url)).outcome == "retry"
        assert len(r.received) == 1
    assert "not followed" in store.attempts("evt_a")[0].error


def test_410_gone_disables_the_endpoint_for_later_events(store: DeliveryStore) -> None:
    with LoopbackReceiver(reply(410)) as r:
        d = deliverer(store)
        assert d.attempt(record(store, r.url, "evt_1")).outcome == "gone"
        assert d.attempt(record(store, r.url, "evt_2")).outcome == "gone"
        assert len(r.received) == 1  # the second event was not attempted
    assert store.is_disabled(r.url)
    second = store.get("evt_2")
    assert second and second.state == GONE and second.attempts == 0 and "410" in second.last_error


def test_429_retry_after_is_honoured_and_capped(store: DeliveryStore) -> None:
    with LoopbackReceiver(reply(429, {"retry-after": "7"})) as r:
        decision = deliverer(store, schedule=(0, 1, 10)).attempt(record(store, r.url))
    assert decision.outcome == "retry" and decision.delay_s == 7
    capped = classify(HttpResult(503, 1, retry_after_s=10_000), 1, [0, 1, 10])
    assert capped.delay_s == 10


def test_retry_after_http_date() -> None:
    now = time.time()
    from email.utils import formatdate

    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert parse_retry_after("garbage") is None


def test_connection_refused_and_refused_target_are_classified() -> None:
    from tests.conftest import free_port

    down = post_event(f"http://127.0.0.1:{free_port()}/", "evt", b"{}", [SECRET], timeout_s=2, allow_hosts=ALLOW)
    assert down.status == 0 and "ConnectError" in down.error
    assert classify(down, 1, [0, 1]).outcome == "retry"
    refused = post_event("http://127.0.0.1:1/", "evt", b"{}", [SECRET], timeout_s=2)
    assert refused.refused and classify(refused, 1, [0, 1]).outcome == "dead"
