"""No hoarding (issue 25): a busy worker does not hold the next call's jobs while another worker of
the model sits idle. Jobs pulled for a later call are not claimed until their call starts, and a
session hands the ones it has not started back to the queue when another worker is idle
(worker/batching.py, docs/scheduling.md). Real Redis, real ``celery worker`` processes."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import redis as redis_lib

from jobs import fairshare
from jobs.celery_app import make_app, publish_render
from jobs.names import job_key, render_queue
from jobs.retry import RetryPolicy
from jobs.schemas import JobMessage, RenderRequest, Timings
from jobs.status import JobStatus
from jobs.store import JobStore
from tests.workers import wait_for
from worker.batching import BatchSession
from worker.runner import Live, Outcome, Rendered

pytestmark = pytest.mark.timeout(400)
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
def r(redis_url):
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


# -- who is idle --------------------------------------------------------------------------------------
def test_an_idle_worker_counts_for_the_others_once_it_has_waited_and_only_while_the_queue_is_empty(r):
    fairshare.idle_beat(r, ["tiny"], "host-b:2", idle=True)
    assert fairshare.others_idle(r, "tiny", "host-a:1", grace_s=3600) == 0, "idle for less than the grace"
    assert fairshare.others_idle(r, "tiny", "host-a:1", grace_s=0) == 1
    assert fairshare.others_idle(r, "tiny", "host-b:2", grace_s=0) == 0, "a worker is not idle for itself"
    assert fairshare.others_idle(r, "sdxl", "host-a:1", grace_s=0) == 0, "idle for its own models only"
    r.lpush(render_queue("tiny"), "{}")
    assert fairshare.others_idle(r, "tiny", "host-a:1", grace_s=0) == 0, "messages wait: it is not taking any"
    r.delete(render_queue("tiny"))
    fairshare.idle_beat(r, ["tiny"], "host-b:2", idle=False)
    assert fairshare.others_idle(r, "tiny", "host-a:1", grace_s=0) == 0, "busy again"


def test_an_idle_mark_that_is_not_renewed_is_a_worker_gone(r):
    fairshare.idle_beat(r, ["tiny"], "host-b:2", idle=True)
    assert fairshare.others_idle(r, "tiny", "host-a:1", grace_s=0, stale_s=0) == 0
    assert not r.exists(fairshare.idle_key("tiny")), "the dead worker's mark is dropped"


def test_an_idle_mark_keeps_the_time_it_was_first_set(r):
    fairshare.idle_beat(r, ["tiny"], "host-b:2", idle=True)
    since = r.zscore(fairshare.idle_key("tiny"), "host-b:2")
    fairshare.idle_beat(r, ["tiny"], "host-b:2", idle=True)
    assert r.zscore(fairshare.idle_key("tiny"), "host-b:2") == since


# -- a session hands back what it holds ----------------------------------------------------------------
class Verify:
    @staticmethod
    def verify(msg):
        return msg


class Ctx:
    messages = Verify()
    store = None


class OtherWorkerIdle:
    """``give_way`` as the test sets it: another worker is idle once ``on`` is set."""

    def __init__(self) -> None:
        self.on = threading.Event()

    def busy(self) -> None:
        pass

    def __call__(self) -> bool:
        return self.on.is_set()


def test_a_session_hands_the_jobs_it_holds_for_its_next_call_back_when_another_worker_is_idle(
        redis_url, settings_for, br_env, r):
    """Its first call renders; it gathers a full next call meanwhile; another worker turns idle:
    the held jobs go back on the queue (not acknowledged, not lost, not doubled) and the session
    ends after its one call instead of rendering them."""
    app = make_app(settings_for(br_env), broker_url=redis_url)
    msgs = [JobMessage(job_id=f"job_hoard{i}", submitted_at=time.time(),
                       request=RenderRequest(prompt=f"a lamp {i}", model="tiny", seed=i, guidance_scale=7.5, **SMALL))
            for i in range(5)]
    other = OtherWorkerIdle()
    admitted: list[str] = []
    calls: list[list[str]] = []

    class Runner:
        ctx = Ctx()

        def admit(self, batch):
            admitted.extend(m.job_id for m in batch)
            return {}, [Live(m, None, time.time()) for m in batch]

        def render_group(self, group, progress):
            calls.append([x.msg.job_id for x in group])
            if len(calls) == 1:
                wait_for(lambda: len(admitted) == 5, timeout=60, what="the next call gathered")
                other.on.set()
                wait_for(lambda: r.llen(render_queue("tiny")) == 4, timeout=60, what="the held jobs handed back")
            return [Rendered(x, [], Timings()) for x in group]

        def deliver(self, item):
            return Outcome(item.live.msg.job_id, JobStatus.SUCCEEDED)

    session = BatchSession(Runner(), app, render_queue("tiny"), max_batch=4, window_ms=30, max_wait_ms=2000,
                           threads=2, max_pending=8, session_s=60, policy=RetryPolicy(), give_way=other)
    publishing = threading.Timer(0.5, lambda: [publish_render(app, m) for m in msgs[1:]])
    publishing.start()
    outcome = session.run(msgs[0])
    publishing.join()
    assert outcome.status is JobStatus.SUCCEEDED
    assert calls == [[msgs[0].job_id]], "the held jobs were rendered by the busy worker"
    assert r.llen(render_queue("tiny")) == 4 and r.hlen("unacked") == 0, "each held job back on the queue once"


# -- two real workers, one slow ----------------------------------------------------------------------------
def test_jobs_held_by_a_slow_worker_are_rendered_by_the_idle_one(br_env, client_for, start_worker, tmp_path):
    """The slow worker's call waits at a gate while it gathers the next call's four jobs; the fast
    worker starts and sits idle. The four are not claimed while they wait, and the fast worker
    renders them (job records name the worker that claimed them), without the slow call ending."""
    gate, admitted = tmp_path / "gate", tmp_path / "admitted"
    gate.touch()
    env = {**br_env, "BATCHRENDER_MAX_BATCH": "4"}
    client = client_for(env)
    slow = start_worker({**env, "BR_TEST_CALL_GATE": str(gate), "BR_TEST_ADMITTED": str(admitted)},
                        queues="render.tiny", app="tests.slow_worker")
    first = client.submit({"prompt": "a lighthouse", "seed": 1, **SMALL})
    wait_for(lambda: client.status(first).status is JobStatus.RUNNING, timeout=120, what="the slow call to start")
    held = client.submit_batch([{"prompt": f"a harbour {i}", "seed": 10 + i, **SMALL} for i in range(4)]).job_ids

    def prepared() -> bool:
        return admitted.exists() and set(held) <= set(admitted.read_text().split())

    wait_for(prepared, timeout=120, what="the slow worker to gather the next call")
    statuses = {client.status(j).status for j in held}
    assert statuses == {JobStatus.QUEUED}, f"gathered for the next call but already claimed: {statuses}"

    fast = start_worker(env, queues="render.tiny")
    try:
        wait_for(lambda: all(client.status(j).status.terminal for j in held), timeout=150,
                 what="the held jobs to end while the slow call still runs")
    except TimeoutError:
        pass  # the assertions below say who rendered them
    finally:
        gate.unlink()
    recs = [client.wait(j, timeout=120) for j in [first, *held]]
    assert all(rec.status is JobStatus.SUCCEEDED and rec.attempts == 1 for rec in recs), [x.to_dict() for x in recs]
    host = socket.gethostname()
    by = {j: client.store.r.hget(job_key(j), "worker") for j in [first, *held]}
    assert by[first] == f"{host}:{slow.proc.pid}"
    assert [by[j] for j in held] == [f"{host}:{fast.proc.pid}"] * 4, \
        f"rendered by the slow worker while the fast one sat idle: {by} (slow {slow.proc.pid}, fast {fast.proc.pid})"
