"""A render worker that dies (``os._exit``, like a SIGKILL: no ack, no cleanup) at one named
point, once. Tests of what a crash at that exact point leaves behind run it with
``start_worker(env, app="tests.crash_points")`` and the environment variables below.

    BR_TEST_CRASH_AT    after_terminal_transition   the job's record says it ended; no event sent
    BR_TEST_CRASH_MARK  a file path: created when the crash happens, so it happens only once
"""
from __future__ import annotations

import os

from jobs.status import TERMINAL
from jobs.store import JobStore
from worker.app import app  # noqa: F401 - the app celery -A loads

POINT = os.environ.get("BR_TEST_CRASH_AT", "")
MARK = os.environ.get("BR_TEST_CRASH_MARK", "")


def _first_time() -> bool:
    try:
        fd = os.open(MARK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


if POINT == "after_terminal_transition":
    _transition = JobStore.transition

    def transition(self, job_id, to, allowed_from, **fields):
        t = _transition(self, job_id, to, allowed_from, **fields)
        if t.ok and to in TERMINAL and _first_time():
            os._exit(9)
        return t

    JobStore.transition = transition
