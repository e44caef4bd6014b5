"""Issue 10, finding 3: a render worker holding unacked messages while Redis restarts.

kombu 5.7's ``Channel.close()`` restores unacked messages through ``_connparams()``, which reads
``connection.client`` after it was released (None) and raises AttributeError: the worker exited
for good (reproduced 6/6). batchrender patches that (``jobs.celery_app``); the worker must ride
out the restart and every job must still end.
"""
from __future__ import annotations

import time

import pytest

from jobs.status import JobStatus
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(300)


def _hold_a_retry_through_a_restart(client, worker, private_redis, prompt: str, seed: int, countdown: int):
    """A job scheduled for later (how transient failures are retried), which ``worker`` takes at
    once and holds, unacknowledged, until its ETA; then Redis is killed and restarted 2 s later,
    and the worker must reconnect, not exit. Returns the job's message."""
    from jobs.names import RENDER_TASK, render_queue

    msg = client.prepare({"prompt": prompt, "width": 64, "height": 64, "steps": 2, "seed": seed})
    client.store.create(msg)
    client.app.send_task(RENDER_TASK, args=[msg.model_dump(mode="json")], task_id=msg.job_id,
                         queue=render_queue("tiny"), countdown=countdown)
    wait_for(lambda: "received" in worker.log() and msg.job_id in worker.log(), timeout=60,
             what="the worker to hold it")
    private_redis.kill()
    time.sleep(2)
    private_redis.start()
    wait_for(lambda: "Connected to redis" in worker.log().split("Connection to broker lost")[-1]
             or worker.proc.poll() is not None, timeout=60, what="the worker to reconnect or exit")
    assert worker.proc.poll() is None, f"the worker exited when Redis restarted:\n{worker.log()[-3000:]}"
    return msg


def test_worker_holding_unacked_messages_survives_a_redis_restart(br_env, private_redis, client_for,
                                                                 start_worker):
    env = {**br_env, "BATCHRENDER_REDIS_URL": private_redis.url}
    client = client_for(env)
    w = start_worker(env, queues="render.tiny")
    msg = _hold_a_retry_through_a_restart(client, w, private_redis, "a lighthouse", seed=1, countdown=15)
    rec = client.wait(msg.job_id, timeout=120)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    later = client.submit({"prompt": "after the restart", "width": 64, "height": 64, "steps": 2})
    assert client.wait(later, timeout=120).status is JobStatus.SUCCEEDED
    assert w.proc.poll() is None and "AttributeError" not in w.log()


def test_a_retry_the_closing_channel_could_not_give_back_is_given_back_once_redis_answers(
        br_env, private_redis, client_for, start_worker):
    """Redis away for longer than the close's give-back keeps trying (jobs/celery_app.py, ~20 s):
    the worker that held a retry until its ETA has lost its timer with the connection, and the
    message stayed in Redis's unacked set, held by no one, until the visibility timeout (an hour by
    default). Now the worker gives it back from a thread once Redis answers, and renders it. The
    failed give-back is injected (tests/restore_fails.py), so the outage can be 2 s."""
    env = {**br_env, "BATCHRENDER_REDIS_URL": private_redis.url}
    client = client_for(env)
    w = start_worker(env, queues="render.tiny", app="tests.restore_fails")
    msg = _hold_a_retry_through_a_restart(client, w, private_redis, "a lighthouse after the outage", seed=8,
                                          countdown=5)
    rec = client.wait(msg.job_id, timeout=120)
    assert rec.status is JobStatus.SUCCEEDED and rec.attempts == 1, rec.to_dict()
    assert "gave back 1 message(s) held when the broker connection dropped" in w.log()


def test_a_late_give_back_moves_only_what_the_closed_channel_still_holds(private_redis):
    """jobs.celery_app.give_back_held, on real kombu channels: a message still held as the closed
    channel left it goes back on its queue, once; one that kombu's visibility timeout already put
    back and another worker now holds (the same delivery tag, a newer delivery) is left alone."""
    from kombu import Connection

    from jobs.celery_app import give_back_held
    from worker.sweep import UNACKED_KEY

    with Connection(private_redis.url) as a, Connection(private_redis.url) as b, \
            Connection(private_redis.url, transport_options={"visibility_timeout": 3600}) as restorer:
        queue = a.SimpleQueue("give-back-probe")
        queue.put({"n": 1})
        queue.put({"n": 2})
        first = a.default_channel.basic_get("give-back-probe", no_ack=False)
        second = a.default_channel.basic_get("give-back-probe", no_ack=False)
        lost_at = time.time()  # the connection drops here; both are still the channel's
        qos = a.default_channel.qos
        r = a.default_channel.client
        assert r.llen("give-back-probe") == 0 and r.hlen(UNACKED_KEY) == 2
        # The second was delivered over an hour ago: kombu's visibility timeout puts it back (any
        # worker does it) and worker B takes it.
        r.zadd(qos.unacked_index_key, {second.delivery_tag: lost_at - 7200})
        restorer.default_channel.qos.restore_visible(num=10)
        assert r.hlen(UNACKED_KEY) == 1 and r.llen("give-back-probe") == 1
        time.sleep(0.01)  # B's delivery is after the loss
        again = b.default_channel.basic_get("give-back-probe", no_ack=False)
        assert again.delivery_tag == second.delivery_tag and again.payload == {"n": 2}
        assert give_back_held(qos, first.delivery_tag, lost_at) is True
        assert give_back_held(qos, second.delivery_tag, lost_at) is False, "worker B's now"
        assert give_back_held(qos, first.delivery_tag, lost_at) is False, "gone: back once"
        assert r.llen("give-back-probe") == 1 and r.hexists(UNACKED_KEY, second.delivery_tag)
        assert a.default_channel.basic_get("give-back-probe", no_ack=True).payload == {"n": 1}


def test_a_failed_ack_frees_the_prefetch_slot_so_the_consumer_keeps_consuming(private_redis, monkeypatch):
    """Found by benchmarks/chaos.py: Redis dropped the connection just as a worker acknowledged a
    message; kombu's ack raised before freeing the prefetch slot, Celery only logged "Couldn't
    ack", and with one message in hand per process the worker never asked Redis for another
    (alive, connected, idle, its queue growing). Here the failure is injected at that exact
    point, on a real kombu Redis channel: Redis is down while the message is acknowledged."""
    import jobs.celery_app as celery_app
    from jobs.settings import Settings

    monkeypatch.setattr(celery_app, "ACK_RETRY_S", 1.0, raising=False)
    app = celery_app.make_app(Settings(), private_redis.url)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.basic_qos(0, 1, False)  # one message in hand, as the workers run
        queue = conn.SimpleQueue("ack-probe", channel=channel)
        queue.put({"n": 1})
        queue.put({"n": 2})
        first = queue.get(timeout=5)
        assert not channel.qos.can_consume(), "the slot is taken until the ack"
        private_redis.kill()
        try:
            first.ack()  # Redis is gone: the removal from its unacked index fails
        except conn.connection_errors:
            pass  # what Celery does too: it logs "Couldn't ack" and carries on
        assert channel.qos.can_consume(), "the prefetch slot was never freed: the consumer would stall here"
        private_redis.start()

        def next_message():  # the first read finds the connection Redis dropped, as a worker's would
            try:
                return queue.get(timeout=1)
            except (queue.Empty, *conn.connection_errors):
                return None

        second = wait_for(next_message, timeout=30, what="the next message after Redis came back")
        assert second.payload == {"n": 2}
        second.ack()
