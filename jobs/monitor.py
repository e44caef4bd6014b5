"""The Celery app that Flower runs with: ``celery -A jobs.monitor:app flower`` (or ``batchrender flower``).

Flower needs only the broker; this app is configured like every other process's (JSON only, the
same Redis) and imports no worker code, so the monitor host needs neither torch nor models.
"""
from __future__ import annotations

from jobs.celery_app import make_app
from jobs.settings import Settings

settings = Settings.from_env()
app = make_app(settings)
