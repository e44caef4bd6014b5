"""A Celery app for webhook-only workers: ``celery -A webhooks.app:app worker -Q webhooks``.

Built from ``Settings.from_env()`` at import, as Celery's ``-A`` requires; creating the app opens
no connection (the Redis client is made lazily in the worker process).
"""
from __future__ import annotations

from jobs.celery_app import make_app
from jobs.settings import Settings
from webhooks.job_events import link_refresher
from webhooks.tasks import register

settings = Settings.from_env()
app = make_app(settings)
deliver = register(app, settings, refresh=link_refresher(settings))
