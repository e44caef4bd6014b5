"""M6: whoever can write to Redis can put messages on a render queue. A real worker must refuse
every message this deployment did not sign (unsigned, altered, naming another tenant, signed
with another key) and render nothing for it; a signed message is still checked against the
tenant's state and today's limits."""
from __future__ import annotations

import pytest

from jobs.status import JobStatus
from tests.workers import stored_files, wait_for

pytestmark = pytest.mark.timeout(180)
SMALL = {"width": 64, "height": 64, "steps": 2}


def _send(client, msg) -> None:
    from jobs.names import RENDER_TASK, render_queue

    client.app.send_task(RENDER_TASK, args=[msg.model_dump(mode="json")], task_id=msg.job_id,
                         queue=render_queue(msg.request.model))


def test_forged_messages_are_refused_and_nothing_is_rendered(client, br_env, tenants, start_worker):
    from jobs.signing import Signer

    alice, bob = tenants.create("alice"), tenants.create("bob")
    genuine = client.prepare({"prompt": "a bowl", "seed": 1, **SMALL}, tenant=alice.tenant_id)
    forged = {
        "unsigned": genuine.model_copy(update={"job_id": "job_forged_unsigned", "signature": None}),
        "altered": genuine.model_copy(update={"job_id": "job_forged_altered",
                                              "request": genuine.request.model_copy(update={"steps": 140})}),
        "other_tenant": genuine.model_copy(update={"job_id": "job_forged_tenant", "tenant": bob.tenant_id}),
        "other_key": Signer(b"not-this-deployment-key").sign(genuine.model_copy(update={"job_id": "job_forged_key"})),
    }
    for msg in forged.values():
        _send(client, msg)
    last = client.prepare({"prompt": "a plate", "seed": 2, **SMALL}, tenant=alice.tenant_id)
    client.enqueue(last)  # a genuine job queued behind the forged ones
    worker = start_worker(br_env, queues="render.tiny")
    assert client.wait(last.job_id, timeout=120).status is JobStatus.SUCCEEDED
    wait_for(lambda: worker.log().count("dropping render message") >= len(forged), timeout=30)
    for name, msg in forged.items():
        assert client.store.status(msg.job_id) is None, f"{name}: no record was written for it"
        assert "is not signed" in worker.log() or name != "unsigned"
    assert "does not match its signature" in worker.log()
    assert [p for p in stored_files(br_env) if "job_forged" in str(p)] == [], "nothing rendered"
    assert len(stored_files(br_env)) == 1


def test_signed_messages_are_still_checked_against_tenant_and_limits(client, br_env, tenants, start_worker):
    alice = tenants.create("alice")
    over = client.prepare({"prompt": "a cup", "seed": 1, **SMALL}, tenant=alice.tenant_id)
    # Signed with the deployment key but over today's step limit (a producer with old limits, say).
    over = client.signer.sign(over.model_copy(update={"request": over.request.model_copy(update={"steps": 400})}))
    client.store.create(over)
    _send(client, over)
    disabled = tenants.create("mallory")
    held = client.prepare({"prompt": "a mug", "seed": 2, **SMALL}, tenant=disabled.tenant_id)
    client.enqueue(held)
    tenants.set_disabled(disabled.tenant_id)
    assert tenants.authenticate(disabled.api_key) is None, "a disabled tenant's keys stop working"
    start_worker(br_env, queues="render.tiny")
    rec = client.wait(over.job_id, timeout=120)
    assert rec.status is JobStatus.FAILED and rec.error["code"] == "invalid_request", rec.error
    assert "400 steps" in rec.error["message"]
    rec = client.wait(held.job_id, timeout=120)
    assert rec.status is JobStatus.FAILED and "disabled" in rec.error["message"], rec.error
    assert stored_files(br_env) == []
