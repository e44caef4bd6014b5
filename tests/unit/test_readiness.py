"""``producer.health.Readiness``: one check at a time, its report reused, probes never stuck.

The crowd itself, against a real API process and broker, is in
tests/integration/test_api_connections.py."""
from __future__ import annotations

import asyncio
import threading
import time

from producer.health import Readiness


class Check:
    """A readiness computation that counts its runs and how many ran at once."""

    def __init__(self, seconds: float = 0.0, release: threading.Event | None = None, fail: bool = False):
        self.seconds, self.release, self.fail = seconds, release, fail
        self.calls = self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self.release is not None:
                assert self.release.wait(30)
            time.sleep(self.seconds)
            if self.fail:
                raise ConnectionError("broker unreachable")
            return {"ready": True, "checks": {"n": {"ok": True, "detail": str(self.calls)}}}
        finally:
            with self.lock:
                self.running -= 1


def test_a_crowd_of_probes_runs_one_check_and_shares_its_report():
    check = Check(seconds=0.3)
    ready = Readiness(check, ttl_s=60)

    async def crowd():
        return await asyncio.gather(*(ready.report() for _ in range(200)))

    reports = asyncio.run(crowd())
    assert check.calls == 1 and check.most == 1
    assert all(r["ready"] and r["checks"]["n"]["detail"] == "1" for r in reports)


def test_the_report_is_reused_until_it_is_older_than_the_ttl():
    check = Check()
    ready = Readiness(check, ttl_s=0.5)
    first = asyncio.run(ready.report())
    assert asyncio.run(ready.report()) is first and check.calls == 1
    time.sleep(0.6)
    assert asyncio.run(ready.report())["checks"]["n"]["detail"] == "2" and check.calls == 2


def test_a_hung_check_gets_a_bounded_503_and_is_never_run_twice_at_once():
    release = threading.Event()
    check = Check(release=release)
    ready = Readiness(check, ttl_s=0, wait_s=0.2)

    async def twice():
        return await asyncio.gather(ready.report(), ready.report())

    started = time.monotonic()
    late = asyncio.run(twice())
    assert time.monotonic() - started < 10
    for report in late:
        assert not report["ready"] and "not finished within 0.2 s" in report["checks"]["readiness"]["detail"]
    assert not asyncio.run(ready.report())["ready"], "still under way: no second check"
    assert check.calls == 1
    release.set()
    deadline = time.monotonic() + 10
    while check.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert asyncio.run(ready.report())["ready"] and check.most == 1


def test_a_check_that_raises_is_a_named_not_ready_report():
    report = asyncio.run(Readiness(Check(fail=True), ttl_s=5).report())
    assert report["ready"] is False
    assert report["checks"]["readiness"] == {"ok": False, "detail": "ConnectionError: broker unreachable"}
