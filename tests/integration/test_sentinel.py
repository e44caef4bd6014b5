"""Issue 25: Redis Sentinel, with real processes. A primary and a replica (``requirepass`` and
``masterauth``), three sentinels, a real worker and producer on the ``sentinel://`` URL; the
primary is SIGKILLed mid-work and the sentinels promote the replica. Every job accepted before,
during and after the failover ends ``succeeded`` exactly once (one ``job.succeeded`` event each),
and the worker lives on. Also: a server that turns into a replica under a fixed ``redis://``
address (``READONLY``) is "Redis is away", not a worker crash; readyz/doctor say which server is
not the master; bad Sentinel settings are refused with the fix named.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib

from jobs.status import JobStatus
from tests.conftest import free_port, require
from tests.sentinels import MASTER, PASSWORD, Node, SentinelCluster
from tests.workers import ROOT, wait_for

pytestmark = pytest.mark.timeout(420)


@pytest.fixture
def sentinel_cluster(tmp_path):
    require(shutil.which("redis-server") is not None, "redis-server binary")
    cluster = SentinelCluster(tmp_path / "redis").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def receiver():
    from webhooks.testing import LoopbackReceiver

    with LoopbackReceiver() as r:
        yield r


def _submit_until_accepted(client, request: dict, deadline_s: float = 120) -> str:
    """What a producer does while Redis is away: retry until the job is accepted."""
    from jobs.errors import BrokerUnavailable

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return client.submit(request)
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_every_job_accepted_around_a_sentinel_failover_succeeds_once_and_the_worker_lives(
        br_env, sentinel_cluster, client_for, start_worker, receiver):
    from jobs.errors import BrokerUnavailable

    cluster = sentinel_cluster
    env = {**br_env, **cluster.env(), "BATCHRENDER_WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
    client = client_for(env)
    w = start_worker(env)
    hook = {"webhook": f"{receiver.url}/hook"}

    def job(tag: str, steps: int = 2) -> dict:
        return {"prompt": f"a lighthouse, {tag}", "width": 64, "height": 64, "steps": steps, "seed": 7, **hook}

    first = client.submit(job("first"))
    assert client.wait(first, timeout=120).status is JobStatus.SUCCEEDED
    old_port = cluster.primary.port
    assert cluster.master_port() == old_port

    # Before: jobs long enough to be queued and rendering while the primary dies.
    before = [client.submit(job(f"before {i}", steps=20)) for i in range(4)]
    # The last writes reached the replica (async replication: a write acknowledged in the last
    # instant before a primary dies can be lost with it; that window is not what this tests).
    primary = cluster.primary.client()
    primary.execute_command("WAIT", 1, 5000)
    primary.close()
    wait_for(lambda: any(client.status(j).status is JobStatus.RUNNING for j in before), timeout=120,
             what="a job rendering when the primary dies")
    cluster.primary.kill()

    # During: submitted while the sentinels fail over; a submit that is refused is retried, as
    # the API's 503 tells a caller to.
    during: list[str] = []
    refused = 0
    t0 = time.monotonic()
    while cluster.master_port() in (None, old_port) and time.monotonic() - t0 < 60:
        try:
            during.append(client.submit(job(f"during {len(during)}")))
        except BrokerUnavailable:
            refused += 1
            time.sleep(0.2)
    assert cluster.master_port() == cluster.replica.port, "the sentinels promoted the replica"
    during.append(_submit_until_accepted(client, job("right after the promotion")))

    # The old primary comes back: the sentinels make it a replica of the new master; nothing
    # may have talked to it as a master meanwhile (its data would be resynced away).
    cluster.primary.start()
    after = [_submit_until_accepted(client, job(f"after {i}")) for i in range(3)]

    accepted = [first, *before, *during, *after]
    records = {j: client.wait(j, timeout=240) for j in accepted}
    bad = {j: r.to_dict() for j, r in records.items() if r.status is not JobStatus.SUCCEEDED}
    assert bad == {}, bad

    def succeeded_events() -> dict[str, set[str]]:
        import json

        seen: dict[str, set[str]] = {}
        for r in list(receiver.received):
            body = json.loads(r.body)
            if body["type"] == "job.succeeded":
                seen.setdefault(body["data"]["job_id"], set()).add(r.headers["webhook-id"])
        return seen

    wait_for(lambda: set(succeeded_events()) >= set(accepted), timeout=180, what="a job.succeeded event per job",
             every=0.5)
    events = succeeded_events()
    assert {j: len(events[j]) for j in accepted} == {j: 1 for j in accepted}, "one job.succeeded per job"
    failed = [r for r in receiver.received if b'"job.failed"' in r.body]
    assert failed == []
    log = w.log()
    assert w.proc.poll() is None, f"the worker exited during the failover:\n{log[-4000:]}"
    assert "Unrecoverable error" not in log and "AttributeError" not in log, log[-4000:]
    print(f"failover: {len(accepted)} accepted, {len(during)} during it, {refused} submits refused meanwhile")


def test_a_worker_holding_an_unacked_message_rides_out_a_failover(br_env, sentinel_cluster, client_for,
                                                                  start_worker):
    """kombu restores a channel's unacknowledged messages when its connection drops; on the
    Sentinel transport that read the sentinel list from the released connection and the worker
    exited (AttributeError, the Sentinel twin of test_redis_restart's finding)."""
    from jobs.names import RENDER_TASK, render_queue

    cluster = sentinel_cluster
    env = {**br_env, **cluster.env()}
    client = client_for(env)
    w = start_worker(env, queues="render.tiny")
    # A job scheduled for later (how transient failures are retried): the worker takes the
    # message at once and holds it, unacknowledged, until its ETA.
    msg = client.prepare({"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 1})
    client.store.create(msg)
    client.app.send_task(RENDER_TASK, args=[msg.model_dump(mode="json")], task_id=msg.job_id,
                         queue=render_queue("tiny"), countdown=15)
    wait_for(lambda: "received" in w.log() and msg.job_id in w.log(), timeout=60, what="the worker to hold it")
    primary = cluster.primary.client()
    # The replica must hold the unacknowledged message before the primary dies (replication is
    # asynchronous: one killed before its replica caught up loses it, and only the job sweep would
    # bring the job back). On a loaded machine one WAIT of 5 s was not always enough.
    wait_for(lambda: primary.execute_command("WAIT", 1, 5000) >= 1, timeout=120,
             what="the replica to acknowledge the primary's writes", every=0)
    primary.close()
    cluster.primary.kill()
    wait_for(lambda: cluster.master_port() == cluster.replica.port, timeout=60, what="the promotion", every=0.2)
    wait_for(lambda: "Connected to sentinel" in w.log().split("Connection to broker lost")[-1]
             or w.proc.poll() is not None, timeout=90, what="the worker to reconnect or exit")
    assert w.proc.poll() is None, f"the worker exited during the failover:\n{w.log()[-3000:]}"
    assert client.wait(msg.job_id, timeout=240).status is JobStatus.SUCCEEDED
    later = _submit_until_accepted(client, {"prompt": "after the failover", "width": 64, "height": 64, "steps": 2})
    assert client.wait(later, timeout=120).status is JobStatus.SUCCEEDED
    assert w.proc.poll() is None and "AttributeError" not in w.log(), w.log()[-3000:]


def _promote(node: redis_lib.Redis) -> None:
    node.execute_command("REPLICAOF", "NO", "ONE")


def test_a_redis_url_that_turns_into_a_replica_is_redis_away_not_a_worker_crash(br_env, tmp_path, client_for,
                                                                                start_worker):
    """No Sentinel: ``redis://`` at a fixed address whose server is demoted (a failover seen
    through a fixed address). Writes answer READONLY: the worker must count it as Redis being
    away (it exited on ``ReadOnlyError`` before), the producer says Redis is unavailable, and once
    the server is the master again the same worker renders."""
    from jobs.errors import BrokerUnavailable

    require(shutil.which("redis-server") is not None, "redis-server binary")
    a = Node(tmp_path / "a", ["--port", str(pa := free_port()), "--bind", "127.0.0.1", "--save", "",
                              "--protected-mode", "no"], pa, None).start()
    b = Node(tmp_path / "b", ["--port", str(pb := free_port()), "--bind", "127.0.0.1", "--save", "",
                              "--protected-mode", "no", "--replicaof", "127.0.0.1", str(pa)], pb, None).start()
    try:
        env = {**br_env, "BATCHRENDER_REDIS_URL": f"redis://127.0.0.1:{pa}/0"}
        client = client_for(env)
        w = start_worker(env, queues="render.tiny")
        first = client.submit({"prompt": "a teapot", "width": 64, "height": 64, "steps": 2, "seed": 1})
        assert client.wait(first, timeout=120).status is JobStatus.SUCCEEDED
        ra, rb = a.client(), b.client()
        ra.execute_command("WAIT", 1, 5000)
        # Switch over: B is the master now, A a replica of it (same data).
        _promote(rb)
        ra.execute_command("REPLICAOF", "127.0.0.1", str(pb))
        wait_for(lambda: ra.info("replication")["master_link_status"] == "up", timeout=30, what="A to follow B")
        with pytest.raises(BrokerUnavailable, match="not the master|replica"):
            client.submit({"prompt": "refused while A is a replica", "width": 64, "height": 64, "steps": 2})
        # The worker's consumer sees READONLY on its next BRPOP (its blocked one was unblocked
        # by the demotion): it must reconnect, not exit.
        wait_for(lambda: w.log().count("read only replica") >= 3 or w.proc.poll() is not None,
                 timeout=60, what="the worker to meet the read-only server a few times")
        assert w.proc.poll() is None and "Unrecoverable error" not in w.log(), \
            f"the worker gave up on a read-only Redis:\n{w.log()[-4000:]}"
        # Back: A is the master again.
        _promote(ra)
        rb.execute_command("REPLICAOF", "127.0.0.1", str(pa))
        later = _submit_until_accepted(client, {"prompt": "after the switch back", "width": 64, "height": 64,
                                                "steps": 2, "seed": 2})
        assert client.wait(later, timeout=180).status is JobStatus.SUCCEEDED
        assert w.proc.poll() is None and "Unrecoverable error" not in w.log(), w.log()[-4000:]
        ra.close()
        rb.close()
    finally:
        a.kill()
        b.kill()


def test_readyz_and_doctor_confirm_they_talk_to_the_master(br_env, sentinel_cluster, tmp_path):
    """Through the sentinels: the master, named. Pointed at the replica by address: refused,
    naming what to set instead."""
    from jobs.redisconn import NotMaster, client, master_role
    from jobs.settings import Settings
    from producer.doctor import FAIL, diagnose

    cluster = sentinel_cluster
    settings = Settings.from_env({**br_env, **cluster.env()})
    r = client(settings.redis_url)
    assert master_role(r).startswith(f"master at 127.0.0.1:{cluster.primary.port},")
    replica = client(f"redis://:{PASSWORD}@127.0.0.1:{cluster.replica.port}/0")
    with pytest.raises(NotMaster, match="BATCHRENDER_REDIS_MASTER_NAME") as e:
        master_role(replica)
    assert PASSWORD not in e.value.message
    found = {f.check: f for f in diagnose(Settings.from_env({**br_env, "BATCHRENDER_REDIS_URL":
                                                             f"redis://:{PASSWORD}@127.0.0.1:{cluster.replica.port}/0"}),
                                          inspect_timeout_s=0.2)}
    assert found["redis"].state == FAIL and "replica" in found["redis"].detail, found["redis"]
    assert "sentinel://" in found["redis"].fix and PASSWORD not in found["redis"].detail
    ok = {f.check: f for f in diagnose(settings, inspect_timeout_s=0.2)}
    assert ok["redis"].state != FAIL and "master at" in ok["redis"].detail, ok["redis"]
    r.close()
    replica.close()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHRENDER_")}, **env}
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=120)


def test_bad_sentinel_settings_are_refused_with_the_fix_named(br_env, tmp_path):
    dead = [free_port() for _ in range(2)]
    url = f"sentinel://:{PASSWORD}@127.0.0.1:{dead[0]};sentinel://127.0.0.1:{dead[1]}/0"
    # No master name: refused before anything runs (exit 2, bad configuration).
    out = _cli({**br_env, "BATCHRENDER_REDIS_URL": url}, "submit", "a teapot")
    assert out.returncode == 2, out
    assert "BATCHRENDER_REDIS_MASTER_NAME" in out.stderr and "Traceback" not in out.stderr + out.stdout
    assert PASSWORD not in out.stderr
    # An unknown scheme, the same.
    out = _cli({**br_env, "BATCHRENDER_REDIS_URL": "redis-cluster://127.0.0.1:7000"}, "submit", "a teapot")
    assert out.returncode == 2 and "sentinel://" in out.stderr and "Traceback" not in out.stderr, out
    # Unreachable sentinels: try again later (75), naming the sentinels and the master name.
    env = {**br_env, "BATCHRENDER_REDIS_URL": url, "BATCHRENDER_REDIS_MASTER_NAME": MASTER}
    out = _cli(env, "submit", "a teapot")
    assert out.returncode == 75, out
    assert MASTER in out.stderr and str(dead[0]) in out.stderr and "Traceback" not in out.stderr + out.stdout
    assert PASSWORD not in out.stderr + out.stdout
    # doctor: a failed check naming the fix, no traceback.
    out = _cli(env, "doctor")
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout, out
    assert "BATCHRENDER_REDIS_MASTER_NAME" in out.stdout and PASSWORD not in out.stdout + out.stderr


def test_kombu_honours_the_short_unacked_mutex_expiry(redis_url):
    """A worker SIGKILLed inside kombu's unacked restore left its lock for 300 s, and nothing
    restored abandoned messages meanwhile: the option must reach the real channel."""
    from jobs.celery_app import make_app
    from jobs.settings import Settings

    settings = Settings()
    app = make_app(settings, redis_url)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert channel.unacked_mutex_expire < 300
        assert channel.unacked_mutex_expire <= settings.visibility_timeout_s // 10
        assert channel.qos.unacked_mutex_expire == channel.unacked_mutex_expire


def test_a_sentinel_client_finds_the_master_and_follows_a_failover(sentinel_cluster):
    """The builder's own client: writes go to whatever the sentinels name, across a failover."""
    from jobs.redisconn import client, master_role

    cluster = sentinel_cluster
    from jobs.redisconn import RedisURL

    r = client(RedisURL(cluster.url, master_name=MASTER))
    r.set("k", "before")
    assert master_role(r).startswith(f"master at 127.0.0.1:{cluster.primary.port}")
    cluster.primary.kill()
    wait_for(lambda: cluster.master_port() == cluster.replica.port, timeout=60, what="the promotion", every=0.2)

    def write() -> bool:
        try:
            return bool(r.set("k", "after"))
        except redis_lib.ConnectionError:
            return False

    wait_for(write, timeout=60, what="a write through the new master", every=0.2)
    assert r.get("k") == "after"
    assert master_role(r).startswith(f"master at 127.0.0.1:{cluster.replica.port}")
    r.close()
