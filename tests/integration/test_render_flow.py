"""End to end through real Redis and real `celery worker` processes."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from jobs.status import JobStatus
from tests.workers import stored_files, wait_for

pytestmark = pytest.mark.timeout(240)


def test_batch_is_rendered_and_every_image_stored(client, br_env, start_worker):
    start_worker(br_env)
    sub = client.submit_batch([{"prompt": f"product shot {i}", "seed": i, "num_images": 2} for i in range(4)])
    info = client.wait_batch(sub.batch_id, timeout=120)
    assert info["counts"]["succeeded"] == 4, info
    files = stored_files(br_env)
    assert len(files) == 8
    rec = client.status(sub.job_ids[0])
    img = rec.result.images[1]
    assert img.seed == 1 and img.key.endswith(f"{sub.job_ids[0]}/1.png")
    assert rec.result.timings.render_s > 0 and rec.attempts == 1
    with Image.open(Path(img.url)) as im:
        assert im.size == (img.width, img.height)


def test_same_seed_renders_identical_pixels(client, br_env, start_worker):
    start_worker(br_env)
    a = client.submit({"prompt": "a red bicycle", "seed": 42})
    b = client.submit({"prompt": "a red bicycle", "seed": 42})
    c = client.submit({"prompt": "a red bicycle", "seed": 43})
    ra, rb, rc = (client.wait(j, timeout=60).result.images[0] for j in (a, b, c))
    assert ra.pixel_sha256 == rb.pixel_sha256 != rc.pixel_sha256
    pix = [Image.open(io.BytesIO(Path(r.url).read_bytes())).convert("RGB").tobytes() for r in (ra, rb)]
    assert pix[0] == pix[1]


def test_canceled_queued_job_is_never_rendered(client, br_env, start_worker):
    job = client.submit({"prompt": "a lighthouse", "seed": 1})  # no worker yet: it stays queued
    assert client.cancel(job).status is JobStatus.CANCELED
    later = client.submit({"prompt": "a lighthouse", "seed": 2})
    start_worker(br_env)
    assert client.wait(later, timeout=60).status is JobStatus.SUCCEEDED
    rec = client.status(job)
    assert rec.status is JobStatus.CANCELED and rec.attempts == 0 and rec.result is None
    assert not any(job in str(p) for p in stored_files(br_env))


def test_canceled_running_job_stops_at_next_step_and_discards_its_image(client, br_env, start_worker):
    start_worker(br_env)
    job = client.submit({"prompt": "a slow render", "width": 384, "height": 384, "steps": 120, "seed": 3})
    wait_for(lambda: (client.status(job).progress or {}).get("step", 0) >= 2)
    client.cancel(job)
    rec = client.wait(job, timeout=60)
    assert rec.status is JobStatus.CANCELED
    assert rec.progress["step"] < 120, "it should stop at the next step, not finish"
    assert not any(job in str(p) for p in stored_files(br_env))


def test_bad_requests_are_refused_before_queueing(client):
    from jobs.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="width: 100 is not a multiple of 8"):
        client.submit({"prompt": "x", "width": 100, "height": 64})
    with pytest.raises(InvalidRequest, match="unknown model 'nope'"):
        client.submit({"prompt": "x", "model": "nope"})
    sub = client.submit_batch([{"prompt": "ok"}, {"prompt": ""}, {"prompt": "x", "steps": 999}])
    assert len(sub.job_ids) == 1 and [i for i, _ in sub.errors] == [1, 2]


@pytest.mark.timeout(420)
def test_worker_killed_mid_render_loses_no_job_and_writes_outputs_once(client, br_env, start_worker):
    # Short limits so the abandoned message becomes visible again within a minute, not an hour,
    # yet above what the render takes on a machine other tests load (30 s was seen exceeded).
    # (The visibility timeout must also exceed a webhook attempt's claim: timeout 2 s + 30 s.)
    env = {**br_env, "BATCHRENDER_SOFT_TIME_LIMIT_S": "60", "BATCHRENDER_HARD_TIME_LIMIT_S": "61",
           "BATCHRENDER_VISIBILITY_TIMEOUT_S": "64", "BATCHRENDER_MAX_BATCH": "2",
           "BATCHRENDER_WEBHOOK_TIMEOUT_S": "2"}
    from producer.client import Client
    from jobs.settings import Settings

    client = Client(Settings.from_env(env))
    first = start_worker(env)
    job = client.submit({"prompt": "a long render", "width": 128, "height": 128, "steps": 40, "seed": 5,
                         "num_images": 2})
    wait_for(lambda: (client.status(job).progress or {}).get("step", 0) >= 3)
    first.kill()
    assert client.status(job).status is JobStatus.RUNNING
    start_worker(env)
    rec = client.wait(job, timeout=240)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    assert rec.attempts == 2
    files = [p for p in stored_files(br_env) if job in str(p)]
    assert [p.name for p in files] == ["0.png", "1.png"]
    root = Path(br_env["BATCHRENDER_STORAGE_URL"].removeprefix("file://"))
    assert not [p for p in root.rglob("*") if p.is_file() and ".tmp" in p.name], "no half-written files"


def test_redelivered_finished_job_is_not_rendered_again(client, br_env, start_worker):
    from jobs.names import RENDER_TASK, render_queue

    start_worker(br_env)
    job = client.submit({"prompt": "once only", "seed": 9})
    first = client.wait(job, timeout=60)
    # A redelivery carries the job's own message (the copy kept with its record): a message
    # prepared again would carry another nonce and be dropped as not the record's (jobs/signing.py).
    msg = client.store.message(job)
    res = client.app.send_task(RENDER_TASK, args=[msg.model_dump(mode="json")], queue=render_queue("tiny"))
    assert res.get(timeout=60)["status"] == "succeeded"
    again = client.status(job)
    assert again.attempts == 1 and again.finished_at == first.finished_at


def test_job_published_by_a_producer_that_died_before_recording_it_is_still_rendered(client, br_env, start_worker):
    from jobs.names import RENDER_TASK, render_queue

    # What a producer leaves behind if it dies right after publishing: a message, no record.
    msg = client.prepare({"prompt": "orphaned message", "seed": 4})
    client.app.send_task(RENDER_TASK, args=[msg.model_dump(mode="json")], task_id=msg.job_id,
                         queue=render_queue("tiny"))
    assert client.store.status(msg.job_id) is None
    start_worker(br_env)
    rec = client.wait(wait_for(lambda: client.store.status(msg.job_id) and msg.job_id), timeout=60)
    assert rec.status is JobStatus.SUCCEEDED and len(rec.result.images) == 1
