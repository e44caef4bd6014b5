"""Keys that must match across hosts are checked, not assumed (issue 25): real Redis, real worker
and API processes.

Found as an operator would: without a shared message-signing key every job stayed ``queued``
forever (workers dropped each message, the sweep re-sent it every minute; no job failed, no
webhook, ``/readyz`` ready, doctor "keys ok"); without a shared secrets key every webhook event
stayed ``pending`` with 0 attempts and no error.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from jobs.status import JobStatus
from tests.conftest import TEST_KEYS, free_port
from tests.workers import ROOT, stored_files, wait_for

pytestmark = pytest.mark.timeout(300)
OTHER_SIGNING = {"BATCHRENDER_MESSAGE_SIGNING_KEY": "another-hosts-message-signing-key-0000"}
OTHER_SECRETS = {"BATCHRENDER_SECRETS_KEY": "YW5vdGhlci1ob3N0cy1zZWNyZXRzLWtleS0zMmJ5dGU="}
SMALL = {"width": 64, "height": 64, "steps": 2}
WEBHOOK_SECRET = "whsec_" + "ZmxlZXQta2V5cy10ZXN0LXdlYmhvb2stc2VjcmV0LTA="


def wait_exit(worker, timeout: float = 120) -> int:
    return worker.proc.wait(timeout)


def start_api(env: dict[str, str], log_path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "api", "--port", str(port)],
                            env={**os.environ, **env}, cwd=ROOT, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the API exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=90, what="the API", every=0.2)
    return proc, base


# -- the registry, against real Redis ----------------------------------------------------------------
def test_a_member_that_stopped_beating_ages_out_and_one_of_this_host_that_died_is_removed(redis_url):
    import redis

    from jobs import fleet

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        old = fleet.Member("worker", host="host-b", pid=7)
        fleet.publish(r, old, {"signing": "bbbb"})
        me = fleet.Member("worker", name="w@here")
        with pytest.raises(fleet.FleetKeyMismatch, match="worker@host-b:7"):
            fleet.join(r, me, {"signing": "aaaa"})
        assert me.id not in {m["id"] for m in fleet.members(r)}, "a refused member is not published"
        r.zadd(fleet.FLEET_KEY, {old.id: fleet.redis_now(r) - fleet.TTL_S - 1})  # its last beat, long ago
        fleet.join(r, me, {"signing": "aaaa"})
        assert [m["id"] for m in fleet.members(r)] == [me.id]

        # A process of this host that was killed before it could leave: gone at once, not after the TTL.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        ghost = fleet.Member("worker", host=socket.gethostname(), pid=dead.pid)
        fleet.publish(r, ghost, {"signing": "bbbb"})
        fleet.join(r, fleet.Member("worker", name="w2@here"), {"signing": "aaaa"})
        assert ghost.id not in {m["id"] for m in fleet.members(r)}
    finally:
        r.close()


def test_of_two_members_that_started_together_with_different_keys_the_later_one_refuses(redis_url, monkeypatch):
    """Both find the other missing before publishing; the look after publishing settles it: the
    one that started later (Redis time) refuses and leaves, the earlier one stays."""
    import redis

    from jobs import fleet

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    real_publish = fleet.publish
    early, late = fleet.Member("worker", host="host-a", pid=1), fleet.Member("worker", host="host-b", pid=2)

    def meanwhile(other: fleet.Member, prints: dict, offset_s: float):
        def publish(r_, member, mine, **kw):
            if member != other:  # between this member's look and its publish, the other one published
                real_publish(r_, other, prints, started=fleet.redis_now(r_) + offset_s)
            return real_publish(r_, member, mine, **kw)
        return publish

    try:
        monkeypatch.setattr(fleet, "publish", meanwhile(early, {"signing": "aaaa"}, -1.0))
        with pytest.raises(fleet.FleetKeyMismatch, match="worker@host-a:1"):
            fleet.join(r, late, {"signing": "bbbb"})
        assert {m["id"] for m in fleet.members(r)} == {early.id}

        r.flushdb()
        monkeypatch.setattr(fleet, "publish", meanwhile(late, {"signing": "bbbb"}, +1.0))
        found = fleet.join(r, early, {"signing": "aaaa"})  # the later one is the one to go
        assert [d.key for d in found] == ["signing"], "and until it has, readiness reports both"
    finally:
        r.close()


# -- processes ---------------------------------------------------------------------------------------
def test_a_worker_whose_keys_differ_from_the_fleets_refuses_to_start_and_says_why(br_env, start_worker):
    good = start_worker(br_env, queues="render.tiny")
    bad = start_worker({**br_env, **OTHER_SIGNING}, queues="render.tiny", ready=False)
    assert wait_exit(bad) == 2
    log = bad.log()
    assert "worker cannot start" in log and "message-signing key" in log, log[-3000:]
    assert "BATCHRENDER_MESSAGE_SIGNING_KEY" in log and "batchrender keys signing-key" in log
    assert f"worker@{socket.gethostname()}:{good.proc.pid}" in log, "names the live worker that holds the other key"
    assert TEST_KEYS["BATCHRENDER_MESSAGE_SIGNING_KEY"] not in log and OTHER_SIGNING["BATCHRENDER_MESSAGE_SIGNING_KEY"] not in log

    bad = start_worker({**br_env, **OTHER_SECRETS}, queues="render.tiny", ready=False)
    assert wait_exit(bad) == 2
    log = bad.log()
    assert "worker cannot start" in log and "secrets key" in log and "BATCHRENDER_SECRETS_KEY" in log, log[-3000:]


def test_readyz_and_doctor_name_the_worker_whose_key_differs(br_env, start_worker, tmp_path):
    from producer.cli import cli

    odd = start_worker({**br_env, **OTHER_SIGNING}, queues="render.tiny,webhooks")  # first: nobody to differ from
    api, base = start_api(br_env, tmp_path / "api.log")
    try:
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 503, ready.text
        fleet = ready.json()["checks"]["fleet"]
        worker_id = f"worker@{socket.gethostname()}:{odd.proc.pid}"
        assert not fleet["ok"] and "message-signing key differs" in fleet["detail"], fleet
        assert worker_id in fleet["detail"] and f"api@{socket.gethostname()}:{api.pid}" in fleet["detail"]
        assert "BATCHRENDER_MESSAGE_SIGNING_KEY" in fleet["detail"]

        doctor = CliRunner().invoke(cli, ["doctor", "--json"], env=br_env)
        rows = {r["check"]: r for r in map(json.loads, doctor.stdout.splitlines())}
        assert doctor.exit_code == 1 and rows["fleet"]["state"] == "FAIL", rows.get("fleet")
        assert worker_id in rows["fleet"]["detail"] and "doctor@" in rows["fleet"]["detail"]
        assert rows["keys"]["state"] == "ok", "each process's own keys are fine: it is the fleet that differs"
    finally:
        api.terminate()
        api.wait(30)


def test_a_job_signed_with_another_key_fails_after_n_tries_with_a_named_error_and_its_webhook(br_env, start_worker,
                                                                                           client_for):
    from webhooks.testing import LoopbackReceiver

    env = {**br_env, "BATCHRENDER_WEBHOOK_SECRET": WEBHOOK_SECRET}
    worker = start_worker({**env, **OTHER_SIGNING, "BATCHRENDER_JOB_SWEEP_EVERY_S": "1",
                           "BATCHRENDER_JOB_SWEEP_OVERDUE_S": "0", "BATCHRENDER_UNVERIFIABLE_MESSAGE_LIMIT": "3"})
    client = client_for(env)
    with LoopbackReceiver() as hook:
        job = client.submit({"prompt": "a teapot", "seed": 1, "webhook": hook.url, **SMALL})
        rec = client.wait(job, timeout=180)
        assert rec.status is JobStatus.FAILED, rec
        assert rec.error["code"] == "message_unverifiable", rec.error
        assert "BATCHRENDER_MESSAGE_SIGNING_KEY" in rec.error["message"] and "3 times" in rec.error["message"]
        assert rec.attempts == 0 and stored_files(br_env) == [], "nothing was rendered"
        events = wait_for(lambda: [json.loads(r.body) for r in hook.received
                                   if json.loads(r.body)["type"] == "job.failed"], timeout=60, what="job.failed")
        assert events[0]["data"]["error"]["code"] == "message_unverifiable"
    log = worker.log()
    assert "(3 of 3 before the job fails)" in log and "(4 of 3" not in log, log[-3000:]


def test_an_event_whose_secret_does_not_decrypt_ends_dead_with_the_reason(br_env, redis_url, start_worker,
                                                                           settings_for):
    import redis

    from jobs.celery_app import make_app
    from webhooks.store import DEAD, DeliveryStore
    from webhooks.tasks import enqueue_event
    from webhooks.testing import LoopbackReceiver

    settings = settings_for(br_env)
    start_worker({**br_env, **OTHER_SECRETS}, queues="webhooks", app="webhooks.app:app")
    r = redis.Redis.from_url(redis_url)
    try:
        with LoopbackReceiver() as hook:
            event = enqueue_event(make_app(settings), settings, r, url=hook.url, secret=WEBHOOK_SECRET,
                                  event_type="job.succeeded", data={"job_id": "job_x"}, job_id="job_x")
            store = DeliveryStore(r)
            rec = wait_for(lambda: (lambda e: e if e and e.state != "pending" else None)(store.get(event)),
                           timeout=60, what="the event to end")
            assert hook.received == [], "nothing is sent with a secret it cannot read"
        assert rec.state == DEAD and rec.attempts == 1, rec
        assert "BATCHRENDER_SECRETS_KEY" in rec.last_error and "replay" in rec.last_error, rec.last_error
        assert WEBHOOK_SECRET not in rec.last_error
        assert event in [d.id for d in store.dead_letters()]
    finally:
        r.close()


def test_a_shared_redis_without_keys_or_with_development_c2pa_keys_is_refused_at_start(br_env, start_worker):
    bare = {k: v for k, v in br_env.items() if k not in TEST_KEYS}
    env = {**os.environ, **bare, "BATCHRENDER_STORAGE_URL": "s3://bucket/renders"}
    for command in (["api", "--port", str(free_port())], ["submit", "a teapot"]):
        out = subprocess.run([sys.executable, "-m", "producer.cli", *command], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        assert "BATCHRENDER_MESSAGE_SIGNING_KEY and BATCHRENDER_SECRETS_KEY" in out.stderr, out.stderr
        assert "batchrender keys signing-key" in out.stderr and "batchrender keys secrets-key" in out.stderr

    no_keys = start_worker(bare, queues="render.tiny", ready=False)
    assert wait_exit(no_keys) == 2
    assert "worker cannot start" in no_keys.log() and "BATCHRENDER_SECRETS_KEY" in no_keys.log(), no_keys.log()[-3000:]

    dev = {k: v for k, v in br_env.items() if k != "BATCHRENDER_C2PA_ALLOW_DEV_KEYS"}
    no_dev = start_worker(dev, queues="render.tiny", ready=False)
    assert wait_exit(no_dev) == 2
    log = no_dev.log()
    assert "worker cannot start" in log and "BATCHRENDER_C2PA_ALLOW_DEV_KEYS" in log, log[-3000:]
