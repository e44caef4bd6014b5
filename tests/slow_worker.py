"""A render worker whose pipeline calls wait at a gate: the "slow host" of the no-hoarding test.
Test-only: loaded with ``start_worker(env, app="tests.slow_worker")``, never by a real worker.

    BR_TEST_CALL_GATE   a file path: each pipeline call (after its jobs are claimed) waits while
                        the file exists, so the test decides how long a call takes
    BR_TEST_ADMITTED    a file path: the ids of jobs the worker has prepared for a call (stage 2:
                        checked and moderated) are appended to it, one a line
"""
from __future__ import annotations

import os
import time

from worker.app import app  # noqa: F401 - the app celery -A loads
from worker.runner import JobRunner

GATE = os.environ.get("BR_TEST_CALL_GATE", "")
ADMITTED = os.environ.get("BR_TEST_ADMITTED", "")

_render_call = JobRunner._render_call
_admit = JobRunner.admit


def _gated_render_call(self, *args, **kwargs):
    while GATE and os.path.exists(GATE):
        time.sleep(0.05)
    return _render_call(self, *args, **kwargs)


def _recorded_admit(self, msgs):
    out = _admit(self, msgs)
    if ADMITTED:
        with open(ADMITTED, "a") as f:
            f.writelines(f"{m.job_id}\n" for m in msgs)
    return out


JobRunner._render_call = _gated_render_call
JobRunner.admit = _recorded_admit
