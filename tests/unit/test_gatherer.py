"""The gatherer's adaptive window, on a scripted queue and a fake clock (no timing assumptions):
a burst that is still arriving fills the call; a queue that stopped growing does not hold it; the
wait is bounded."""
from __future__ import annotations

import pytest

from worker.batching import Gatherer


class Script:
    """A queue whose messages arrive at given times on a fake clock; sleeping advances the clock."""

    def __init__(self, arrivals: list[float]) -> None:
        self.arrivals = sorted(arrivals)
        self.now = 0.0

    def basic_get(self, queue, no_ack=False):
        if self.arrivals and self.arrivals[0] <= self.now:
            return self.arrivals.pop(0)
        return None

    def sleep(self, s: float) -> None:
        self.now += s


def gatherer(script: Script) -> Gatherer:
    g = Gatherer.__new__(Gatherer)
    g.queue, g.channel, g.gap_s, g.last_arrival, g.deferred = "render.tiny", script, 0.0, None, []
    g.refill, g._refill_idle_until = None, 0.0
    g.clock, g.sleep = (lambda: script.now), script.sleep
    g._parse = lambda message: message  # the arrival time stands in for the message
    return g


def test_a_burst_still_arriving_fills_the_call():
    script = Script([i * 0.02 for i in range(40)])  # one every 20 ms, quieter than the 30 ms window never
    got = gatherer(script).pull(32, quiet_s=0.03, max_wait_s=2.0)
    assert len(got) == 32


def test_a_slower_trickle_is_learned_and_still_fills_calls():
    script = Script([i * 0.05 for i in range(200)])  # one every 50 ms: longer than the 30 ms window
    g = gatherer(script)
    sizes = [len(g.pull(8, quiet_s=0.03, max_wait_s=2.0)) for _ in range(12)]
    assert sizes[0] < 8, "the first pull cannot know the gap yet"
    assert all(n == 8 for n in sizes[3:]), sizes  # once the gap is known, every call is full


def test_a_queue_that_stopped_growing_does_not_hold_the_call():
    script = Script([0.0, 0.001, 0.002, 5.0])
    got = gatherer(script).pull(32, quiet_s=0.03, max_wait_s=2.0)
    assert len(got) == 3 and script.now < 0.1


def test_the_wait_is_bounded_by_max_wait():
    script = Script([i * 0.5 for i in range(20)])  # a very slow trickle
    g = gatherer(script)
    g.gap_s = 0.5  # learned: 2.5 x gap would be 1.25 s per arrival
    start = script.now
    got = g.pull(32, quiet_s=0.03, max_wait_s=1.0)
    assert script.now - start <= 1.0 + 0.01 and 1 <= len(got) < 32


def test_jobs_arriving_a_second_apart_are_not_waited_for():
    """Not a burst: a lone job after a pause renders after the quiet window, not seconds later."""
    script = Script([i * 1.0 for i in range(6)])
    g = gatherer(script)
    for i in range(5):
        script.now = max(script.now, i * 1.0)
        before = script.now
        assert len(g.pull(8, quiet_s=0.03, max_wait_s=2.0)) == 1
        assert script.now - before <= 0.03 + 0.005
    assert g.gap_s == 0.0


@pytest.mark.parametrize("queued", [0, 5])
def test_an_empty_or_short_backlog_returns_after_the_quiet_window(queued):
    script = Script([0.0] * queued)
    got = gatherer(script).pull(32, quiet_s=0.03, max_wait_s=2.0)
    assert len(got) == queued and script.now == pytest.approx(0.03, abs=0.005)


# -- while the GPU renders the previous call (``busy``) ---------------------------------------------


def test_while_the_gpu_is_busy_the_pull_collects_what_arrives_and_hands_it_over():
    """Arrivals slower than any window: without a busy GPU each would be a call of its own; while
    it renders (3 s here) the session keeps pulling, so the next call holds all of them."""
    script = Script([i * 0.2 for i in range(8)])
    g = gatherer(script)
    got: list = []
    while len(got) < 8:
        more = g.pull(8 - len(got), quiet_s=0.03, max_wait_s=2.0, busy=lambda: script.now < 3.0)
        if not more:
            break
        got += more
    assert len(got) == 8 and script.now < 3.0


def test_a_paused_queue_is_handed_over_while_the_gpu_is_still_busy():
    """What has arrived is returned once the queue pauses, so it can be claimed and moderated
    before the GPU needs it; the GPU is still busy at that point."""
    script = Script([0.0, 0.001, 0.002])
    got = gatherer(script).pull(32, quiet_s=0.03, max_wait_s=2.0, busy=lambda: script.now < 10.0)
    assert len(got) == 3 and script.now < 0.1


def test_once_the_gpu_is_free_a_queue_that_stopped_growing_does_not_hold_the_call():
    script = Script([0.0])
    g = gatherer(script)
    assert len(g.pull(32, quiet_s=0.03, max_wait_s=2.0)) == 1
    script.now = 0.5  # the GPU rendered that job; nothing arrived meanwhile
    got = g.pull(32, quiet_s=0.03, max_wait_s=2.0, busy=lambda: script.now < 1.0)
    assert got == [] and script.now == pytest.approx(1.0, abs=0.02), "returns as soon as the GPU is free"


def test_a_burst_still_arriving_when_the_gpu_frees_up_is_still_collected():
    script = Script([0.99 + i * 0.02 for i in range(10)])
    got = gatherer(script).pull(10, quiet_s=0.03, max_wait_s=2.0, busy=lambda: script.now < 1.0)
    assert len(got) == 10


def test_on_a_gpu_the_next_call_does_not_wait_for_the_previous_calls_uploads():
    from worker.batching import postprocess_limit

    assert postprocess_limit(8, 32, "cuda") == 40, "a whole call plus the queue"
    assert postprocess_limit(8, 32, "cuda:1") == 40
    assert postprocess_limit(8, 32, "cpu") == 8, "on CPU render and post-processing share the cores"
    assert postprocess_limit(0, 4, "cpu") == 1


def test_a_busy_wait_settles_finished_deliveries_between_polls():
    script = Script([])
    calls = []
    gatherer(script).pull(8, quiet_s=0.03, max_wait_s=2.0, busy=lambda: script.now < 0.5,
                          on_wait=lambda: calls.append(script.now))
    assert len(calls) >= 10, "deliveries are settled while the GPU renders"


def test_a_retry_held_for_its_countdown_is_taken_up_once_the_countdown_has_passed():
    from datetime import datetime, timedelta, timezone

    from jobs.names import RENDER_TASK

    class Message:
        def __init__(self, task, eta):
            self.headers = {"task": task, "eta": eta.isoformat() if eta else None}

    now = datetime.now(timezone.utc)
    past, future = Message(RENDER_TASK, now - timedelta(seconds=1)), Message(RENDER_TASK, now + timedelta(hours=1))
    other = Message("something.else", None)
    g = gatherer(Script([]))
    g.deferred = [past, future, other]
    got = g.pull(8, quiet_s=0.03, max_wait_s=2.0)
    assert got == [past] and g.deferred == [future, other]


# -- no hoarding: another worker is idle (``stop``) ---------------------------------------------------


def test_a_pull_takes_nothing_while_another_worker_is_idle():
    """Messages waiting are the idle worker's: a busy session's pull leaves them on the queue."""
    script = Script([0.0] * 5)
    got = gatherer(script).pull(8, quiet_s=0.03, max_wait_s=2.0, busy=lambda: True, stop=lambda: True)
    assert got == [] and len(script.arrivals) == 5


def test_a_pull_returns_what_it_has_once_another_worker_turns_idle():
    script = Script([i * 0.01 for i in range(20)])
    got = gatherer(script).pull(8, quiet_s=0.03, max_wait_s=2.0, busy=lambda: True,
                                stop=lambda: script.now >= 0.05)
    assert 1 <= len(got) < 8 and script.now < 0.1, "handed over at once, not after the window or the call"


def test_give_way_asks_redis_at_most_every_quarter_second_and_keeps_the_jobs_when_it_cannot():
    from worker.batching import GiveWay

    asked = []

    class Redis:
        def eval(self, *args):
            asked.append(args)
            if len(asked) > 1:
                raise ConnectionError("Redis away")
            return 1

    now = [0.0]
    g = GiveWay(Redis(), "tiny", "host-a:1")
    g.clock = lambda: now[0]
    assert g() is True and g() is True and len(asked) == 1
    now[0] = 0.3
    assert g() is False, "Redis cannot say: keep the jobs, as before"
