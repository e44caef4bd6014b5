"""The Celery app that ``celery worker`` runs (``-A worker.app``): render tasks, webhook delivery.

Everything a worker needs (policy, storage, signer, indexes) is built and checked when the worker
starts, so a bad policy file, signing key or storage URL stops the worker with the reason before
it takes a single job, instead of failing (or stranding) jobs one by one. Models still load on
first use, so no CUDA context is created before a job needs one.
"""
from __future__ import annotations

import logging

from celery.signals import after_setup_logger, worker_init, worker_ready, worker_shutdown

from jobs.celery_app import make_app
from jobs.errors import BatchRenderError
from jobs.logs import celery_json_hook, configure_logging
from jobs.retry import transient
from jobs.settings import Settings
from webhooks.job_events import link_refresher
from webhooks.tasks import register as register_webhooks
from worker.malloc import tune as tune_malloc
from worker.tasks import register

log = logging.getLogger("worker.app")
#: How often one worker of the fleet applies retention (``storage.retention.maybe_prune``).
PRUNE_EVERY_S = 3600.0
settings = Settings.from_env()
# Before any thread of this process exists (Celery's, torch's, post-processing): arenas are
# handed to threads as they first allocate.
_malloc = tune_malloc(settings.malloc_arena_max, settings.malloc_mmap_threshold)
configure_logging(settings.log_format)
after_setup_logger.connect(celery_json_hook(settings.log_format), weak=False)
app = make_app(settings)
register(app, settings)
register_webhooks(app, settings, refresh=link_refresher(settings))


@worker_init.connect
def _check_configuration(sender=None, **_kwargs) -> None:
    from worker.context import get_context, join_fleet

    log.info("malloc tuned: %s", _malloc or "as glibc sets it (not glibc, or left by settings/environment)")

    try:
        # Keys that must match the fleet's are checked here too (jobs/fleet.py).
        join_fleet(get_context(settings), getattr(sender, "hostname", None))
    except BatchRenderError as e:
        log.critical("worker cannot start: %s", e.message)
        # SystemExit passes through Celery's signal dispatch (it only catches Exception).
        raise SystemExit(2) from None


@worker_ready.connect
def _housekeeping(sender=None, **_kwargs) -> None:
    from jobs.periodic import start_periodic
    from storage.retention import maybe_prune
    from storage.shared_check import start_markers
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
    # A marker in storage that /readyz and doctor read back: storage shared with this worker.
    start_markers(getattr(sender, "hostname", None), lambda: get_context(settings), settings)


def served_models(consumer) -> list[str]:
    """The models whose render queues this worker consumes (``-Q``)."""
    from jobs.names import RENDER_QUEUE_PREFIX

    queues = getattr(getattr(consumer, "task_consumer", None), "queues", None)
    names = [q.name for q in queues] if queues else list(getattr(app.amqp.queues, "consume_from", None) or {})
    return sorted({n[len(RENDER_QUEUE_PREFIX):] for n in names if n.startswith(RENDER_QUEUE_PREFIX)})


_served: list[str] = []


@worker_ready.connect
def _heartbeat(sender=None, **_kwargs) -> None:
    """Live render workers per model, in Redis, for ETAs (jobs/callstats.py): a beat now and every
    ``HEARTBEAT_EVERY_S`` from a thread (a long render does not silence it)."""
    from jobs import callstats
    from jobs.periodic import start_periodic
    from worker.context import get_context

    _served[:] = served_models(sender)
    if not _served:
        return  # a webhook-only worker
    try:
        callstats.heartbeat(get_context(settings).store.r, _served)
    except Exception as e:  # noqa: BLE001 - Redis away (a restart, a failover): beat and dispatch start anyway
        if transient(e) is None:
            raise
        log.warning("first heartbeat failed (%s); the next one is in %.0f s", e, callstats.HEARTBEAT_EVERY_S)
    start_periodic("heartbeat", 2 * callstats.HEARTBEAT_EVERY_S,
                   lambda: callstats.heartbeat(get_context(settings).store.r, _served))
    start_dispatch(_served)


def start_dispatch(models: list[str]) -> None:
    """Keep a job ready in each served model's queue while tenants' lanes hold any (jobs/fairshare.py):
    an idle worker waits in Celery's BRPOP and takes it; a busy one's gatherer takes what it needs
    itself. Whatever ``scheduler`` this worker's settings say, so no lane is ever left unserved.
    Each round also says whether this worker is idle (no task running), so that busy workers hand
    it the jobs they hold for later calls (worker/batching.py: no hoarding)."""
    from celery.worker import state as worker_state

    from jobs import fairshare
    from jobs.callstats import worker_id
    from jobs.periodic import start_periodic
    from worker.context import get_context

    quiet_until = [0.0]

    def top_up() -> None:
        import time

        try:
            dispatcher = get_context(settings).dispatcher_for(app)
            for model in models:
                dispatcher.fill(model, want=1)
            fairshare.idle_beat(dispatcher.r, models, worker_id(), idle=not worker_state.active_requests)
        except Exception as e:  # noqa: BLE001 - Redis away: say so once in a while, not 5 times a second
            if time.monotonic() >= quiet_until[0]:
                log.warning("fair-share dispatch failed (%s); retrying every %.1f s", e, settings.dispatch_every_s)
                quiet_until[0] = time.monotonic() + 30

    start_periodic("dispatch", 2 * settings.dispatch_every_s, top_up)


@worker_shutdown.connect
def _leave(sender=None, **_kwargs) -> None:
    from jobs import callstats
    from worker.context import get_context

    if _served:
        try:
            from jobs import fairshare

            callstats.leave(get_context(settings).store.r, _served)
            fairshare.idle_beat(get_context(settings).store.r, _served, callstats.worker_id(), idle=False)
        except Exception:  # noqa: BLE001 - shutting down: its beat simply ages out
            log.warning("could not remove this worker's heartbeat", exc_info=True)
