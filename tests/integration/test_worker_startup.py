"""A misconfigured worker stops at start-up with the reason, before it takes a job; the job waits
for a worker that can run it instead of being failed or stranded."""
from __future__ import annotations

import pytest

from jobs.status import JobStatus

pytestmark = pytest.mark.timeout(180)


def wait_exit(worker, timeout: float = 60) -> int:
    return worker.proc.wait(timeout)


@pytest.mark.parametrize("setting, value, reason", [
    ("BATCHRENDER_POLICY_FILE", "policy.yaml", "policy.yaml:5: severity must be int"),
    ("BATCHRENDER_C2PA_CERT_CHAIN", "missing-chain.pem", "BATCHRENDER_C2PA_PRIVATE_KEY"),
    ("BATCHRENDER_MATTING_MODEL_DIR", "no-such-model", "no config.json"),
])
def test_misconfigured_worker_exits_at_start_and_leaves_the_job_queued(br_env, start_worker, settings_for, tmp_path,
                                                                      setting, value, reason):
    from producer.client import Client

    (tmp_path / "policy.yaml").write_text(
        'version: "x"\ncategories:\n  violence:\n    description: d\n    severity: high\n    action: block\n')
    client = Client(settings_for(br_env))
    job = client.submit({"prompt": "a teapot", "seed": 1})
    bad = start_worker({**br_env, setting: str(tmp_path / value)}, ready=False)
    assert wait_exit(bad) != 0
    log = bad.log()
    assert "worker cannot start" in log and reason in log, log[-2000:]
    assert client.status(job).status is JobStatus.QUEUED and client.status(job).attempts == 0
    start_worker(br_env)
    assert client.wait(job, timeout=60).status is JobStatus.SUCCEEDED
