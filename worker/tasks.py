"""Celery tasks: thin wrappers that parse the payload and hand it to the runner.

The retry policy is jobs/retry.py (shared with the batching session): ``TransientError`` retries
with backoff while the job's ``retries`` budget lasts; ``PermanentError`` fails the job once;
anything unexpected is a bug: it fails the job with ``internal_error`` rather than looping.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from pydantic import ValidationError

from jobs.celery_app import publish_render
from jobs.errors import PermanentError, TransientError
from jobs.names import RENDER_QUEUE_PREFIX, RENDER_TASK, render_queue
from jobs.retry import RetryPolicy, transient
from jobs.schemas import JobMessage
from jobs.settings import Settings
from jobs.signing import ForgedMessage

log = logging.getLogger(__name__)


def register(app: Celery, settings: Settings) -> None:
    policy = RetryPolicy.from_settings(settings)

    @app.task(name=RENDER_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def render_job(self, payload: dict[str, Any]) -> dict[str, Any]:
        from worker.batching import BatchSession, default_max_batch, postprocess_limit
        from worker.context import get_context
        from worker.runner import JobRunner
        from worker.task_events import TaskEvents

        try:
            ctx = get_context(settings)  # built at start-up; here only after a fork or a reset
        except TransientError as e:
            raise self.retry(exc=e, countdown=policy.backoff(self.request.retries))
        try:
            msg = ctx.messages.verify(JobMessage.model_validate(payload))
        except (ValidationError, ForgedMessage) as e:
            # Nothing to retry: a malformed or forged message is dropped (acked) and logged, never
            # pickled back, and the job it names is not touched.
            log.error("dropping render message %s: %s", self.request.id, e)
            return {"status": "rejected", "error": str(e)}
        if ctx.publish is None:
            ctx.publish = lambda m: publish_render(app, ctx.messages.sign(m))
        rows = settings.max_batch or default_max_batch(settings.device)
        runner = JobRunner(ctx, rows_per_call=rows)
        queue = (self.request.delivery_info or {}).get("routing_key") or render_queue(msg.request.model)
        dispatcher = ctx.dispatcher_for(app)
        model = queue[len(RENDER_QUEUE_PREFIX):] if queue.startswith(RENDER_QUEUE_PREFIX) else msg.request.model

        def progress(job_id: str, step: int, total: int) -> None:
            # Task ids are job ids, so every job of a batched call reports under its own id.
            app.backend.store_result(job_id, {"job_id": job_id, "step": step, "total": total}, "PROGRESS")

        session = BatchSession(
            runner, app, queue, max_batch=rows,
            window_ms=settings.batch_window_ms, max_wait_ms=settings.batch_max_wait_ms, threads=settings.resolved_postprocess_threads,
            max_pending=postprocess_limit(settings.postprocess_queue, rows, settings.device), session_s=settings.visibility_timeout_s / 4,
            policy=policy, events=TaskEvents(app, self.request.hostname, settings.task_events),
            refill=lambda n: dispatcher.fill(model, want=n, limit=n),
            urgent=(lambda n: dispatcher.fill(model, want=0, limit=n, urgent=True))
            if settings.scheduler == "fair" else None)
        try:
            try:
                outcome = session.run(msg, progress)
            except SoftTimeLimitExceeded:
                outcome = runner.fail(msg, PermanentError(
                    f"render exceeded the time limit of {settings.soft_time_limit_s}s"), retryable=False)
            except PermanentError as e:
                outcome = runner.fail(msg, e, retryable=False)
            except Exception as e:
                t = transient(e)
                if t is None:  # a bug: fail the job visibly instead of redelivering it forever
                    log.exception("job %s failed unexpectedly", msg.job_id)
                    outcome = runner.fail(msg, e, retryable=False)
                else:
                    retries = runner.ctx.store.get(msg.job_id).retries
                    if not policy.may_retry(retries):
                        outcome = runner.fail(msg, t, retryable=True)
                    else:
                        runner.requeue(msg, t)
                        try:
                            raise self.retry(exc=t, countdown=policy.backoff(retries))
                        except Reject as r:  # Celery could not publish the retry: keep this message
                            raise Reject(r.reason, requeue=True) from None
        except (Retry, Reject):
            raise
        except Exception as e:
            if transient(e) is None:
                raise
            # Redis went away while the outcome was being recorded: nothing can be written or
            # published now. Put the message back (or, if Redis stays away, leave it unacked until
            # the visibility timeout); the next claim takes the job up where it is.
            log.warning("job %s: broker unavailable while ending it (%s); message kept", msg.job_id, e)
            raise Reject(str(e), requeue=True) from e
        return {"job_id": outcome.job_id, "status": outcome.status.value}
