"""Redis (broker and job store) failing under the producer: clear errors, batches that still end.

Issue 10, findings 6 and 7: with Redis down the producer raised raw ``redis.ConnectionError``;
a batch cut short by a Redis failure stayed ``in_progress`` forever (15 of 60 queued). Each test
kills a private, persisted redis-server (SIGKILL) at the exact point that matters and starts it
again on the same port and data.
"""
from __future__ import annotations

import pytest

from jobs.errors import BatchIncomplete, BrokerUnavailable
from jobs.status import JobStatus

pytestmark = pytest.mark.timeout(240)
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
def outage_env(br_env, private_redis):
    # fifo: these tests cut Redis off between published messages (fair share publishes at dispatch).
    return {**br_env, "BATCHRENDER_REDIS_URL": private_redis.url, "BATCHRENDER_BATCH_PUBLISH_GRACE_S": "0",
            "BATCHRENDER_SCHEDULER": "fifo"}


@pytest.fixture
def outage_client(outage_env, settings_for):
    from producer.client import Client

    c = Client(settings_for(outage_env))
    yield c
    c.close()


def test_producer_with_redis_down_raises_broker_unavailable(outage_client, private_redis):
    job = outage_client.submit({"prompt": "a kettle", **SMALL})
    private_redis.kill()
    with pytest.raises(BrokerUnavailable, match="Redis is unavailable"):
        outage_client.submit({"prompt": "a teapot", **SMALL})
    with pytest.raises(BrokerUnavailable):
        outage_client.status(job)
    with pytest.raises(BrokerUnavailable):
        outage_client.submit_batch([{"prompt": "a cup", **SMALL}])
    private_redis.start()
    assert outage_client.status(job).status is JobStatus.QUEUED  # the job survived in the AOF


def test_batch_cut_short_by_a_redis_failure_completes_once_redis_is_back(outage_client, outage_env,
                                                                           private_redis, start_worker):
    app = outage_client.app
    real_send = app.send_task
    sent = []

    def send_then_die(*args, **kw):
        if len(sent) == 5:  # Redis dies after the 5th message was published
            private_redis.kill()
        result = real_send(*args, **kw)
        sent.append(kw.get("task_id"))
        return result

    app.send_task = send_then_die
    with pytest.raises(BatchIncomplete) as e:
        outage_client.submit_batch([{"prompt": f"item {i}", "seed": i, **SMALL} for i in range(20)])
    app.send_task = real_send
    err = e.value
    assert err.queued == sent and len(err.queued) == 5, "the caller learns exactly which jobs were queued"
    assert len(err.not_queued) == 15 and not set(err.queued) & set(err.not_queued)
    assert "5 of 20 jobs were queued" in err.message

    private_redis.start()
    start_worker(outage_env)
    info = outage_client.wait_batch(err.batch_id, timeout=180)  # reconciles the 15 left behind
    assert info["status"] == "completed" and info["total"] == 20
    assert info["counts"]["succeeded"] == 5 and info["counts"]["failed"] == 15
    for job_id in err.not_queued:
        rec = outage_client.status(job_id)
        assert rec.status is JobStatus.FAILED and rec.error["code"] == "not_queued" and rec.error["retryable"]
    for job_id in err.queued:
        assert outage_client.status(job_id).status is JobStatus.SUCCEEDED


def test_batch_refused_before_any_record_leaves_nothing_behind(outage_client, private_redis):
    """Redis down before the batch is written: refused as unavailable, nothing recorded. Since the
    model registry lives in Redis (issue 25), the refusal can come before a batch id is made
    (plain BrokerUnavailable); when it comes later, it names the batch and its unqueued jobs."""
    private_redis.kill()
    with pytest.raises(BrokerUnavailable) as e:
        outage_client.submit_batch([{"prompt": f"item {i}", **SMALL} for i in range(3)])
    private_redis.start()
    if isinstance(e.value, BatchIncomplete):
        assert e.value.queued == [] and len(e.value.not_queued) == 3
        from jobs.errors import JobNotFound

        with pytest.raises(JobNotFound):
            outage_client.batch(e.value.batch_id)
    else:
        r = outage_client.store.r
        assert not list(r.scan_iter("br:batch*")) and not list(r.scan_iter("br:job:*"))


def test_cli_with_redis_down_exits_75_and_says_so(outage_env, private_redis):
    from click.testing import CliRunner

    from producer.cli import cli

    private_redis.kill()
    out = CliRunner().invoke(cli, ["submit", "a kettle", "--size", "64x64"], env=outage_env)
    assert out.exit_code == 75, out.output  # EX_TEMPFAIL: try again later
    assert "Redis is unavailable" in out.stderr and "Traceback" not in out.output
