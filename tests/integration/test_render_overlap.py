"""The render loop never waits for its own bookkeeping: while one pipeline call runs (on the
process's render thread), the session pulls, claims and moderates the next call's jobs, so the
GPU goes from one call straight to the next. Real Redis broker and result backend; the runner is
a stand-in that records when things happen (the real one is exercised by the worker tests)."""
from __future__ import annotations

import threading
import time

import redis

from jobs.celery_app import make_app, publish_render
from jobs.names import render_queue
from jobs.retry import RetryPolicy
from jobs.schemas import JobMessage, RenderRequest, Timings
from jobs.status import JobStatus
from jobs.store import JobStore
from worker.batching import STATS_GAP_KEY, STATS_GAPS_KEY, BatchSession
from worker.runner import Live, Outcome, Rendered

SMALL = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5}


class Verify:
    @staticmethod
    def verify(msg):
        return msg


class Ctx:
    messages = Verify()
    store = None


class RecordingRunner:
    """Admits everything, 'renders' by recording the call, delivers at once."""

    def __init__(self, call_size: int, store=None) -> None:
        self.ctx = Ctx()
        self.ctx.store = store
        self.call_size = call_size
        self.calls: list[list[str]] = []
        self.render_threads: set[int] = set()
        self.rendering: int | None = None
        self.admitted_during: dict[int, list[str]] = {}
        self.next_call_ready = threading.Event()
        self.overlapped: list[bool] = []

    def admit(self, msgs):
        if self.rendering is not None:
            got = self.admitted_during.setdefault(self.rendering, [])
            got += [m.job_id for m in msgs]
            if len(got) >= self.call_size:
                self.next_call_ready.set()
        return {}, [Live(m, None, time.time()) for m in msgs]

    def render_group(self, group, progress):
        self.render_threads.add(threading.get_ident())
        index = len(self.calls)
        self.calls.append([x.msg.job_id for x in group])
        self.rendering = index
        if index == 0:
            # The first call 'renders' until the next call's jobs are claimed and moderated (bounded:
            # without the overlap this waits out the timeout and the test fails).
            self.overlapped.append(self.next_call_ready.wait(60))
        self.rendering = None
        return [Rendered(x, [], Timings()) for x in group]

    def deliver(self, item):
        return Outcome(item.live.msg.job_id, JobStatus.SUCCEEDED)


def messages(n: int) -> list[JobMessage]:
    return [JobMessage(job_id=f"job_overlap{i:02d}", submitted_at=time.time(),
                       request=RenderRequest(prompt=f"a lamp {i}", model="tiny", seed=i, **SMALL)) for i in range(n)]


def session(app, runner, max_batch: int) -> BatchSession:
    return BatchSession(runner, app, render_queue("tiny"), max_batch=max_batch, window_ms=30, max_wait_ms=2000,
                        threads=2, max_pending=8, session_s=60, policy=RetryPolicy())


def test_the_next_call_is_claimed_and_moderated_while_the_current_one_renders(redis_url, settings_for, br_env):
    app = make_app(settings_for(br_env), broker_url=redis_url)
    msgs = messages(8)
    for m in msgs[1:]:
        publish_render(app, m)
    runner = RecordingRunner(call_size=4, store=JobStore.from_url(redis_url, 3600))
    outcome = session(app, runner, max_batch=4).run(msgs[0])

    assert outcome.status is JobStatus.SUCCEEDED
    assert runner.overlapped == [True], "the second call's jobs were not prepared during the first call"
    assert runner.admitted_during[0] == [m.job_id for m in msgs[4:]]
    assert runner.calls == [[m.job_id for m in msgs[:4]], [m.job_id for m in msgs[4:]]], "two full calls"
    r = redis.Redis.from_url(redis_url)
    assert r.llen(render_queue("tiny")) == 0 and r.hlen("unacked") == 0, "every pulled message acknowledged"
    assert int(r.get(STATS_GAPS_KEY)) == 1 and float(r.get(STATS_GAP_KEY)) >= 0, "the gap between the calls recorded"


def test_every_pipeline_call_of_a_process_runs_on_one_render_thread(redis_url, settings_for, br_env):
    """CUDA graphs captured by torch.compile belong to the thread that captured them; the calls of
    successive sessions (Celery tasks) must therefore come from one long-lived thread."""
    app = make_app(settings_for(br_env), broker_url=redis_url)
    runner = RecordingRunner(call_size=99, store=JobStore.from_url(redis_url, 3600))
    runner.next_call_ready.set()
    for m in messages(3):
        session(app, runner, max_batch=1).run(m)
    assert len(runner.calls) == 3
    assert len(runner.render_threads) == 1 and threading.get_ident() not in runner.render_threads


def test_a_session_that_fails_mid_call_lets_the_call_finish_before_requeueing_its_jobs(redis_url, settings_for, br_env):
    """Redis blips while the next call is being prepared: the session ends with the error, but only
    after the call in flight has finished, so its jobs are never rendered by this worker and by
    another at the same time; every pulled message is back on the queue."""
    import pytest

    app = make_app(settings_for(br_env), broker_url=redis_url)
    msgs = messages(8)
    for m in msgs[1:]:
        publish_render(app, m)
    failed = threading.Event()
    finished: list[int] = []

    class Failing(RecordingRunner):
        def admit(self, msgs_):
            if self.rendering is not None:
                failed.set()
                raise RuntimeError("Redis went away")
            return super().admit(msgs_)

        def render_group(self, group, progress):
            self.calls.append([x.msg.job_id for x in group])
            self.rendering = 0
            failed.wait(60)
            time.sleep(1)  # still rendering when the session fails (makes the old code fail for sure)
            finished.append(len(self.calls))
            return [Rendered(x, [], Timings()) for x in group]

    with pytest.raises(RuntimeError, match="Redis went away"):
        session(app, Failing(call_size=4), max_batch=4).run(msgs[0])
    assert finished == [1], "the session returned while its call was still rendering"
    r = redis.Redis.from_url(redis_url)
    assert r.llen(render_queue("tiny")) == 7 and r.hlen("unacked") == 0, "every pulled message requeued"


def test_retries_still_in_their_backoff_and_other_tasks_are_left_for_later(redis_url, settings_for, br_env):
    """A retry re-published with a countdown must wait out its backoff (Celery's consumer does
    that); a session pulling it straight from the queue leaves it there instead of running it."""
    app = make_app(settings_for(br_env), broker_url=redis_url)
    msgs = messages(3)
    publish_render(app, msgs[1], countdown=3600)
    app.send_task("batchrender.something_else", args=[], queue=render_queue("tiny"))
    publish_render(app, msgs[2])
    runner = RecordingRunner(call_size=99)
    runner.next_call_ready.set()
    session(app, runner, max_batch=4).run(msgs[0])
    assert [j for call in runner.calls for j in call] == [msgs[0].job_id, msgs[2].job_id]
    r = redis.Redis.from_url(redis_url)
    assert r.llen(render_queue("tiny")) == 2 and r.hlen("unacked") == 0, "both back on the queue, unacked by no one"
