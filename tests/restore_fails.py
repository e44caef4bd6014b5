"""A render worker that cannot give its held messages back when its broker connection drops.

When the connection drops, Celery closes the channel and kombu puts the channel's unacknowledged
messages (retries held until their ETA, jobs a batching session pulled) back on their queues. If
Redis is still away after jobs/celery_app.py's ~20 s of retries, that raises ``ConnectionError``
(which Celery's close path ignores) and the messages stay in Redis's unacked set, held by no one.
Here that failure is injected, so a test can make the state with a 2 s outage:
``start_worker(env, app="tests.restore_fails")``.
"""
from __future__ import annotations

import redis
from kombu.transport import redis as kombu_redis

from worker.app import app  # noqa: F401 - the app celery -A loads


def restore_unacked(self, client=None):
    raise redis.exceptions.ConnectionError("Redis is still away (injected by tests/restore_fails.py)")


kombu_redis.QoS.restore_unacked = restore_unacked
