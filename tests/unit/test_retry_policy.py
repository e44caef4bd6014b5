"""The one retry policy (jobs/retry.py): transient retries and worker losses are separate budgets."""
from __future__ import annotations

import pytest

from jobs.retry import RetryPolicy, WorkerLost
from jobs.settings import Settings


def test_transient_retries_stop_at_the_budget():
    policy = RetryPolicy(max_retries=2)
    assert [policy.may_retry(n) for n in range(4)] == [True, True, False, False]


def test_worker_losses_do_not_eat_the_transient_budget():
    policy = RetryPolicy(max_retries=1, max_worker_losses=3)
    # Third claim of a job whose first two workers died: two losses, no retry used yet.
    assert policy.worker_losses(attempts=3, retries=0) == 2
    policy.check_claim(attempts=3, retries=0)
    assert policy.may_retry(0), "a transient error after two lost workers is still retried"
    # Claims explained by retries are not losses.
    assert policy.worker_losses(attempts=4, retries=3) == 0


def test_a_claim_past_the_loss_budget_raises_worker_lost():
    policy = RetryPolicy(max_worker_losses=1)
    policy.check_claim(attempts=2, retries=0)
    with pytest.raises(WorkerLost) as e:
        policy.check_claim(attempts=3, retries=0)
    assert e.value.code == "worker_lost" and e.value.details == {"worker_losses": 2}


def test_backoff_is_bounded_full_jitter():
    policy = RetryPolicy(backoff_base_s=2.0, backoff_cap_s=10.0)
    assert all(0 <= policy.backoff(n) <= min(10.0, 2.0 * 2**n) for n in range(12) for _ in range(20))


def test_the_policy_reads_settings():
    s = Settings.from_env({"BATCHRENDER_MAX_RETRIES": "7", "BATCHRENDER_MAX_WORKER_LOSSES": "2"})
    assert RetryPolicy.from_settings(s) == RetryPolicy(max_retries=7, max_worker_losses=2)


def test_connection_errors_of_client_libraries_are_transient():
    import redis
    from kombu.exceptions import OperationalError

    from jobs.errors import BrokerUnavailable, InvalidRequest
    from jobs.retry import transient

    for exc in (redis.exceptions.ConnectionError("Connection reset by peer"), redis.exceptions.TimeoutError("t"),
                redis.exceptions.BusyLoadingError("loading"), OperationalError("x"), ConnectionResetError(104, "r")):
        t = transient(exc)
        assert isinstance(t, BrokerUnavailable) and type(exc).__name__ in t.message
    assert transient(ValueError("a bug")) is None
    assert transient(InvalidRequest("bad")) is None
    mine = BrokerUnavailable("down")
    assert transient(mine) is mine


def test_a_connection_errors_text_stays_in_the_log_not_in_the_jobs_error(caplog):
    # issue 26: the job's error (a tenant reads it while the job waits for its retry) carried
    # redis-py's text, naming the deployment's Redis host and port.
    import logging

    import redis

    from jobs.retry import transient

    exc = redis.exceptions.ConnectionError("Error 111 connecting to redis-0.internal:6379. Connection refused.")
    with caplog.at_level(logging.INFO, logger="jobs.retry"):
        t = transient(exc)
    assert "redis-0.internal" not in t.message and "6379" not in str(t.to_dict()), t.to_dict()
    assert "redis-0.internal:6379" in caplog.text
