"""Errors tenants see are the project's own messages (issue 26, low): a Python exception's text
(``RuntimeError: The size of tensor a (0) must match ...`` for an image-to-image job of one
step) stays in the worker's log; the job says what happened in words it can act on."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from jobs.errors import InvalidRequest
from jobs.status import JobStatus

pytestmark = pytest.mark.timeout(180)


def data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


RED = data_uri(Image.new("RGB", (64, 64), (200, 40, 40)))


@pytest.mark.parametrize("steps, strength, least", [(1, None, 2), (1, 0.5, 2), (3, 0.3, 4)])
def test_image_to_image_with_no_denoising_step_left_is_refused_naming_steps(client, steps, strength, least):
    # SD 1.5/SDXL run int(steps x strength) steps from the reference: 0 of them breaks the pipeline.
    with pytest.raises(InvalidRequest) as e:
        client.submit({"prompt": "a red box", "image": RED, "steps": steps, "width": 64, "height": 64,
                       **({"strength": strength} if strength else {})})
    assert e.value.errors[0]["field"] == "steps", e.value.to_dict()
    assert f"at least {least} steps" in e.value.message, e.value.message
    job = client.submit({"prompt": "a red box", "image": RED, "steps": least, "width": 64, "height": 64,
                         **({"strength": strength} if strength else {})})
    assert client.status(job).status is JobStatus.QUEUED


def test_an_unexpected_worker_error_shows_the_tenant_the_projects_message_and_logs_the_exception(
        client, br_env, start_worker):
    from jobs.names import RENDER_TASK, render_queue

    # Past the producer's check (a message signed with the deployment key, as an older or buggy
    # producer would send it): the pipeline itself raises a RuntimeError.
    msg = client.prepare({"prompt": "a red box", "image": RED, "steps": 2, "width": 64, "height": 64, "seed": 3})
    one_step = client.signer.sign(msg.model_copy(update={"request": msg.request.model_copy(update={"steps": 1})}))
    client.storage.put(one_step.input_key, msg._input_bytes, content_type="image/png")
    client.store.create(one_step)
    client.app.send_task(RENDER_TASK, args=[one_step.model_dump(mode="json")], task_id=one_step.job_id,
                         queue=render_queue("tiny"))
    worker = start_worker(br_env)
    rec = client.wait(one_step.job_id, timeout=120)
    assert rec.status is JobStatus.FAILED, rec.to_dict()
    error = rec.error
    assert error["code"] == "internal_error" and error["retryable"] is False, error
    assert "Error" not in error["message"] and "tensor" not in error["message"], error
    assert one_step.job_id in error["message"] and "log" in error["message"], error
    log = worker.log()
    assert "The size of tensor a (0)" in log and one_step.job_id in log, log[-3000:]


def test_a_storage_failure_at_submit_shows_the_tenant_no_path_and_logs_it(br_env, settings_for, tenants, tmp_path,
                                                                          caplog):
    import logging

    from starlette.testclient import TestClient

    from producer.api import create_app

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # the storage root is a file: every write fails with the path in the error
    settings = settings_for({**br_env, "BATCHRENDER_STORAGE_URL": blocked.as_uri()})
    alice = tenants.create("alice")
    with TestClient(create_app(settings), raise_server_exceptions=False) as api, \
            caplog.at_level(logging.WARNING, logger="producer.api"):
        r = api.post("/v1/jobs", json={"prompt": "a red box", "image": RED, "width": 64, "height": 64},
                     headers={"Authorization": f"Bearer {alice.api_key}"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
    assert str(tmp_path) not in r.text and "Errno" not in r.text, r.text
    assert str(blocked) in caplog.text, "the operator's log has the detail"
