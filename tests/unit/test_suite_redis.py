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
import redis
import tests.conftest as c

def test_probe(redis_url):
    r = redis.Redis.from_url(redis_url)
    r.set("probe", "1")
    with open({out!r}, "w") as f:
        f.write(redis_url)
'''


def _session(tmp_path: Path, env: dict) -> str:
    """Run one pytest session whose only test records the Redis URL it was given."""
    out = tmp_path / "url.txt"
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F401,F403\n"
                                          "from tests.conftest import pytest_configure, pytest_unconfigure  # noqa: F401\n")
    (tmp_path / "test_probe.py").write_text(PROBE.format(out=str(out)))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_probe.py")],
                         cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return out.read_text()


def test_without_a_url_the_session_starts_and_stops_a_redis_of_its_own(tmp_path):
    import shutil

    import redis

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary")
    env = {k: v for k, v in os.environ.items() if k not in ("BR_TEST_REDIS_URL", "CI")}
    url = _session(tmp_path, env)
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port != 6379, url
    with pytest.raises(redis.ConnectionError):  # stopped with the session
        redis.Redis(host="127.0.0.1", port=parts.port, socket_connect_timeout=1).ping()


def test_a_given_url_is_used(tmp_path, redis_url):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["BR_TEST_REDIS_URL"] = redis_url
    assert _session(tmp_path, env) == redis_url
