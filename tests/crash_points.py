"""A render worker that dies (``os._exit``, like a SIGKILL: no ack, no cleanup) at one named
point, once. Tests of what a crash at that exact point leaves behind run it with
``start_worker(env, app="tests.crash_points")`` and the environment variables below.

    BR_TEST_CRASH_AT    after_terminal_transition   the job's record says it ended; no event sent
                        after_claim                 a worker took the job (attempts counted), then died
                        before_unacked              a worker popped a redelivered render message off
                                                    the queue and died before kombu recorded it as
                                                    unacknowledged: the message is gone
                        after_store                 a worker stored a job's image (and its thumbnail),
                                                    then died before recording it
    BR_TEST_CRASH_MARK  a file path: created when the crash happens, so it happens only once
    BR_TEST_CRASH_TIMES crash this many times (marks MARK, MARK.2, ...), one per worker; default 1
"""
from __future__ import annotations

import os

from jobs.status import TERMINAL
from jobs.store import JobStore
from worker.app import app  # noqa: F401 - the app celery -A loads

POINT = os.environ.get("BR_TEST_CRASH_AT", "")
MARK = os.environ.get("BR_TEST_CRASH_MARK", "")
TIMES = int(os.environ.get("BR_TEST_CRASH_TIMES", "1"))


def _first_time() -> bool:
    """True for the first ``TIMES`` calls across all worker processes (one mark file each)."""
    for n in range(1, TIMES + 1):
        try:
            fd = os.open(MARK if n == 1 else f"{MARK}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return True
    return False


if POINT == "after_terminal_transition":
    _transition = JobStore.transition

    def transition(self, job_id, to, allowed_from, **fields):
        t = _transition(self, job_id, to, allowed_from, **fields)
        if t.ok and to in TERMINAL and _first_time():
            os._exit(9)
        return t

    JobStore.transition = transition


if POINT == "after_claim":
    from worker.runner import JobRunner

    _claim = JobRunner.claim

    def claim(self, msg):
        outcome = _claim(self, msg)
        if outcome is None and _first_time():
            os._exit(9)
        return outcome

    JobRunner.claim = claim


if POINT == "after_store":
    import worker.runner

    _deliver_image = worker.runner.deliver_image

    def deliver_image(*args, **kwargs):
        delivered = _deliver_image(*args, **kwargs)
        if _first_time():
            os._exit(9)
        return delivered

    worker.runner.deliver_image = deliver_image


if POINT == "before_unacked":
    # kombu's Redis transport pops a message (BRPOP, or RPOP for basic_get) and records it in its
    # unacked hash with a second command; a worker killed in between takes the message with it.
    from kombu.transport import redis as kombu_redis

    from jobs.names import RENDER_TASK

    _append = kombu_redis.QoS.append

    def append(self, message, delivery_tag):
        headers = message.headers or {}
        if headers.get("task") == RENDER_TASK and headers.get("redelivered") and _first_time():
            os._exit(9)
        return _append(self, message, delivery_tag)

    kombu_redis.QoS.append = append
