"""Everything a worker process holds: built once per process, lazily, after fork — never at import."""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from jobs.embedded import redis_url_for
from jobs.registry import Registry
from jobs.settings import Settings
from jobs.store import JobStore
from webhooks.job_events import Events
from worker.models import ModelCache

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    store: JobStore
    registry: Registry
    models: ModelCache
    storage: Any
    moderation: Any
    signer: Any = None
    #: Verifies render messages and signs the ones this worker changes (jobs/signing.py).
    messages: Any = None
    provenance: Any = None
    events: Events = field(default_factory=Events)
    #: Publishes a JobMessage back onto its model's queue (set by the task module).
    publish: Any = None
    actor: str = "worker"
    #: The matting model for transparent backgrounds, loaded on first use (None: keying).
    matting: Any = None
    #: Moves jobs from the tenants' lanes to the render queues (jobs.fairshare.Dispatcher; set with the app).
    dispatcher: Any = None

    def dispatcher_for(self, app: Any) -> Any:
        if self.dispatcher is None:
            from jobs.fairshare import Dispatcher

            self.dispatcher = Dispatcher(app, self.store.r)
        return self.dispatcher

    @classmethod
    def build(cls, settings: Settings) -> "WorkerContext":
        from jobs.signing import CheckedMessages, Signer, require_shared_keys
        from provenance.c2pa_sign import process_signer
        from provenance.index import open_provenance_index
        from safety.chain import ModerationChain
        from storage import open_storage
        from webhooks.job_events import webhook_sender
        from worker.cutout import Matting

        require_shared_keys(settings)  # a shared Redis without shared keys: refused before anything is made
        url = redis_url_for(settings)
        store = JobStore.from_url(url, settings.record_ttl_s)
        ctx = cls(
            settings=settings,
            store=store,
            registry=Registry(settings),
            models=ModelCache.from_settings(settings),
            storage=open_storage(settings),
            moderation=ModerationChain.from_settings(settings),
            # Created here, i.e. after fork, once per process: a bad key fails at start-up.
            signer=process_signer(settings),
            messages=Signer.for_settings(settings),
            provenance=open_provenance_index(settings),
            events=Events(webhook_sender(settings, url, store), settings.webhook_progress_interval_s),
            matting=Matting(settings.matting_model_dir),
        )
        # Messages signed with another key count against their job, which fails after the limit
        # (through the runner's one way a job ends) instead of being re-sent and dropped forever.
        ctx.messages = CheckedMessages(ctx.messages, store, lambda msg, err: _fail_job(ctx, msg, err),
                                       settings.unverifiable_message_limit, who=f"worker {_member('worker').label}")
        return ctx


def _fail_job(ctx: WorkerContext, msg: Any, err: Exception) -> None:
    from worker.runner import JobRunner

    JobRunner(ctx).fail(msg, err, retryable=False)


def _member(role: str, name: str | None = None) -> Any:
    from jobs.fleet import Member

    return Member(role, name=name or "")


def join_fleet(ctx: WorkerContext, name: str | None = None, role: str = "worker") -> None:
    """Publish this worker's key fingerprints in the fleet registry (jobs/fleet.py) and keep them
    fresh; ``FleetKeyMismatch`` (a ConfigurationError: the worker does not start) when its
    message-signing key, secrets key or C2PA trust anchor differs from a live member's."""
    from celery.signals import worker_shutdown

    from jobs import fleet

    member = _member(role, name)
    prints = fleet.local_fingerprints(ctx.settings, getattr(ctx.signer, "anchor", None))
    fleet.enter(lambda: ctx.store.r, member, prints)

    def _leave(**_kw: Any) -> None:
        try:
            fleet.leave(ctx.store.r, member)
        except Exception:  # noqa: BLE001 - shutting down: the entry ages out
            log.warning("could not leave the fleet registry", exc_info=True)

    worker_shutdown.connect(_leave, weak=False)



_lock = threading.Lock()
_ctx: tuple[int, WorkerContext] | None = None


def get_context(settings: Settings | None = None) -> WorkerContext:
    """The process's context, built on first use and rebuilt in a forked child (connections and
    signers must not be shared across a fork); never at import time."""
    global _ctx
    with _lock:
        if _ctx is None or _ctx[0] != os.getpid():
            _ctx = (os.getpid(), WorkerContext.build(settings or Settings.from_env()))
        return _ctx[1]


def reset_context() -> None:
    global _ctx
    with _lock:
        _ctx = None
