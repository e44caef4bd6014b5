"""Issue 26, hostile: a signed render message captured from the broker and published again.

Before: a replay after ``DELETE`` rebuilt the deleted job's record and rendered it again (the
worker rebuilds a missing record from a verified message). Now a signed message carries an
expiry and its record's nonce, and a deleted job's tombstone outlives its messages
(jobs/signing.py): a real worker drops the replay, logs and counts it, and renders nothing.
"""
from __future__ import annotations

import time

import pytest

from jobs.status import JobStatus
from tests.workers import stored_files, wait_for

pytestmark = pytest.mark.timeout(240)
SMALL = {"width": 64, "height": 64, "steps": 2}


def _dropped(r) -> dict[str, int]:
    from jobs.signing import DROPPED_KEY

    return {k: int(v) for k, v in r.hgetall(DROPPED_KEY).items()}


def test_a_message_replayed_after_delete_does_not_bring_the_job_back(br_env, client_for, start_worker, tenants):
    """Submit, capture the raw broker message (the kombu envelope on ``render.tiny``), render,
    DELETE, push the captured bytes back onto the queue with a real worker running."""
    from jobs.names import render_queue

    env = {**br_env, "BATCHRENDER_SCHEDULER": "fifo"}  # the producer publishes straight to render.tiny
    client = client_for(env)
    r = client.store.r
    alice = tenants.create("alice")
    job_id = client.submit({"prompt": "a teapot", "seed": 5, **SMALL}, tenant=alice.tenant_id)
    captured = r.lrange(render_queue("tiny"), 0, -1)
    assert len(captured) == 1 and job_id in captured[0], "the signed message, as the broker holds it"

    worker = start_worker(env, queues="render.tiny")
    assert client.wait(job_id, timeout=120).status is JobStatus.SUCCEEDED
    client.delete(job_id)
    assert client.store.status(job_id) is None and stored_files(env) == []

    r.lpush(render_queue("tiny"), captured[0])  # the replay
    wait_for(lambda: _dropped(r).get("deleted"), timeout=60, what="the worker to drop the replayed message")
    time.sleep(1.0)  # a worker that took it anyway would be writing the record back now
    assert client.store.status(job_id) is None, "the deleted job came back"
    assert stored_files(env) == [], "the replay rendered and stored images"
    assert r.llen(render_queue("tiny")) == 0 and not r.hlen("unacked"), "the replay was consumed and acked"
    assert "dropping render message" in worker.log() and "the job was deleted" in worker.log()
    assert client.store.deleted_for(job_id) == alice.tenant_id
    assert r.ttl(f"br:deleted:{job_id}") >= client.settings.message_ttl_s, "the tombstone outlives the message"


def test_stale_messages_are_refused_by_expiry_nonce_and_age(client, tenants):
    """The checks one by one, against real Redis: an expired message (its queued job fails as
    message_expired), a message of another record of the id, a message signed before messages
    carried an expiry whose record is gone; one signed before still verifies while its record lives."""
    from jobs.signing import CheckedMessages, StaleMessage

    failed: list[tuple[str, str]] = []
    checked = CheckedMessages(client.signer, client.store, lambda m, e: failed.append((m.job_id, e.code)), limit=3)
    alice = tenants.create("alice")

    live = client.prepare({"prompt": "a cup", "seed": 1, **SMALL}, tenant=alice.tenant_id)
    client.store.create(live)
    assert checked.verify(live) is live
    assert live.expires_at and live.nonce and client.store.r.hget(f"br:job:{live.job_id}", "nonce") == live.nonce

    expired = client.signer.sign(live.model_copy(update={"expires_at": time.time() - 1}))
    with pytest.raises(StaleMessage, match="expired"):
        checked.verify(expired)
    assert failed == [(live.job_id, "message_expired")]

    other = client.signer.sign(live.model_copy(update={"nonce": "f" * 24}))
    with pytest.raises(StaleMessage, match="nonce"):
        checked.verify(other)

    old = client.signer.sign(live.model_copy(update={"expires_at": None, "nonce": None}))
    with pytest.raises(StaleMessage, match="nonce"):
        checked.verify(old)  # the record has a nonce: its messages carry it
    client.store.r.hdel(f"br:job:{live.job_id}", "nonce")  # a record written before nonces
    assert checked.verify(old) is old, "a message signed before the fields existed, record alive"
    client.store.r.delete(f"br:job:{live.job_id}")
    with pytest.raises(StaleMessage, match="no expiry"):
        checked.verify(old)

    stripped = live.model_copy(update={"expires_at": None})  # the expiry cut out, the signature kept
    with pytest.raises(Exception, match="does not match its signature"):
        checked.verify(stripped)
    from jobs.signing import DROPPED_KEY

    counts = client.store.r.hgetall(DROPPED_KEY)
    assert counts == {"expired": "1", "nonce": "2", "no_expiry": "1", "forged": "1"}, counts
