"""Shared state is shared (issue 25): local storage with a shared Redis refused unless declared, the
marker check's verdicts, and the clock-skew verdict (its Redis read is tested for real in
tests/integration/test_shared_state.py)."""
from __future__ import annotations

import json

import pytest

from jobs.errors import ConfigurationError
from jobs.settings import Settings
from producer.clock_skew import Skew, verdict
from storage import open_storage
from storage.local import LocalStorage
from storage.shared_check import MARKERS_KEY, require_shared_storage, verify_markers, write_marker

REDIS = "redis://10.0.0.5:6379/0"


@pytest.mark.parametrize("storage_url", [None, "file:///srv/renders"])
def test_local_storage_with_a_shared_redis_is_refused_naming_both_fixes(tmp_path, storage_url):
    settings = Settings(home=tmp_path, redis_url=REDIS, storage_url=storage_url)
    for refuse in (require_shared_storage, open_storage):
        with pytest.raises(ConfigurationError) as e:
            refuse(settings)
        assert "s3://bucket/prefix" in e.value.message and "BATCHRENDER_STORAGE_SHARED=1" in e.value.message
        assert settings.resolved_storage_url in e.value.message and "output_not_found" in e.value.message


def test_declared_shared_mount_s3_and_the_embedded_broker_are_accepted(tmp_path):
    require_shared_storage(Settings(home=tmp_path, redis_url=REDIS, storage_shared=True))
    require_shared_storage(Settings(home=tmp_path, redis_url=REDIS, storage_url="s3://bucket/renders"))
    require_shared_storage(Settings(home=tmp_path))  # embedded Redis: one host by construction
    assert isinstance(open_storage(Settings(home=tmp_path, redis_url=REDIS, storage_shared=True)), LocalStorage)
    assert Settings.from_env({"BATCHRENDER_STORAGE_SHARED": "1"}).storage_shared


class FakeRedis:
    """Just the commands the marker check uses (the real thing: tests/integration/test_shared_state.py)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now, self.h = now, {}

    def time(self):
        return int(self.now), int((self.now % 1) * 1e6)

    def hgetall(self, key):
        return dict(self.h.get(key, {}))

    def hdel(self, key, *fields):
        for f in fields:
            self.h.get(key, {}).pop(f, None)

    def pipeline(self):
        outer = self

        class P:
            def hset(self, key, field, value):
                outer.h.setdefault(key, {})[field] = value

            def expire(self, *a):
                pass

            def execute(self):
                pass
        return P()


def test_marker_readable_passes_and_unreadable_names_the_worker(tmp_path):
    r = FakeRedis()
    a, b = LocalStorage(tmp_path / "a"), LocalStorage(tmp_path / "b")
    write_marker(a, r, "render-1@host-b", (tmp_path / "a").as_uri())
    assert "render-1@host-b" in verify_markers(a, r, (tmp_path / "a").as_uri())
    with pytest.raises(RuntimeError) as e:
        verify_markers(b, r, (tmp_path / "b").as_uri())
    text = str(e.value)
    assert text.startswith("storage is not shared between this API and worker render-1@host-b")
    assert (tmp_path / "b").as_uri() in text and (tmp_path / "a").as_uri() in text


def test_stale_markers_are_not_checked_and_an_older_leftover_proves_nothing(tmp_path):
    r = FakeRedis()
    a, b = LocalStorage(tmp_path / "a"), LocalStorage(tmp_path / "b")
    write_marker(b, r, "w@old", "file:///b")  # a leftover in b from an earlier run...
    write_marker(a, r, "w@old", "file:///a")  # ...then the worker wrote to a: b's copy is older
    with pytest.raises(RuntimeError, match="worker w@old"):
        verify_markers(b, r, "file:///b")
    r.now += 3600  # the worker stopped an hour ago: its marker is stale, not a finding
    assert "no worker has written" in verify_markers(b, r, "file:///b")
    assert json.loads(r.h[MARKERS_KEY]["w@old"])["host"]


def test_skew_verdict_names_the_offset_and_the_host():
    ok, detail = verdict(Skew(offset_s=0.004, rtt_s=0.0003), "api-1")
    assert ok and "api-1" in detail and "0.004 s ahead of Redis TIME" in detail
    ok, detail = verdict(Skew(offset_s=-5.25, rtt_s=0.001), "api-1")
    assert not ok and "5.250 s behind Redis TIME" in detail and "more than 1 s" in detail
    # The round trip bounds what can be told apart: 1.2 s offset over a 1 s round trip is within it.
    assert verdict(Skew(offset_s=1.2, rtt_s=1.0), "h")[0]
