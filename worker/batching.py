"""Batching and overlap: keep the GPU busy while earlier images are moderated, signed and stored.

A render task is the *leader* of a session. It pulls more messages from its own queue straight
from the broker (``basic_get`` without ack: kombu's Redis transport keeps them in its unacked set,
so a crash makes them visible again after the visibility timeout, exactly like the leader), renders
the jobs that share a call shape together, and hands each rendered job to a bounded thread pool for
stages 5-6 while the next call runs. A pulled message is acknowledged only after its job's outputs
are stored; the leader's message is acknowledged by Celery when the session returns.

Back-pressure: at most ``postprocess_queue`` rendered jobs wait for post-processing; when the pool
falls behind (slow uploads), the session waits before rendering more, so memory stays bounded.
The session stops pulling after ``session_s`` so the leader is acknowledged long before the
visibility timeout.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError

from jobs.errors import PermanentError, TransientError
from jobs.celery_app import publish_render
from jobs.names import RENDER_TASK
from jobs.retry import RetryPolicy, transient
from jobs.schemas import JobMessage
from jobs.signing import ForgedMessage
from jobs.status import JobStatus
from worker.runner import JobRunner, Outcome, Rendered, group_by_shape
from worker.task_events import TaskEvents

log = logging.getLogger(__name__)
#: Arrivals closer than this many quiet windows apart count as one burst (see Gatherer.pull).
BURST_GAPS = 5


def default_max_batch(device: str | None = None) -> int:
    """A batch size from the GPU's memory (about one image per 2 GiB, at most 32); 4 on CPU."""
    try:
        import torch

        if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
            total = torch.cuda.get_device_properties(torch.device(device or "cuda")).total_memory
            return max(1, min(32, int(total / 2**31)))
    except Exception:  # pragma: no cover - no torch/cuda: fall back
        pass
    return 4


@dataclass
class Pulled:
    """A message taken from the queue by the session (``message`` None for the leader)."""

    msg: JobMessage
    message: Any = None

    @property
    def is_leader(self) -> bool:
        return self.message is None


class Gatherer:
    """Takes render messages from one queue without acknowledging them."""

    def __init__(self, app, queue: str, verify: Callable[[JobMessage], JobMessage]) -> None:
        self.app = app
        self.queue = queue
        self.verify = verify  # jobs.signing.Signer.verify: forged messages are dropped
        self.conn = app.connection_for_read()
        self.conn.ensure_connection(max_retries=3)
        self.channel = self.conn.default_channel
        #: Recent time between arrivals (EWMA): how long a pull waits for the next message.
        self.gap_s = 0.0
        self.last_arrival: float | None = None
        self.clock, self.sleep = time.monotonic, time.sleep

    def pull(self, limit: int, quiet_s: float, max_wait_s: float) -> list[Pulled]:
        """Up to ``limit`` messages. While messages keep arriving it keeps collecting, so a burst
        that is still being queued fills the call instead of being split into part-empty (padded)
        calls; it stops when none has arrived for the *patience* (``quiet_s``, or 2.5 x the recent
        gap between arrivals when they trickle in slower than that), or after ``max_wait_s``.
        Arrivals further apart than ``BURST_GAPS`` x ``quiet_s`` are not a burst being queued: they
        teach nothing, so a lone job after a pause waits only ``quiet_s``, never seconds.
        """
        out: list[Pulled] = []
        start = last = self.clock()
        while len(out) < limit:
            message = self.channel.basic_get(self.queue, no_ack=False)
            now = self.clock()
            if message is None:
                patience = min(max_wait_s, max(quiet_s, 2.5 * self.gap_s))
                if now - last >= patience or now - start >= max_wait_s:
                    break
                self.sleep(0.002)
                continue
            if self.last_arrival is not None and now - self.last_arrival < BURST_GAPS * quiet_s:
                # Time between two arrivals of a burst (a backlog gives ~0; a pause is not a gap).
                self.gap_s = 0.7 * self.gap_s + 0.3 * (now - self.last_arrival)
            self.last_arrival = last = now
            pulled = self._parse(message)
            if pulled is not None:
                out.append(pulled)
        return out

    def _parse(self, message) -> Pulled | None:
        headers = message.headers or {}
        if headers.get("task") != RENDER_TASK:
            message.reject(requeue=True)  # not ours to run here; back to the queue untouched
            return None
        try:
            args, _kwargs, _embed = message.decode()
            return Pulled(self.verify(JobMessage.model_validate(args[0])), message)
        except (ValueError, TypeError, IndexError, ValidationError, ForgedMessage) as e:
            log.error("dropping render message %s: %s", headers.get("id"), e)
            message.ack()
            return None

    def close(self) -> None:
        self.conn.release()


class BatchSession:
    def __init__(self, runner: JobRunner, app, queue: str, *, max_batch: int, window_ms: int, max_wait_ms: int,
                 threads: int, max_pending: int, session_s: float, policy: RetryPolicy,
                 events: TaskEvents | None = None) -> None:
        self.runner = runner
        self.app = app
        self.queue = queue
        self.max_batch = max(1, max_batch)
        self.window_s = window_ms / 1000
        self.max_wait_s = max(self.window_s, max_wait_ms / 1000)
        self.threads = max(1, threads)
        self.max_pending = max(1, max_pending)
        self.session_s = session_s
        self.policy = policy
        self.leader_error: TransientError | None = None
        #: Celery task events for pulled jobs, so each shows in Flower as its own task.
        self.events = events or TaskEvents(app, None, False)

    def run(self, leader: JobMessage, progress=None) -> Outcome:
        """Render the leader and whatever compatible work arrives; returns the leader's outcome."""
        gatherer = Gatherer(self.app, self.queue, self.runner.ctx.messages.verify)
        pending: deque[tuple[Future, Pulled]] = deque()
        outcomes: dict[str, Outcome] = {}
        by_id: dict[str, Pulled] = {leader.job_id: Pulled(leader)}
        started = time.monotonic()
        batch = [by_id[leader.job_id]]
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="postprocess") as pool:
                while batch:
                    if len(batch) < self.max_batch:
                        batch += gatherer.pull(self.max_batch - len(batch), self.window_s, self.max_wait_s)
                    for p in batch:
                        by_id[p.msg.job_id] = p
                        if not p.is_leader:
                            self.events.received(p.msg)
                    ended, live = self.runner.admit([p.msg for p in batch])
                    for job_id, o in ended.items():
                        self._settle(by_id[job_id], o, outcomes)
                    for group in group_by_shape(live, self.max_batch):
                        # Back-pressure: never more than max_pending rendered jobs awaiting delivery.
                        while len(pending) >= self.max_pending:
                            self._reap(pending, outcomes, block=True)
                        for item in self._render(group, progress, outcomes, by_id):
                            pending.append((pool.submit(self._deliver, item), by_id[item.live.msg.job_id]))
                        self._reap(pending, outcomes, block=False)
                    batch = []
                    if time.monotonic() - started < self.session_s:
                        # Keep draining while work is queued or still arriving (then the session ends
                        # and Celery hands this worker its next message as a new leader).
                        batch = gatherer.pull(self.max_batch, self.window_s, self.max_wait_s)
                while pending:
                    self._reap(pending, outcomes, block=True)
        finally:
            # Anything pulled but not settled (an unexpected error) goes straight back to the
            # queue instead of waiting out the visibility timeout.
            for p in by_id.values():
                if not p.is_leader and p.msg.job_id not in outcomes:
                    p.message.reject(requeue=True)
            gatherer.close()
            self.events.close()
        if self.leader_error is not None:
            raise self.leader_error
        return outcomes[leader.job_id]

    def _render(self, group, progress, outcomes, by_id) -> list[Rendered]:
        try:
            rendered = self.runner.render_group([x for x in group], progress)
        except TransientError as e:
            for x in group:
                self._retry(by_id[x.msg.job_id], e, outcomes)
            return []
        except Exception as e:  # noqa: BLE001 - a permanent failure fails every job of the call
            t = transient(e)
            if t is not None:
                for x in group:
                    self._retry(by_id[x.msg.job_id], t, outcomes)
                return []
            log.exception("render failed for %d job(s)", len(group))
            for x in group:
                self._settle(by_id[x.msg.job_id], self.runner.fail(x.msg, e, retryable=False), outcomes)
            return []
        live = []
        for item in rendered:
            if item.outcome is not None:
                self._settle(by_id[item.live.msg.job_id], item.outcome, outcomes)
            else:
                live.append(item)
        return live

    def _deliver(self, item: Rendered) -> Outcome | TransientError:
        try:
            return self.runner.deliver(item)
        except TransientError as e:
            return e
        except PermanentError as e:
            return self.runner.fail(item.live.msg, e, retryable=False)
        except Exception as e:  # noqa: BLE001
            t = transient(e)
            if t is not None:
                return t
            log.exception("delivery of job %s failed", item.live.msg.job_id)
            return self.runner.fail(item.live.msg, e, retryable=False)

    def _reap(self, pending, outcomes, *, block: bool) -> None:
        while pending and (block or pending[0][0].done()):
            fut, p = pending.popleft()
            result = fut.result()
            if isinstance(result, TransientError):
                self._retry(p, result, outcomes)
            else:
                self._settle(p, result, outcomes)
            block = False

    def _settle(self, p: Pulled, outcome: Outcome, outcomes: dict[str, Outcome]) -> None:
        """The job's outputs are stored (or it ended): now, and only now, acknowledge its message."""
        outcomes[p.msg.job_id] = outcome
        if not p.is_leader:
            self.app.backend.store_result(p.msg.job_id, {"job_id": p.msg.job_id, "status": outcome.status.value},
                                          "SUCCESS")
            p.message.ack()
            self.events.finished(p.msg.job_id, outcome.status.value)

    def _retry(self, p: Pulled, e: TransientError, outcomes: dict[str, Outcome]) -> None:
        retries = self.runner.ctx.store.get(p.msg.job_id).retries
        if not self.policy.may_retry(retries):
            self._settle(p, self.runner.fail(p.msg, e, retryable=True), outcomes)
            return
        self.runner.requeue(p.msg, e)
        if p.is_leader:
            self.leader_error = e  # the task turns this into a Celery retry with backoff
            outcomes[p.msg.job_id] = Outcome(p.msg.job_id, JobStatus.QUEUED, e.to_dict())
            return
        # Re-publish with a delay, then ack the original: a crash in between leaves two copies,
        # and the claim step makes the second one a no-op once the first has finished.
        publish_render(self.app, p.msg, queue=self.queue, countdown=self.policy.backoff(retries))
        outcomes[p.msg.job_id] = Outcome(p.msg.job_id, JobStatus.QUEUED, e.to_dict())
        p.message.ack()
        self.events.retried(p.msg.job_id, f"{e.code}: {e.message}")
