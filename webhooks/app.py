"""A Celery app for webhook-only workers: ``celery -A webhooks.app:app worker -Q webhooks``.

Built from ``Settings.from_env()`` at import, as Celery's ``-A`` requires; creating the app opens
no connection (the Redis client is made lazily in the worker process). At start the worker checks
its keys (set where Redis is shared, the same as the fleet's: jobs/fleet.py) and exits with the
reason instead of leaving every event it takes pending.
"""
from __future__ import annotations

import logging

from celery.signals import after_setup_logger, worker_init, worker_shutdown

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
log = logging.getLogger("webhooks.app")


@worker_init.connect
def _join_fleet(sender=None, **_kwargs) -> None:
    from jobs import fleet
    from jobs.embedded import redis_url_for
    from jobs.errors import BatchRenderError
    from jobs.store import client_for

    r = client_for(redis_url_for(settings))
    member = fleet.Member("webhooks", name=getattr(sender, "hostname", None) or "")
    try:
        fleet.enter(lambda: r, member, fleet.local_fingerprints(settings))
    except BatchRenderError as e:
        log.critical("webhook worker cannot start: %s", e.message)
        raise SystemExit(2) from None

    @worker_shutdown.connect(weak=False)
    def _leave(**_kw) -> None:
        try:
            fleet.leave(r, member)
        except Exception:  # noqa: BLE001 - shutting down: the entry ages out
            log.warning("could not leave the fleet registry", exc_info=True)
