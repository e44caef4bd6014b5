"""Shared fixtures. Real services only: a missing one skips locally but FAILS under CI=true."""
from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: The suite's Redis: ``BR_TEST_REDIS_URL`` when given (its database is flushed by the tests),
#: else a private redis-server that the session starts on a free port and stops at its end
#: (``pytest_configure``): the suite never touches a Redis it did not start unless told to.
TEST_REDIS_URL = os.environ.get("BR_TEST_REDIS_URL", "")
_PRIVATE_REDIS: dict = {}
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


def pytest_configure(config) -> None:
    """Start the session's private redis-server unless ``BR_TEST_REDIS_URL`` names one to use.

    In memory only (no RDB/AOF), bound to loopback, its files in a temporary directory. The URL
    is exported so every process the tests start (workers, the API, benchmarks) uses it too."""
    global TEST_REDIS_URL
    if hasattr(config, "workerinput"):
        # Parallel workers share the machine's cores: one torch/OpenMP thread per process (this
        # one and every worker it starts) instead of a pool per core in each, which oversubscribes
        # them. Pixels are compared only between processes of the same setting.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    workers = 0 if hasattr(config, "workerinput") else (config.getoption("numprocesses", None) or 0)
    if workers:  # pytest-xdist's controller runs no test: each of its workers starts a Redis of its own
        if TEST_REDIS_URL:
            raise pytest.UsageError("BR_TEST_REDIS_URL names one database, which parallel workers (-n) would "
                                    "flush under each other: unset it (each worker then starts a private "
                                    "redis-server) or run without -n")
        return
    if TEST_REDIS_URL or _PRIVATE_REDIS:
        return
    import atexit
    import shutil
    import subprocess
    import tempfile
    import time

    exe = shutil.which("redis-server")
    if exe is None:  # every Redis test then skips (fails under CI) naming what is missing
        TEST_REDIS_URL = "redis://127.0.0.1:1/15"
        _PRIVATE_REDIS["missing"] = "redis-server binary (for the suite's private Redis; or set BR_TEST_REDIS_URL)"
        return
    workdir = tempfile.mkdtemp(prefix="br-test-redis-")
    for _ in range(5):  # a free port may be taken between choosing and binding: try another
        port = free_port()
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", workdir, "--databases", "16"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        import redis

        client = redis.Redis(port=port, socket_connect_timeout=1)
        for _ in range(200):
            if proc.poll() is not None:
                break
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        client.close()
        if proc.poll() is None:
            break
    else:
        raise pytest.UsageError(f"the suite's private redis-server did not start (files in {workdir})")
    _PRIVATE_REDIS.update(proc=proc, dir=workdir)
    TEST_REDIS_URL = f"redis://127.0.0.1:{port}/15"
    os.environ["BR_TEST_REDIS_URL"] = TEST_REDIS_URL
    atexit.register(_stop_private_redis)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the pytest process that started it dies, even by
    SIGKILL or a SIGTERM that skips atexit (Linux PR_SET_PDEATHSIG; elsewhere nothing)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _stop_private_redis() -> None:
    proc = _PRIVATE_REDIS.pop("proc", None)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:  # noqa: BLE001
            proc.kill()
    workdir = _PRIVATE_REDIS.pop("dir", None)
    if workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def pytest_unconfigure(config) -> None:
    _stop_private_redis()


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

    require("missing" not in _PRIVATE_REDIS, _PRIVATE_REDIS.get("missing", ""))
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
