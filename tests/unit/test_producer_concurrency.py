"""Found by CI under load (tests/integration/test_hostile_input.py): the API's rate limiter
trusted each caller's clock, and a cold client built its moderation chain once per thread."""
from __future__ import annotations

import itertools
import threading
import time

import redis

from tests.conftest import TEST_KEY_SETTINGS


def test_the_rate_bucket_does_not_trust_the_callers_clock(redis_url, tmp_path, monkeypatch):
    """Readings that reach Redis out of order (a stalled thread, API hosts seconds apart) once took
    (delay x rate) tokens away: 60 requests within a burst of 60 got 429s."""
    import producer.tenants
    from jobs.settings import Settings
    from producer.tenants import Tenants

    skew = itertools.cycle([0.0, -3.0, 5.0, -10.0])
    real = time.time
    monkeypatch.setattr(producer.tenants.time, "time", lambda: real() + next(skew))
    t = Tenants(redis.Redis.from_url(redis_url), Settings(home=tmp_path, redis_url=redis_url, **TEST_KEY_SETTINGS))
    got = [t.allow("ten_clock", 10_000, 60)[0] for _ in range(60)]
    assert all(got), f"{got.count(False)} of 60 refused within the burst"
    assert t.allow("ten_slow", 0.001, 2)[0] and t.allow("ten_slow", 0.001, 2)[0]
    allowed, wait = t.allow("ten_slow", 0.001, 2)
    assert not allowed and wait > 0, "the bucket still empties"


def test_a_cold_client_builds_its_moderation_chain_once(redis_url, tmp_path, monkeypatch):
    import safety.chain
    from jobs.settings import Settings
    from producer.client import Client

    built = []
    real = safety.chain.ModerationChain.producer_side

    def slow(settings):
        built.append(1)
        time.sleep(0.2)
        return real(settings)

    monkeypatch.setattr(safety.chain.ModerationChain, "producer_side", staticmethod(slow))
    client = Client(Settings(home=tmp_path, redis_url=redis_url, **TEST_KEY_SETTINGS))
    try:
        chains = []
        threads = [threading.Thread(target=lambda: chains.append(client.moderation)) for _ in range(20)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(built) == 1 and len({id(c) for c in chains}) == 1
    finally:
        client.close()
