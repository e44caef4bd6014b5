"""Shared fixtures. Real services only: a missing one skips locally but FAILS under CI=true."""
from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: The suite's Redis (make test points this at a private instance when 6379 is not reachable).
TEST_REDIS_URL = os.environ.get("BR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
#: With BATCHRENDER_REDIS_URL set every process must be given the same message-signing and secrets
#: keys, and development C2PA keys must be asked for (jobs/signing.py, provenance/c2pa_sign.py):
#: fixed test keys for every environment of the suite that sets a Redis URL.
TEST_KEYS = {
    "BATCHRENDER_MESSAGE_SIGNING_KEY": "test-message-signing-key-not-for-production",
    "BATCHRENDER_SECRETS_KEY": "YmF0Y2hyZW5kZXItdGVzdC1zZWNyZXRzLWtleS0zMmI=",
    "BATCHRENDER_C2PA_ALLOW_DEV_KEYS": "true",
}
#: The same as ``Settings(...)`` keyword arguments.
TEST_KEY_SETTINGS = {k.removeprefix("BATCHRENDER_").lower(): v for k, v in TEST_KEYS.items()}


def require(ok: bool, what: str) -> None:
    """Skip when a service is missing, except under CI where that is a failure."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required service missing under CI: {what}")
    pytest.skip(f"service missing: {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url() -> str:
    """A dedicated Redis database, flushed before and after each test."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        require(False, f"Redis at {TEST_REDIS_URL}")
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on loopback (moto server). Path-style addressing.

    moto does not enforce credentials, checksums or presigned-URL expiry: never test those here.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        require(False, "moto[server]")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny random-weight pipeline, written once per session through the real save path."""
    pytest.importorskip("diffusers")
    from worker.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def br_env(tmp_path, redis_url, tiny_model_dir):
    """Environment for worker processes and clients of one test: its own home, storage and Redis db."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny").symlink_to(tiny_model_dir)
    env = {
        "BATCHRENDER_HOME": str(home),
        "BATCHRENDER_REDIS_URL": redis_url,
        "BATCHRENDER_STORAGE_URL": (tmp_path / "out").as_uri(),
        "BATCHRENDER_STORAGE_SHARED": "1",  # one host: every process of the test sees this directory
        "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        **TEST_KEYS,
    }
    return env


@pytest.fixture
def tenants(redis_url, br_env):
    """``producer.tenants.Tenants`` on the test's Redis and home: ``tenants.create(name)`` gives an
    API key (its webhook secret encrypted with the home's key, as the test's workers read it)."""
    import redis

    from jobs.settings import Settings
    from producer.tenants import Tenants

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield Tenants(r, Settings.from_env(br_env))
    r.close()


@pytest.fixture
def settings_for():
    """Build Settings from a test env dict (the way worker processes do: from the environment)."""
    from jobs.settings import Settings

    def build(env: dict[str, str], **overrides):
        return Settings.from_env(env, **overrides)

    return build


@pytest.fixture
def client(br_env, settings_for):
    """A producer Client for the test's environment (its Redis db, home and storage)."""
    from producer.client import Client

    c = Client(settings_for(br_env))
    yield c
    c.close()


@pytest.fixture
def client_for(settings_for):
    """``client_for(env) -> Client`` for another environment of the same test; closed at the end."""
    from producer.client import Client

    made = []

    def make(env):
        c = Client(settings_for(env))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def start_worker(tmp_path):
    """Start real celery worker processes; all are stopped at the end of the test."""
    from tests.workers import WorkerProcess

    started: list[WorkerProcess] = []

    def start(env: dict[str, str], queues: str = "render.tiny,webhooks", ready: bool = True, **kw) -> WorkerProcess:
        w = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", queues=queues, **kw)
        started.append(w)
        return w.wait_ready() if ready else w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own (persisted, killable, restartable on the same port)."""
    import shutil

    from tests.workers import RedisServer

    require(shutil.which("redis-server") is not None, "redis-server binary")
    server = RedisServer(free_port(), tmp_path / "redis").start()
    yield server
    server.stop()
