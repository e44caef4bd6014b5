"""The render pipeline for a group of compatible jobs, in numbered stages.

1. claim     each job: queued/running → running (a redelivered job is claimed again; a finished,
             canceled or blocked one is skipped, so a redelivery never renders twice)
2. moderate  the prompt, before any GPU time (blocked → ``blocked``, nothing rendered)
3. load      the model (cached per process)
4. render    one pipeline call; progress and cancellation at every step
5. deliver   per image: output moderation, encode, sign, store under deterministic keys, index
6. finish    result record, terminal status, events

A job's Celery message is acknowledged only after this returns (late acks), i.e. after its
outputs are stored; a crash anywhere before that redelivers it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from jobs.errors import BatchRenderError, PermanentError, TransientError
from jobs.schemas import ImageResult, JobMessage, JobResult, Timings
from jobs.status import JobStatus
from worker.context import WorkerContext
from worker.deliver import Delivered, deliver_image
from worker.render import CallShape, RenderItem, render

log = logging.getLogger(__name__)
Q, R = JobStatus.QUEUED, JobStatus.RUNNING


@dataclass
class Outcome:
    job_id: str
    status: JobStatus
    detail: dict[str, Any] = field(default_factory=dict)


def shape_of(msg: JobMessage) -> CallShape:
    r = msg.request
    assert r.width and r.height and r.steps and r.guidance_scale is not None
    return CallShape(r.model, r.width, r.height, r.steps, float(r.guidance_scale))


class JobRunner:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    # 1. claim ------------------------------------------------------------------------------------
    def claim(self, msg: JobMessage) -> Outcome | None:
        """Take the job for this worker; an Outcome means there is nothing (more) to do."""
        store = self.ctx.store
        if store.status(msg.job_id) is None:
            # The record expired or the producer died after sending: rebuild it from the message.
            store.create(msg)
        if store.cancel_requested(msg.job_id):
            store.transition(msg.job_id, JobStatus.CANCELED, [Q, R])
            self.ctx.events.emit("job.canceled", msg)
            return Outcome(msg.job_id, JobStatus.CANCELED, {"reason": "canceled before start"})
        t = store.transition(msg.job_id, R, [Q, R], started_at=repr(time.time()))
        if not t.ok:
            return Outcome(msg.job_id, t.current or JobStatus.FAILED, {"reason": "already ended; skipped"})
        store.bump_attempts(msg.job_id)
        self.ctx.events.emit("job.started", msg)
        return None

    # 2. moderate ---------------------------------------------------------------------------------
    def moderate_prompt(self, msg: JobMessage) -> tuple[Outcome | None, dict[str, Any] | None]:
        # The chain appends every decision to the audit log itself (a prompt hash, not the prompt).
        decision = self.ctx.moderation.check_prompt(msg.request.prompt, msg.request.negative_prompt,
                                                    actor=msg.tenant or "worker", job_id=msg.job_id)
        if decision.action.value == "block":
            info = decision.to_dict()
            self._end(msg, JobStatus.BLOCKED, error={
                "code": "moderation_blocked", "message": decision.message,
                "stage": info.get("stage"), "categories": info.get("categories", []),
            }, moderation=info)
            return Outcome(msg.job_id, JobStatus.BLOCKED, info), None
        return None, (decision.to_dict() if decision.action.value == "flag" else None)

    # the whole pipeline --------------------------------------------------------------------------
    def run(self, msgs: list[JobMessage], progress: Callable[[str, int, int], None] | None = None) -> list[Outcome]:
        """Run compatible jobs (same ``shape_of``) through all stages; returns one Outcome each."""
        outcomes: dict[str, Outcome] = {}
        live: list[tuple[JobMessage, dict[str, Any] | None]] = []
        for msg in msgs:
            done = self.claim(msg)
            if done is None:
                done, flags = self.moderate_prompt(msg)
            if done is not None:
                outcomes[msg.job_id] = done
            else:
                live.append((msg, flags))
        if live:
            for o in self._render_and_deliver(live, progress):
                outcomes[o.job_id] = o
        return [outcomes[m.job_id] for m in msgs]

    def _render_and_deliver(self, live, progress) -> list[Outcome]:
        shape = shape_of(live[0][0])
        assert all(shape_of(m) == shape for m, _ in live), "jobs in one call must share a shape"
        started = time.time()
        # 3. load
        spec = self.ctx.registry.get(shape.model)
        loaded, load_s = self.ctx.models.get(spec)
        # 4. render
        store = self.ctx.store
        ids = [m.job_id for m, _ in live]
        last_write = [0.0]

        def on_step(step: int, total: int) -> bool:
            now = time.monotonic()
            if step == total or now - last_write[0] > 0.2:
                last_write[0] = now
                for m, _ in live:
                    store.set_progress(m.job_id, step, total)
                    self.ctx.events.progress(m, step, total)
                    if progress:
                        progress(m.job_id, step, total)
            # Stop only when every job in the call is canceled; others still need their images.
            return all(store.cancel_requested(j) for j in ids)

        items = [RenderItem(m.request.prompt, m.request.negative_prompt, tuple(m.seeds)) for m, _ in live]
        t0 = time.perf_counter()
        images = render(loaded.pipe, loaded.device, shape, items, on_step)
        render_s = time.perf_counter() - t0
        if images is None:
            return [self._canceled(m) for m, _ in live]
        # 5. deliver + 6. finish, job by job
        out = []
        for (msg, flags), imgs in zip(live, images):
            if store.cancel_requested(msg.job_id):
                out.append(self._canceled(msg))  # rendered alongside others, but its owner gave up
                continue
            timings = Timings(queue_wait_s=max(0.0, started - msg.submitted_at), load_s=load_s,
                              render_s=render_s / len(live))
            out.append(self._deliver(msg, imgs, timings, flags))
        return out

    def _deliver(self, msg: JobMessage, imgs, timings: Timings, flags) -> Outcome:
        t0 = time.perf_counter()
        results: list[ImageResult] = []
        for index, (img, seed) in enumerate(zip(imgs, msg.seeds)):
            d: Delivered = deliver_image(self.ctx, msg, index, seed, img)
            if d.blocked is not None:
                self._end(msg, JobStatus.BLOCKED, error={
                    "code": "moderation_blocked", "message": d.blocked.get("message", "output withheld"),
                    "stage": d.blocked.get("stage"), "categories": d.blocked.get("categories", []),
                }, moderation=d.blocked)
                return Outcome(msg.job_id, JobStatus.BLOCKED, d.blocked)
            results.append(d.image)
        timings.postprocess_s = time.perf_counter() - t0
        self._end(msg, JobStatus.SUCCEEDED, images=results, timings=timings, moderation=flags)
        return Outcome(msg.job_id, JobStatus.SUCCEEDED, {"images": len(results)})

    def _canceled(self, msg: JobMessage) -> Outcome:
        self._end(msg, JobStatus.CANCELED, error={"code": "canceled", "message": "canceled while running; "
                                                  "its half-made images were discarded"})
        return Outcome(msg.job_id, JobStatus.CANCELED)

    def fail(self, msg: JobMessage, exc: BaseException, *, retryable: bool) -> Outcome:
        """Record a final failure (permanent error, exhausted retries, or an unexpected bug)."""
        if isinstance(exc, BatchRenderError):
            error = exc.to_dict()
        else:
            error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        error["retryable"] = retryable
        status = JobStatus.CANCELED if error.get("code") == "canceled" else JobStatus.FAILED
        self._end(msg, status, error=error)
        return Outcome(msg.job_id, status, error)

    def requeue(self, msg: JobMessage, exc: TransientError) -> None:
        """A transient failure: back to queued (a retry is scheduled), keeping the reason visible."""
        self.ctx.store.transition(msg.job_id, Q, [R], error=exc.to_dict())

    def _end(self, msg: JobMessage, status: JobStatus, *, images: list[ImageResult] | None = None,
             timings: Timings | None = None, moderation=None, error=None) -> None:
        result = JobResult(job_id=msg.job_id, batch_id=msg.batch_id, custom_id=msg.request.custom_id,
                           status=status, model=msg.request.model, images=images or [],
                           timings=timings or Timings(), moderation=moderation, error=error)
        fields: dict[str, Any] = {"result": result.model_dump_json()}
        if error is not None:
            fields["error"] = error
        t = self.ctx.store.transition(msg.job_id, status, [Q, R], **fields)
        if not t.ok:
            log.info("job %s already %s; not recording %s", msg.job_id, t.current, status.value)
            return
        self.ctx.events.finished(msg, result, batch_done=t.batch_done)


__all__ = ["JobRunner", "Outcome", "shape_of", "PermanentError"]
