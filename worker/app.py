"""The Celery app that ``celery worker`` runs (``-A worker.app``): render tasks, webhook delivery.

Everything a worker needs (policy, storage, signer, indexes) is built and checked when the worker
starts, so a bad policy file, signing key or storage URL stops the worker with the reason before
it takes a single job, instead of failing (or stranding) jobs one by one. Models still load on
first use, so no CUDA context is created before a job needs one.
"""
from __future__ import annotations

import logging

from celery.signals import after_setup_logger, worker_init, worker_ready

from jobs.celery_app import make_app
from jobs.errors import BatchRenderError
from jobs.logs import celery_json_hook, configure_logging
from jobs.settings import Settings
from webhooks.job_events import link_refresher
from webhooks.tasks import register as register_webhooks
from worker.tasks import register

log = logging.getLogger("worker.app")
#: How often one worker of the fleet applies retention (``storage.retention.maybe_prune``).
PRUNE_EVERY_S = 3600.0
settings = Settings.from_env()
configure_logging(settings.log_format)
after_setup_logger.connect(celery_json_hook(settings.log_format), weak=False)
app = make_app(settings)
register(app, settings)
register_webhooks(app, settings, refresh=link_refresher(settings))


@worker_init.connect
def _check_configuration(sender=None, **_kwargs) -> None:
    from worker.context import get_context

    try:
        get_context(settings)
    except BatchRenderError as e:
        log.critical("worker cannot start: %s", e.message)
        # SystemExit passes through Celery's signal dispatch (it only catches Exception).
        raise SystemExit(2) from None


@worker_ready.connect
def _housekeeping(sender=None, **_kwargs) -> None:
    from jobs.periodic import start_periodic
    from storage.retention import maybe_prune
    from worker.context import get_context
    from worker.sweep import maybe_sweep_lost_jobs

    start_periodic("job-sweep", settings.job_sweep_every_s,
                   lambda: maybe_sweep_lost_jobs(app, get_context(settings).store, settings.job_sweep_every_s,
                                                 settings.job_sweep_overdue_s))

    def prune() -> None:
        ctx = get_context(settings)
        maybe_prune(ctx.store, ctx.storage, ctx.provenance, settings.retention_s, PRUNE_EVERY_S)

    # Retention: one worker of the fleet deletes what is older than retention_s, hourly.
    start_periodic("retention", PRUNE_EVERY_S, prune)
