"""The ``moderation_service`` stage through a real API process and real worker processes, against
a real HTTP classifier service on loopback (tests/moderation_service_fake.py, OpenAI wire format):

* a prompt the service refuses is answered 422 ``moderation_blocked`` naming the stage and the
  category, like every other moderation refusal; during an outage the API answers 503 with
  Retry-After, never a 500;
* a job whose worker meets an outage waits (stays ``queued``) and succeeds when the service is
  back; past ``outage.max_wait_s`` it ends ``failed`` with code ``moderation_unavailable``;
* the service key reaches the service and appears in no log or audit line.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jobs.status import JobStatus
from tests.conftest import free_port
from tests.moderation_service_fake import FakeModerationService, Scripted
from tests.workers import ROOT, wait_for

pytestmark = pytest.mark.timeout(300)

SECRET = "sk-integration-5f1e2d3c4b5a-SECRET"
SMALL = {"width": 64, "height": 64, "steps": 2}
#: A policy whose keyword rules would let every prompt below through: what blocks is the service.
POLICY = """\
version: service-integration-1
categories:
  minors_sexual: {description: minors, severity: 10, action: block, terms: [csam]}
  graphic_violence: {description: gore, severity: 6, action: block, terms: [gore]}
  nudity: {description: nudity, severity: 4, action: flag, terms: [nude]}
moderation_service:
  url: http://127.0.0.1:{port}/v1/moderations
  format: openai
  model: omni-moderation-latest
  timeout_s: 5
  circuit_breaker: {{failures: 1, cooldown_s: 0.5}}
  outage: {{max_wait_s: {max_wait}}}
  categories:
    sexual/minors: {{category: minors_sexual, threshold: 0.2}}
    violence/graphic: {{category: graphic_violence, threshold: 0.6}}
    sexual: {{category: nudity, threshold: 0.5}}
"""
BLOCKED = "a schoolgirl in her classroom, photo"
BENIGN = "a ceramic mug on a walnut table"


class Service:
    """The fake service on a fixed port, so it can go away and come back at the same address."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: FakeModerationService | None = None
        self.start()

    def start(self) -> FakeModerationService:
        self.server = FakeModerationService(self.port).start()
        self.server.words = {"schoolgirl": {"sexual/minors": 0.94, "sexual": 0.9}}
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def service():
    s = Service()
    yield s
    s.stop()


def env_for(br_env: dict[str, str], tmp_path: Path, service: Service, max_wait: float = 600) -> dict[str, str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("{port}", str(service.port)).replace("{max_wait}", str(max_wait))
                      .replace("{{", "{").replace("}}", "}"))
    return {**br_env, "BATCHRENDER_POLICY_FILE": str(policy), "BATCHRENDER_MODERATION_SERVICE_KEY": SECRET,
            "BATCHRENDER_MODERATION_SERVICE_ALLOW_HOSTS": "127.0.0.1",
            "BATCHRENDER_NSFW_CLASSIFIER": "off"}  # this small policy maps no open_nsfw label


@pytest.fixture
def start_api(tmp_path):
    """Real ``batchrender api`` processes (uvicorn), stopped at the end of the test."""
    procs: list[subprocess.Popen] = []

    def start(env: dict[str, str]) -> tuple[str, Path]:
        port, log = free_port(), tmp_path / f"api-{len(procs)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "api", "--port", str(port)],
                                env={**os.environ, **env}, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the API exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=90, what="the API", every=0.2)
        return base, log

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def submit(base: str, key: str, prompt: str, **extra) -> httpx.Response:
    return httpx.post(f"{base}/v1/jobs", json={"prompt": prompt, "seed": 3, **SMALL, **extra},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def audit_text(env: dict[str, str]) -> str:
    path = Path(env["BATCHRENDER_HOME"]) / "moderation" / "audit.jsonl"
    return path.read_text() if path.exists() else ""


def test_api_refuses_what_the_service_blocks_and_answers_503_during_an_outage(br_env, tmp_path, service, tenants,
                                                                              start_api, redis_url):
    import redis

    env = env_for(br_env, tmp_path, service)
    alice = tenants.create("alice")
    base, log = start_api(env)

    r = submit(base, alice.api_key, BLOCKED)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "moderation_blocked" and error["stage"] == "moderation_service"
    assert "minors_sexual" in error["categories"] and error["job_id"]
    assert redis.Redis.from_url(redis_url).llen("render.tiny") == 0, "a refused prompt is never queued"

    ok = submit(base, alice.api_key, BENIGN)
    assert ok.status_code == 201 and ok.json()["status"] == "queued"
    seen = service.server.seen("/v1/moderations")
    assert [x["json"]["input"][0]["text"] for x in seen] == [BLOCKED, BENIGN]
    assert all(x["headers"]["Authorization"] == f"Bearer {SECRET}" for x in seen)

    # The service fails: a clear 503 with Retry-After, nothing recorded, never a 500.
    service.server.always = Scripted(status=503)
    down = submit(base, alice.api_key, "a lighthouse at dusk")
    assert down.status_code == 503, down.text
    assert down.json()["error"]["code"] == "moderation_unavailable"
    assert down.headers["Retry-After"] == "1", "when the circuit (cool-down 0.5 s) lets a call through again"
    service.stop()  # and is gone altogether
    gone = submit(base, alice.api_key, "a lighthouse at night")
    assert gone.status_code == 503 and gone.json()["error"]["code"] == "moderation_unavailable"
    jobs = httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {alice.api_key}"}, timeout=10).json()
    assert len(jobs["data"]) == 2, "the refused submissions left no job behind"

    # A bad answer is a refusal by the fail policy (closed): 422, not 500 and not an accept.
    service.start().script.append(Scripted(body=b"<html>gateway</html>"))
    wait_for(lambda: submit(base, alice.api_key, "a harbour at dawn").status_code != 503, timeout=30,
             what="the circuit to let a probe through", every=0.3)
    assert service.server.seen()[0]["json"]["input"][0]["text"] == "a harbour at dawn"
    bad = httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {alice.api_key}"},
                    params={"status": "blocked"}, timeout=10).json()["data"]
    assert {j["error"]["code"] for j in bad} == {"moderation_blocked"} and len(bad) == 2

    for text in (log.read_text(), audit_text(env)):
        assert SECRET not in text
    assert "moderation service" in log.read_text() and "bad answer (not_json)" in log.read_text()


def test_worker_job_waits_during_an_outage_and_succeeds_when_the_service_is_back(br_env, tmp_path, service,
                                                                                   settings_for, start_worker):
    from producer.client import Client

    env = env_for(br_env, tmp_path, service, max_wait=600)
    producer = Client(settings_for(env))
    try:
        job = producer.submit({"prompt": BENIGN, "seed": 4, **SMALL})  # checked by the service: allowed
        assert len(service.server.seen()) == 1
        service.stop()
        w = start_worker(env)
        wait_for(lambda: w.log().count("the job waits") >= 2, timeout=120, what="the worker to hold the job")
        assert producer.status(job).status is JobStatus.QUEUED, "an outage holds the job; it does not fail it"
        server = service.start()
        rec = producer.wait(job, timeout=120)
        assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
        assert [x["json"]["input"][0]["text"] for x in server.seen()] == [BENIGN], "the worker asked again"
        assert SECRET not in w.log() and SECRET not in audit_text(env)
    finally:
        producer.close()


def test_worker_job_ends_moderation_unavailable_after_the_outage_limit(br_env, tmp_path, service, settings_for,
                                                                        start_worker):
    from producer.client import Client

    env = env_for(br_env, tmp_path, service, max_wait=2)
    producer = Client(settings_for(env))
    try:
        job = producer.submit({"prompt": BENIGN, "seed": 5, **SMALL})
        service.stop()
        w = start_worker(env)
        rec = producer.wait(job, timeout=120)
        assert rec.status is JobStatus.FAILED, rec.to_dict()
        assert rec.error["code"] == "moderation_unavailable" and "max_wait_s" in rec.error["message"]
        assert rec.result.images == [] and rec.result.timings.render_s == 0
        assert "the job waits" in w.log(), "it waited before it ended"
        assert SECRET not in w.log()
    finally:
        producer.close()


def test_a_service_on_loopback_not_allowed_is_named_at_start_never_a_500(br_env, tmp_path, service, tenants,
                                                                         start_api, start_worker):
    env = env_for(br_env, tmp_path, service)
    del env["BATCHRENDER_MODERATION_SERVICE_ALLOW_HOSTS"]
    w = start_worker(env, ready=False)
    assert w.proc.wait(120) != 0
    assert "BATCHRENDER_MODERATION_SERVICE_ALLOW_HOSTS" in w.log() and "loopback" in w.log()
    base, _ = start_api(env)
    r = submit(base, tenants.create("alice").api_key, BENIGN)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "configuration_error"
    assert "BATCHRENDER_MODERATION_SERVICE_ALLOW_HOSTS" in r.json()["error"]["message"]
    assert service.server.seen() == [], "nothing was sent to a refused address"
