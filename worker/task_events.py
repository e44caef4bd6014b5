"""Celery task events for jobs that a batching session pulled from the queue itself.

Flower (and anything else that reads Celery events) sees a task when a worker sends
``task-received`` / ``task-started`` / ``task-succeeded`` for it. The worker does that for the
message Celery hands to a task (the session's leader), but the other jobs of a batched call are
taken straight from the queue (worker/batching.py) and Celery never sees them. This module sends
the same events for each of them, under the job id (which is also its Celery task id), the task's
name and the worker's hostname, so every job shows in Flower as its own task with its own
runtime, whichever call rendered it.

Like Celery's own events, these say how the *task* ran: a job that ended ``blocked`` or
``failed`` ran to completion (its result names the job's status); a transient error that sends
the job back to the queue is ``task-retried``. Events are fire-and-forget: one that cannot be
sent (Redis blip) is dropped with a warning and never disturbs the job.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from jobs.celery_app import render_argsrepr
from jobs.names import RENDER_TASK
from jobs.schemas import JobMessage

log = logging.getLogger(__name__)


class TaskEvents:
    """Sends task events for pulled jobs as ``hostname``; a no-op when ``enabled`` is false."""

    def __init__(self, app, hostname: str | None, enabled: bool) -> None:
        self.enabled = bool(enabled and hostname)
        self._started: dict[str, float] = {}
        self._dispatcher = None
        if self.enabled:
            self._conn = app.connection_for_write()
            self._dispatcher = app.events.Dispatcher(self._conn, hostname=hostname, enabled=True,
                                                     buffer_while_offline=False)

    def _send(self, type_: str, **fields: Any) -> None:
        if self._dispatcher is None:
            return
        try:
            self._dispatcher.send(type_, **fields)
        except Exception as e:  # noqa: BLE001 - monitoring must never fail a job
            log.warning("could not send %s for %s: %s", type_, fields.get("uuid"), e)

    def received(self, msg: JobMessage, retries: int = 0) -> None:
        """The job was taken from the queue and is being worked on (received, then started)."""
        if not self.enabled:
            return
        self._started[msg.job_id] = time.monotonic()
        self._send("task-received", uuid=msg.job_id, name=RENDER_TASK, args=render_argsrepr(msg), kwargs="{}",
                   root_id=msg.job_id, parent_id=None, retries=retries, eta=None, expires=None)
        self._send("task-started", uuid=msg.job_id)

    def finished(self, job_id: str, status: str) -> None:
        if not self.enabled:
            return
        runtime = time.monotonic() - self._started.pop(job_id, time.monotonic())
        self._send("task-succeeded", uuid=job_id, result=repr({"job_id": job_id, "status": status}), runtime=runtime)

    def retried(self, job_id: str, reason: str) -> None:
        if not self.enabled:
            return
        self._started.pop(job_id, None)
        self._send("task-retried", uuid=job_id, exception=reason, traceback="")

    def close(self) -> None:
        if self._dispatcher is not None:
            try:
                self._dispatcher.close()
            finally:
                self._conn.release()
