"""A Celery app for webhook-only workers: ``celery -A webhooks.app:app worker -Q webhooks``.

Built from ``Settings.from_env()`` at import, as Celery's ``-A`` requires; creating the app opens
no connection (the Redis client is made lazily in the worker process).
"""
from __future__ import annotations

from celery.signals import after_setup_logger

from jobs.celery_app import make_app
from jobs.logs import celery_json_hook, configure_logging
from jobs.settings import Settings
from webhooks.job_events import link_refresher
from webhooks.tasks import register

settings = Settings.from_env()
configure_logging(settings.log_format)
after_setup_logger.connect(celery_json_hook(settings.log_format), weak=False)
app = make_app(settings)
deliver = register(app, settings, refresh=link_refresher(settings))
