"""The Celery app, configured from Settings. JSON only; late acks; one job in hand per process."""
from __future__ import annotations

from celery import Celery

from jobs.names import WEBHOOK_QUEUE
from jobs.settings import Settings


def make_app(settings: Settings, broker_url: str | None = None) -> Celery:
    """Build the Celery app. ``broker_url`` defaults to the configured or embedded Redis."""
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
