"""The Celery app that ``celery worker`` runs (``-A worker.app``): render tasks, webhook delivery."""
from __future__ import annotations

import logging

from jobs.celery_app import make_app
from jobs.settings import Settings
from webhooks.tasks import register as register_webhooks
from worker.tasks import register

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
settings = Settings.from_env()
app = make_app(settings)
register(app, settings)
register_webhooks(app, settings)
