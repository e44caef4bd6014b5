"""Batching and overlap: keep the GPU busy from one call to the next.

A render task is the *leader* of a session. It pulls more messages from its own queue straight
from the broker (``basic_get`` without ack: kombu's Redis transport keeps them in its unacked set,
so a crash makes them visible again after the visibility timeout, exactly like the leader) and
renders the jobs that share a call shape together. Three things overlap:

- the pipeline call runs on the process's render thread (one long-lived thread makes every call);
- meanwhile the session prepares the next call: it pulls messages (collecting for as long as the
  GPU is busy, so a partly filled call runs only when the GPU would otherwise idle) and moderates
  their prompts. It does not claim them: a job is claimed (``running``, by this worker) when its
  call starts (worker/runner.py, stage 1);
- a bounded thread pool moderates, encodes, signs and stores the images of earlier calls.

No hoarding: a job waiting in a busy session for the next call is work another worker could be
doing. While another render worker of the model waits idle (``jobs.fairshare.others_idle``: idle
for a second, nothing in the queue), a session pulls nothing more, and hands the jobs it holds
but has not started back to the queue (``reject(requeue=True)``: kombu moves each message from
its unacked set back onto the queue in one transaction, so it is neither lost nor doubled), where
the idle worker takes them. With no other worker idle, nothing changes: a lone worker batches
exactly as before (docs/scheduling.md).

A pulled message is acknowledged only after its job's outputs are stored; the leader's message is
acknowledged by Celery when the session returns. All broker traffic (pulls, acks) stays on the
session's own thread.

Back-pressure: when too many rendered jobs await post-processing (``postprocess_limit``: on a GPU
a whole call plus ``postprocess_queue``), the session waits before starting the next call, so
memory stays bounded without making the GPU wait for every upload. The session stops pulling after ``session_s`` so the
leader is acknowledged long before the visibility timeout.
"""
from __future__ import annotations

import logging
import os
import queue as queue_mod
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError
from redis.exceptions import RedisError

from jobs import fairshare
from jobs.callstats import worker_id
from jobs.errors import PermanentError, TransientError
from jobs.celery_app import eta_time, publish_render
from jobs.metrics import RENDER_GAP
from jobs.names import KEY_PREFIX, RENDER_QUEUE_PREFIX, RENDER_TASK
from jobs.retry import RetryPolicy, transient
from jobs.schemas import JobMessage
from jobs.signing import ForgedMessage
from jobs.status import JobStatus
from worker.runner import JobRunner, Live, Outcome, Rendered, group_by_shape, is_interactive
from worker.task_events import TaskEvents

log = logging.getLogger(__name__)
#: Arrivals closer than this many quiet windows apart count as one burst (see Gatherer.pull).
BURST_GAPS = 5
#: After a dispatch found every lane empty, the gatherer asks again only after this many seconds.
REFILL_IDLE_S = 0.02
#: Seconds between consecutive pipeline calls of a session, and how many such gaps (the benchmark's
#: "idle between calls" figure), summed over workers.
STATS_GAP_KEY = f"{KEY_PREFIX}stats:between_calls_s"
STATS_GAPS_KEY = f"{KEY_PREFIX}stats:between_calls"
#: While a call renders, a session looks once for interactive jobs in the lanes, this long before
#: the call should end (time to take and check them before the next call starts).
URGENT_LEAD_S = 0.03
#: A session asks Redis whether another worker is idle at most this often.
GIVE_WAY_EVERY_S = 0.25


class RenderThread:
    """The one thread of a process that makes pipeline calls.

    Long-lived (the whole process, not one session): CUDA graphs captured by ``torch.compile``
    belong to the thread that captured them, and a pipeline must never be called from two threads
    at once. A daemon thread, so a worker that is told to stop at once does not wait for a call.
    """

    def __init__(self) -> None:
        self._jobs: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="render", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        self._jobs.put((fut, fn, args))
        return fut

    def _loop(self) -> None:
        while True:
            fut, fn, args = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the session, which decides
                fut.set_exception(e)


_render_thread: tuple[int, RenderThread] | None = None
_render_thread_lock = threading.Lock()


def render_thread() -> RenderThread:
    """This process's render thread (a forked child starts its own)."""
    global _render_thread
    with _render_thread_lock:
        if _render_thread is None or _render_thread[0] != os.getpid():
            _render_thread = (os.getpid(), RenderThread())
        return _render_thread[1]


def postprocess_limit(queue: int, rows: int, device: str | None = None) -> int:
    """Rendered jobs that may await post-processing before the next call starts.

    On a GPU: a whole call plus ``queue`` (BATCHRENDER_POSTPROCESS_QUEUE). Post-processing runs on
    CPU cores the render does not use, so the next call should not wait for the previous call's
    uploads. On CPU: ``queue`` only. There render and post-processing share the cores. Measured on
    the 2-core box (tiny model, 128 jobs, batch 32): letting the next call start sooner tripled
    the time inside calls and cost 15 % end to end.
    """
    if device is None:
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:  # pragma: no cover - no torch: a CPU worker
            device = "cpu"
    return max(1, queue) + (rows if not device.startswith("cpu") else 0)


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


class GiveWay:
    """``give_way()``: whether another render worker of the session's model waits idle, so the
    session should leave the queue to it (asked of Redis at most every ``GIVE_WAY_EVERY_S``;
    false when Redis cannot say)."""

    def __init__(self, r: Any, model: str, worker: str | None = None, every_s: float = GIVE_WAY_EVERY_S) -> None:
        self.r, self.model, self.worker, self.every_s = r, model, worker or worker_id(), every_s
        self._next, self._value = 0.0, False
        self.clock = time.monotonic

    def busy(self) -> None:
        """This worker is in a session now: never idle for the others (its beat says so within a
        top-up; this says it at once)."""
        try:
            fairshare.idle_beat(self.r, [self.model], self.worker, idle=False)
        except Exception as e:  # noqa: BLE001 - the next beat says it
            log.debug("idle mark not cleared: %s", e)

    def __call__(self) -> bool:
        now = self.clock()
        if now >= self._next:
            self._next = now + self.every_s
            try:
                self._value = fairshare.others_idle(self.r, self.model, self.worker) > 0
            except Exception as e:  # noqa: BLE001 - Redis away: keep the jobs, as before
                log.debug("idle workers unknown: %s", e)
                self._value = False
        return self._value


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

    def __init__(self, app, queue: str, verify: Callable[[JobMessage], JobMessage],
                 refill: Callable[[int], int] | None = None) -> None:
        self.app = app
        self.queue = queue
        self.verify = verify  # jobs.signing.Signer.verify: forged messages are dropped
        #: ``refill(n)`` moves up to n jobs from the tenants' lanes into the queue and returns how
        #: many (jobs.fairshare.Dispatcher.fill): the queue holds only what workers are taking.
        self.refill = refill
        self._refill_idle_until = 0.0
        self.conn = app.connection_for_read()
        self.conn.ensure_connection(max_retries=3)
        self.channel = self.conn.default_channel
        #: Recent time between arrivals (EWMA): how long a pull waits for the next message.
        self.gap_s = 0.0
        self.last_arrival: float | None = None
        self.clock, self.sleep = time.monotonic, time.sleep
        #: Messages this session must not run now (another task, a retry whose countdown has not
        #: passed, a second message for a job the session holds): kept unacknowledged, so basic_get
        #: does not return them again and again; a retry is taken up once its countdown has passed,
        #: the rest go back on the queue when the session ends (close).
        self.deferred: list[Any] = []

    def pull(self, limit: int, quiet_s: float, max_wait_s: float,
             busy: Callable[[], bool] | None = None, on_wait: Callable[[], None] | None = None,
             stop: Callable[[], bool] | None = None) -> list[Pulled]:
        """Up to ``limit`` messages. While messages keep arriving it keeps collecting, so a burst
        that is still being queued fills the call instead of being split into part-empty (padded)
        calls; it stops when none has arrived for the *patience* (``quiet_s``, or 2.5 x the recent
        gap between arrivals when they trickle in slower than that), or after ``max_wait_s``.
        Arrivals further apart than ``BURST_GAPS`` x ``quiet_s`` are not a burst being queued: they
        teach nothing, so a lone job after a pause waits only ``quiet_s``, never seconds.

        ``busy()`` true means the GPU is still rendering the previous call: waiting costs nothing
        then, so the pull keeps collecting until it is full or the GPU is free, and only then do
        the patience and ``max_wait_s`` start to count. It returns early, while the GPU is still
        busy, with what it has once the queue pauses, so those jobs are checked and moderated
        before the GPU needs them (the session then pulls again). ``on_wait()`` runs between polls
        while it waits on a busy GPU (the session settles finished deliveries there). ``stop()``
        true (another worker is idle: ``GiveWay``) returns what it has at once and pulls no more.
        """
        out: list[Pulled] = []
        for message in self._due():
            pulled = self._parse(message)
            if pulled is not None:
                out.append(pulled)
        start = self.clock()
        # While the GPU is busy the question is whether the queue is still growing at all, so the
        # patience runs from the session's last arrival, not from this pull's start.
        last = self.last_arrival if busy is not None and self.last_arrival is not None else start
        while len(out) < limit:
            if stop is not None and stop():
                break
            message = self.channel.basic_get(self.queue, no_ack=False)
            now = self.clock()
            if message is None and self._top_up(limit - len(out), now):
                continue  # jobs came out of the lanes: take them
            if message is None:
                patience = min(max_wait_s, max(quiet_s, 2.5 * self.gap_s))
                quiet = now - last >= patience
                if busy is not None and busy():
                    if out and quiet:
                        break  # claim and moderate these while the GPU still renders; then pull again
                    start = now
                    if on_wait is not None:
                        on_wait()
                    self.sleep(0.02)
                    continue
                if quiet or now - start >= max_wait_s:
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

    def take_ready(self, limit: int) -> list[Pulled]:
        """Up to ``limit`` messages already in the queue, without waiting or topping up."""
        out: list[Pulled] = []
        while len(out) < limit:
            message = self.channel.basic_get(self.queue, no_ack=False)
            if message is None:
                break
            pulled = self._parse(message)
            if pulled is not None:
                out.append(pulled)
        return out

    def _top_up(self, n: int, now: float) -> int:
        """Ask the fair-share dispatch for ``n`` jobs (the queue is empty). When the lanes were empty
        too, ask again only after ``REFILL_IDLE_S`` (the poll loop runs every few ms)."""
        if self.refill is None or n <= 0 or now < self._refill_idle_until:
            return 0
        try:
            moved = self.refill(n)
        except Exception as e:  # noqa: BLE001 - Redis away: the lanes wait; the session goes on
            log.warning("fair-share dispatch failed: %s", e)
            moved = 0
        if not moved:
            self._refill_idle_until = now + REFILL_IDLE_S
        return moved

    def _parse(self, message) -> Pulled | None:
        headers = message.headers or {}
        if headers.get("task") != RENDER_TASK or _not_due(headers.get("eta")):
            # Not ours to run now (another task; a retry still in its backoff, which Celery's own
            # consumer schedules): back on the queue untouched when the session ends.
            self.defer(message)
            return None
        try:
            args, _kwargs, _embed = message.decode()
            return Pulled(self.verify(JobMessage.model_validate(args[0])), message)
        except (ValueError, TypeError, IndexError, ValidationError, ForgedMessage) as e:
            log.error("dropping render message %s: %s", headers.get("id"), e)
            message.ack()
            return None

    def defer(self, message) -> None:
        self.deferred.append(message)

    def _due(self) -> list[Any]:
        """Deferred retries whose countdown has passed (taken out of ``deferred``)."""
        due = [m for m in self.deferred
               if (m.headers or {}).get("task") == RENDER_TASK and (m.headers or {}).get("eta")
               and not _not_due(m.headers["eta"])]
        if due:
            self.deferred = [m for m in self.deferred if not any(m is d for d in due)]
        return due

    def close(self) -> None:
        try:
            for message in self.deferred:
                message.reject(requeue=True)
        finally:
            self.deferred.clear()
            self.conn.release()


def _not_due(eta: Any) -> bool:
    """Whether a Celery ``eta`` header (ISO 8601) is still in the future."""
    when = eta_time(eta)
    return when is not None and when > time.time()


class BatchSession:
    def __init__(self, runner: JobRunner, app, queue: str, *, max_batch: int, window_ms: int, max_wait_ms: int,
                 threads: int, max_pending: int, session_s: float, policy: RetryPolicy,
                 events: TaskEvents | None = None, refill: Callable[[int], int] | None = None,
                 give_way: GiveWay | None = None, urgent: Callable[[int], int] | None = None) -> None:
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
        self.refill = refill
        #: ``urgent(n)`` moves up to n interactive jobs that the fair order takes next into the
        #: queue, however full it is (jobs.fairshare.Dispatcher.fill(urgent=True)); asked once per
        #: call, ``URGENT_LEAD_S`` before it should end, so such a job renders in the very next
        #: call instead of after the one gathered before it arrived.
        self.urgent = urgent
        #: Recent length of a pipeline call (EWMA, seconds): when to look for urgent work.
        self._call_s = 0.0
        #: Whether another worker of the model is idle (no hoarding, see the module doc): by
        #: default asked of the job store's Redis; None (no store: tests) never gives way.
        if give_way is None:
            r = getattr(getattr(getattr(runner, "ctx", None), "store", None), "r", None)
            if r is not None:
                give_way = GiveWay(r, queue.removeprefix(RENDER_QUEUE_PREFIX))
        self.give_way = give_way

    def run(self, leader: JobMessage, progress=None) -> Outcome:
        """Render the leader and whatever compatible work arrives; returns the leader's outcome."""
        gatherer = Gatherer(self.app, self.queue, self.runner.ctx.messages.verify, self.refill)
        pending: deque[tuple[Future, Pulled]] = deque()
        outcomes: dict[str, Outcome] = {}
        by_id: dict[str, Pulled] = {leader.job_id: Pulled(leader)}
        started = time.monotonic()
        waiting: list[Live] = []  # admitted (claimed, moderated) jobs not yet rendering
        renderer = render_thread()
        gaps: list[float] = []
        last_end: list[float] = []
        in_flight: list[Future | None] = [None]  # the call rendering now
        give_way: Callable[[], bool] = self.give_way or (lambda: False)
        if self.give_way is not None:
            self.give_way.busy()

        def render_call(group: list[Live]) -> list[Rendered]:  # on the render thread
            began = time.perf_counter()
            if last_end:
                gaps.append(began - last_end[0])
            try:
                return self.runner.render_group(group, progress)
            finally:
                last_end[:] = [time.perf_counter()]
                self._call_s = 0.7 * self._call_s + 0.3 * (last_end[0] - began) if self._call_s else last_end[0] - began

        held: list[Rendered] = []  # rendered, delivery held back for interactive work
        hot: list[Future] = []  # deliveries of interactive jobs
        hot_next = [False]  # the call rendering now (or the next) holds an interactive job

        def release(force: bool = False) -> None:
            """Deliver the held jobs once no interactive job is rendering or being delivered (or
            when they are as many as the deliveries allowed in flight: interactive work all along)."""
            hot[:] = [f for f in hot if not f.done()]
            if held and (force or len(held) >= self.max_pending or (not hot and not hot_next[0])):
                for item in held:
                    pending.append((pool.submit(self._deliver, item), by_id[item.live.msg.job_id]))
                held.clear()

        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="postprocess") as pool:
                first = [by_id[leader.job_id]]
                if self.max_batch > 1:
                    first += gatherer.pull(self.max_batch - 1, self.window_s, self.max_wait_s)
                self._admit(first, by_id, outcomes, waiting, gatherer)
                while waiting:
                    group, *rest = group_by_shape(waiting, self.max_batch)
                    waiting = [x for g in rest for x in g]
                    # Back-pressure: at most max_pending rendered jobs awaiting delivery (postprocess_limit).
                    while len(pending) >= self.max_pending:
                        self._reap(pending, outcomes, block=True)
                    call = in_flight[0] = renderer.submit(render_call, group)
                    call_t0 = time.monotonic()
                    # Prepare the next call while this one renders. Keep draining while work is
                    # queued or still arriving (then the session ends and Celery hands this worker
                    # its next message as a new leader). Not while another worker waits idle:
                    # the queue and the lanes are its (no hoarding).
                    need = self.max_batch - len(waiting)
                    while need > 0 and time.monotonic() - started < self.session_s and not give_way():
                        more = gatherer.pull(need, self.window_s, self.max_wait_s, busy=lambda: not call.done(),
                                             on_wait=lambda: self._reap(pending, outcomes, block=False),
                                             stop=give_way)
                        if more and give_way():
                            self._hand_back(more, by_id, outcomes, gatherer, admitted=False)
                            break
                        self._admit(more, by_id, outcomes, waiting, gatherer)
                        need -= len(more)
                        if not more or call.done():
                            break
                    # One look for interactive work per call, just before the call should end
                    # (by the recent calls' length, counted from the call's start: gathering the
                    # next call may itself take most of this one): late enough to see what arrived
                    # meanwhile, and no polling thread competing with the render thread for the GIL.
                    look_at = (call_t0 + max(0.0, self._call_s - URGENT_LEAD_S)
                               if self.urgent is not None else None)
                    while not call.done():
                        # Settle finished deliveries (acks, events) while the call runs.
                        timeout = 0.5 if look_at is None else min(0.5, max(0.0, look_at - time.monotonic()))
                        wait([call] + ([pending[0][0]] if pending else []), timeout=timeout, return_when=FIRST_COMPLETED)
                        self._reap(pending, outcomes, block=False)
                        release()
                        if look_at is not None and time.monotonic() >= look_at and not call.done():
                            look_at = None
                            self._take_urgent(gatherer, by_id, outcomes, waiting, give_way)
                        if any(not by_id[x.msg.job_id].is_leader for x in waiting) and give_way():
                            # Jobs held for a later call while another worker idles: theirs now.
                            back = [x for x in waiting if not by_id[x.msg.job_id].is_leader]
                            waiting = [x for x in waiting if by_id[x.msg.job_id].is_leader]
                            self._hand_back([by_id[x.msg.job_id] for x in back], by_id, outcomes, gatherer,
                                            admitted=True)
                    in_flight[0] = None
                    # Someone waits on an interactive job: its delivery goes first, and other jobs'
                    # deliveries are held (not dropped: ``release``) while it, or a call holding
                    # one, runs, so neither shares the CPU with them.
                    for item in self._rendered(group, call, outcomes, by_id):
                        if is_interactive(item.live):
                            hot.append(pool.submit(self._deliver, item))
                            pending.append((hot[-1], by_id[item.live.msg.job_id]))
                        else:
                            held.append(item)
                    if look_at is not None and waiting:
                        # The call ended before its look (shorter than usual, or the gathering ran
                        # past it): look now, before the next call is formed from ``waiting``.
                        self._take_urgent(gatherer, by_id, outcomes, waiting, give_way)
                    hot_next[0] = any(map(is_interactive, waiting))
                    release()
                    self._reap(pending, outcomes, block=False)
                release(force=True)
                while pending:
                    self._reap(pending, outcomes, block=True)
        except Exception:
            # The session failed (Redis or the broker went away) while a call may still be
            # rendering: let it finish before its jobs go back on the queue, so no other worker
            # renders them at the same time (and a late time-out here cannot fail a job that
            # another worker holds by then). Its images are dropped; the jobs render again.
            if in_flight[0] is not None:
                wait([in_flight[0]])
            raise
        finally:
            # Anything pulled but not settled (an unexpected error) goes straight back to the
            # queue instead of waiting out the visibility timeout.
            for p in by_id.values():
                if not p.is_leader and p.msg.job_id not in outcomes:
                    p.message.reject(requeue=True)
            gatherer.close()
            self.events.close()
            self._record_gaps(gaps)
        if self.leader_error is not None:
            raise self.leader_error
        return outcomes[leader.job_id]

    def _record_gaps(self, gaps: list[float]) -> None:
        if not gaps:
            return
        RENDER_GAP.inc(sum(gaps))
        try:
            with self.runner.ctx.store.r.pipeline(transaction=False) as p:
                p.incrbyfloat(STATS_GAP_KEY, sum(gaps))
                p.incrby(STATS_GAPS_KEY, len(gaps))
                p.execute()
        except RedisError as e:  # statistics only: never fail a session for them
            log.warning("between-calls statistics not recorded: %s", e)

    def _take_urgent(self, gatherer: "Gatherer", by_id: dict[str, Pulled], outcomes: dict[str, Outcome],
                     waiting: list[Live], give_way: Callable[[], bool]) -> None:
        """Take interactive jobs the fair order picks next into this session while its call
        renders (they render first: ``group_by_shape``), up to one call of interactive rows."""
        room = self.max_batch - sum(x.msg.request.num_images for x in waiting if is_interactive(x))
        if room <= 0 or give_way():
            return  # a call of them is ready; or an idle worker takes them
        try:
            moved = self.urgent(room)
        except Exception as e:  # noqa: BLE001 - Redis away: they wait in their lanes
            log.debug("urgent dispatch failed: %s", e)
            return
        if moved:
            # The queue holds what the dispatch keeps ready (a message or two) and these.
            self._admit(gatherer.take_ready(moved + self.max_batch), by_id, outcomes, waiting, gatherer)

    def _hand_back(self, pulled: list[Pulled], by_id: dict[str, Pulled], outcomes: dict[str, Outcome],
                   gatherer: Gatherer, *, admitted: bool) -> None:
        """Put jobs this session pulled but has not started back on the queue, for an idle worker.
        Never claimed (their records still read ``queued``), so nothing else needs undoing; a
        leader is never handed back (Celery acknowledges it when the session returns), nor a
        second message for a job this session still holds (it waits for the session's end, as
        in ``_admit``: another worker must not render that job meanwhile)."""
        n = 0
        for p in pulled:
            if p.is_leader:
                continue
            held = by_id.get(p.msg.job_id)
            if held is not None and held is not p and p.msg.job_id not in outcomes:
                gatherer.defer(p.message)
                continue
            p.message.reject(requeue=True)  # unacked -> queue, one transaction (kombu)
            if by_id.get(p.msg.job_id) is p:
                del by_id[p.msg.job_id]
            if admitted:
                self.events.retried(p.msg.job_id, "handed back to the queue: another worker is idle")
            n += 1
        if n:
            log.info("handed %d job(s) back to %s: another worker of the model is idle", n, self.queue)

    def _admit(self, batch: list[Pulled], by_id: dict[str, Pulled], outcomes: dict[str, Outcome],
               waiting: list[Live], gatherer: Gatherer) -> None:
        """Stages 1-2 (claim, check, moderate) for pulled jobs; the live ones join ``waiting``."""
        fresh = []
        for p in batch:
            held = by_id.get(p.msg.job_id)
            if held is not None and held is not p and p.msg.job_id not in outcomes:
                # A second message for a job this session still holds (a re-publish that overtook
                # the first's ack): the first is settled here; the second waits its turn.
                gatherer.defer(p.message)
                continue
            by_id[p.msg.job_id] = p
            if not p.is_leader:
                self.events.received(p.msg)
            fresh.append(p)
        if not fresh:
            return
        ended, live = self.runner.admit([p.msg for p in fresh])
        for job_id, o in ended.items():
            self._settle(by_id[job_id], o, outcomes)
        waiting.extend(live)

    def _rendered(self, group: list[Live], call: Future, outcomes, by_id) -> list[Rendered]:
        """The jobs of a finished call that still need delivery; the others are settled here."""
        e = call.exception()
        if e is None:
            live = []
            for item in call.result():
                if item.outcome is not None:
                    self._settle(by_id[item.live.msg.job_id], item.outcome, outcomes)
                else:
                    live.append(item)
            return live
        if not isinstance(e, Exception):
            raise e  # KeyboardInterrupt and the like: not the jobs' fault
        t = e if isinstance(e, TransientError) else transient(e)
        if t is not None:
            for x in group:
                self._retry(by_id[x.msg.job_id], t, outcomes)
            return []
        # A permanent failure fails every job of the call.
        log.error("render failed for %d job(s)", len(group), exc_info=e)
        for x in group:
            self._settle(by_id[x.msg.job_id], self.runner.fail(x.msg, e, retryable=False), outcomes)
        return []

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
