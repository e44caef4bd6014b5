"""The suite's Redis (issue 26: ``make test`` used and flushed db 15 of whatever Redis answered on
6379, a user's included). Without ``BR_TEST_REDIS_URL`` a pytest session starts a private
redis-server of its own and stops it at the end; with it, that URL is used as told."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = '''
import os
import redis
import tests.conftest as c

def test_probe(redis_url):
    r = redis.Redis.from_url(redis_url)
    r.set("probe", "1")
    with open({out!r}, "w") as f:
        f.write(redis_url if {plain} else os.environ.get("PYTEST_XDIST_WORKER", "-") + " " + redis_url)
'''


def _write_session(tmp_path: Path, probes: int = 1, hold: bool = False, tagged: bool = False) -> list[Path]:
    """A pytest session in ``tmp_path`` whose tests each record the Redis URL they were given
    (then, with ``hold``, wait until they are killed)."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F401,F403\n"
                                          "from tests.conftest import pytest_configure, pytest_unconfigure  # noqa: F401\n")
    outs = [tmp_path / f"url-{i}.txt" for i in range(probes)]
    for i, out in enumerate(outs):
        text = PROBE.format(out=str(out), plain=not tagged) + ("    import time\n    time.sleep(600)\n" if hold else "")
        (tmp_path / f"test_probe_{i}.py").write_text(text)
    return outs


def _clean_env(env: dict) -> dict:
    """The nested session must not think it is one of this run's xdist workers."""
    return {k: v for k, v in env.items() if not k.startswith("PYTEST_XDIST") and k != "CI"} | {"PYTHONPATH": str(ROOT)}


def _session(tmp_path: Path, env: dict, *args: str, probes: int = 1) -> list[str]:
    """Run one pytest session whose tests record the Redis URL each was given."""
    outs = _write_session(tmp_path, probes, tagged=bool(args))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(tmp_path)],
                         cwd=tmp_path, env=_clean_env(env), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    return [out.read_text() for out in outs]


def _stopped(url: str) -> bool:
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=urlsplit(url).port, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        return True
    return False


def test_without_a_url_the_session_starts_and_stops_a_redis_of_its_own(tmp_path):
    import shutil

    import redis

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary")
    env = {k: v for k, v in os.environ.items() if k != "BR_TEST_REDIS_URL"}
    [url] = _session(tmp_path, env)
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port != 6379, url
    with pytest.raises(redis.ConnectionError):  # stopped with the session
        redis.Redis(host="127.0.0.1", port=parts.port, socket_connect_timeout=1).ping()


def test_a_given_url_is_used(tmp_path, redis_url):
    env = dict(os.environ, BR_TEST_REDIS_URL=redis_url)
    assert _session(tmp_path, env) == [redis_url]


def test_parallel_workers_each_start_a_redis_of_their_own(tmp_path):
    """``make test`` runs pytest-xdist workers: one database flushed by two workers' tests at once
    would break both, so each worker starts its own server, and each is stopped with its worker."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary")
    env = {k: v for k, v in os.environ.items() if k != "BR_TEST_REDIS_URL"}
    urls = _session(tmp_path, env, "-n", "2", probes=4)  # xdist's load scheduler gives each worker 2
    by_worker: dict[str, set[str]] = {}
    for line in urls:
        worker, url = line.split(" ", 1)
        by_worker.setdefault(worker, set()).add(url)
    assert sorted(by_worker) == ["gw0", "gw1"], by_worker
    assert all(len(u) == 1 for u in by_worker.values()), by_worker  # one server per worker
    urls = [u for us in by_worker.values() for u in us]
    ports = {urlsplit(u).port for u in urls}
    assert len(ports) == 2 and 6379 not in ports, urls
    assert all(_stopped(u) for u in urls), urls


def test_a_given_url_is_refused_with_parallel_workers(tmp_path, redis_url):
    _write_session(tmp_path)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", str(tmp_path)],
                         cwd=tmp_path, env=_clean_env(dict(os.environ, BR_TEST_REDIS_URL=redis_url)),
                         capture_output=True, text=True, timeout=180)
    assert run.returncode != 0 and "BR_TEST_REDIS_URL names one database" in run.stdout + run.stderr, run.stdout + run.stderr


def test_a_killed_session_takes_its_redis_with_it(tmp_path):
    """SIGKILL skips atexit and pytest_unconfigure: the server dies with its parent all the same."""
    import shutil
    import signal
    import time

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary")
    [out] = _write_session(tmp_path, hold=True)
    env = {k: v for k, v in os.environ.items() if k != "BR_TEST_REDIS_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, env=_clean_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            if out.exists() and out.read_text():
                break
            assert proc.poll() is None, "the session ended before its test recorded a URL"
            time.sleep(0.1)
        url = out.read_text()
        assert not _stopped(url)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    for _ in range(300):  # redis-server's SIGTERM shutdown takes a moment
        if _stopped(url):
            break
        time.sleep(0.1)
    assert _stopped(url), url
