"""Job lifecycle events → webhook deliveries (enqueued on their own queue, never sent inline)."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from jobs.schemas import JobMessage, JobResult

log = logging.getLogger(__name__)

#: ``send(event_type, msg, data, batch_done)`` — set up by the worker context when webhooks exist.
Sender = Callable[[str, JobMessage, dict[str, Any], "int | None"], None]


class Events:
    def __init__(self, sender: Sender | None = None, progress_interval_s: float = 2.0) -> None:
        self.sender = sender
        self.progress_interval_s = progress_interval_s
        self._last_progress: dict[str, float] = {}

    def emit(self, event_type: str, msg: JobMessage, data: dict[str, Any] | None = None,
             batch_done: int | None = None) -> None:
        if self.sender is None:
            return
        try:
            self.sender(event_type, msg, data or {}, batch_done)
        except Exception:
            # An event that cannot be enqueued must not fail a render that already succeeded;
            # it is logged loudly and can be replayed from the delivery log.
            log.exception("could not enqueue %s for job %s", event_type, msg.job_id)

    def progress(self, msg: JobMessage, step: int, total: int) -> None:
        now = time.monotonic()
        if step < total and now - self._last_progress.get(msg.job_id, 0.0) < self.progress_interval_s:
            return
        self._last_progress[msg.job_id] = now
        self.emit("job.progress", msg, {"step": step, "total": total})

    def finished(self, msg: JobMessage, result: JobResult, batch_done: int | None) -> None:
        self._last_progress.pop(msg.job_id, None)
        self.emit(f"job.{result.status.value}", msg, result.model_dump(mode="json"), batch_done)
