"""The Celery app, configured from Settings. JSON only; late acks; one job in hand per process."""
from __future__ import annotations

from celery import Celery

from jobs.names import WEBHOOK_QUEUE
from jobs.settings import Settings


def patch_kombu_released_connection() -> None:
    """Work around a kombu 5.7 Redis-transport bug that made workers exit when Redis restarted.

    When the broker connection drops, Celery closes it; ``Channel.close()`` restores the
    channel's unacknowledged messages (ETA-held retries, batched jobs) through a fresh Redis
    pool built by ``_connparams()``, which reads ``connection.client`` after the connection was
    released (None): ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which no
    error handler expects, so the worker exited for good. The patch keeps the channel's last good
    parameters and uses them then, retrying the connection for about 20 s (Redis is restarting),
    so the messages are back in their queue at once. If it has none, or Redis stays down, the
    error is a Redis ``ConnectionError``, which Celery's close path ignores: the messages stay in
    Redis's unacked set and come back after the visibility timeout. Tested by
    tests/integration/test_redis_restart.py.
    """
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "batchrender_patched", False):
        return

    def _connparams(self, asynchronous=False):
        cache = self.__dict__.setdefault("_batchrender_connparams", {})
        if self.connection.client is None:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry

            cached = cache.get(asynchronous) or cache.get(not asynchronous)
            if cached is None:
                raise redis.exceptions.ConnectionError("broker connection already released")
            # Redis is usually restarting right now: keep trying for ~20 s so the messages go
            # back to their queue at once instead of after the visibility timeout.
            return {**cached, "retry": Retry(ExponentialBackoff(cap=2.0, base=0.2), 14),
                    "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]}
        params = original(self, asynchronous=asynchronous)
        cache[asynchronous] = dict(params)
        return params

    _connparams.batchrender_patched = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams


def make_app(settings: Settings, broker_url: str | None = None) -> Celery:
    """Build the Celery app. ``broker_url`` defaults to the configured or embedded Redis."""
    patch_kombu_released_connection()
    if broker_url is None:
        from jobs.embedded import redis_url_for

        broker_url = redis_url_for(settings, start=False)
    app = Celery("batchrender", broker=broker_url, backend=broker_url, set_as_current=False)
    transport = {
        # Must exceed the longest render (hard limit), or a job still running is delivered again.
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu sweeps for abandoned (unacked) messages every interval*throttle seconds (100 s by
        # default); scan on every tick so a killed worker's job is back soon after the timeout.
        "unacked_restore_interval": max(1, min(60, settings.visibility_timeout_s // 20)),
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        # Never pickle: a pickle payload is code execution for anyone who can write to Redis.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A job is acknowledged only once its outputs are stored; a killed worker's job is redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.hard_time_limit_s,
        task_default_queue=WEBHOOK_QUEUE,
        task_create_missing_queues=True,
        result_expires=settings.record_ttl_s,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app
