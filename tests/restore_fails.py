"""A render worker whose channel cannot give its held messages back when it closes.

When the broker connection drops, Celery closes the channel and kombu puts the channel's held
messages (retries waiting for their ETA, jobs a batching session pulled) back on their queues. If
Redis is still away after jobs/celery_app.py's ~20 s of retries, that raises ``ConnectionError``.
Here the first give-back of a message fails that way, so a test can make the state with a 2 s
outage: ``start_worker(env, app="tests.restore_fails")``. Later give-backs work.
"""
from __future__ import annotations

import threading

import redis
from kombu.transport import redis as kombu_redis

from worker.app import app  # noqa: F401 - the app celery -A loads

_restore_by_tag = kombu_redis.QoS.restore_by_tag
_failed = threading.Event()


def restore_by_tag(self, tag, client=None, leftmost=False):
    if not _failed.is_set():
        _failed.set()
        raise redis.exceptions.ConnectionError("Redis is still away (injected by tests/restore_fails.py)")
    return _restore_by_tag(self, tag, client=client, leftmost=leftmost)


kombu_redis.QoS.restore_by_tag = restore_by_tag
