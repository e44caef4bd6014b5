"""Issue 23: renditions through real Redis and a real worker process.

A transparent job's crops and pad are stored beside the master, each with Content Credentials
that validate and name the signed master as their ``parentOf`` ingredient; an opaque job's
``extend`` rendition is outpainted by the inpainting pipeline (one more pipeline call). Deleting
a job removes its renditions and their provenance entries.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import c2pa
import numpy as np
import pytest
from PIL import Image

from jobs.status import JobStatus
from tests.integration.test_worker_s3_c2pa import read_manifest

pytestmark = pytest.mark.timeout(240)
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def store_of(data: bytes, mime: str) -> dict:
    with c2pa.Reader(mime, io.BytesIO(data)) as reader:
        return json.loads(reader.json())


def stored(br_env, key: str) -> Path:
    return Path(br_env["BATCHRENDER_STORAGE_URL"].removeprefix("file://")) / key


def opaque_bbox(data: bytes) -> tuple[int, int, int, int]:
    with Image.open(io.BytesIO(data)) as im:
        ys, xs = np.nonzero(np.asarray(im.getchannel("A")) > 0)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_renditions_of_a_transparent_master_are_signed_children_stored_beside_it_and_deleted_with_it(
        client, br_env, start_worker):
    start_worker(br_env)
    job = client.submit({
        "prompt": "a desk lamp", "seed": 11, "width": 128, "height": 128, "steps": 2, "background": "transparent",
        "renditions": [
            {"name": "square", "width": 1080, "height": 1080},
            {"name": "feed", "width": 1080, "height": 1350},
            {"name": "story", "width": 1080, "height": 1920, "format": "jpeg", "pad_colour": "#FFFFFF"},
            {"name": "banner", "aspect_ratio": "3:1", "fit": "pad"},
        ]})
    rec = client.wait(job, timeout=120)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    [image] = rec.result.images
    master = stored(br_env, image.key).read_bytes()
    master_store = store_of(master, "image/png")
    bbox = opaque_bbox(master)
    assert [r.name for r in image.renditions] == ["square", "feed", "story", "banner"]
    sizes = {"square": (1080, 1080), "feed": (1080, 1350), "story": (1080, 1920), "banner": (384, 128)}
    for r in image.renditions:
        ext = r.format.value
        assert r.key == image.key.removesuffix(".png") + f".{r.name}.{ext}"
        data = stored(br_env, r.key).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert (im.width, im.height) == (r.width, r.height) == sizes[r.name]
            assert im.mode == ("RGB" if ext == "jpeg" else "RGBA")
        # The box holds every visible pixel of the master.
        x0, y0, x1, y1 = r.box
        assert x0 <= bbox[0] and y0 <= bbox[1] and x1 >= bbox[2] and y1 >= bbox[3], (r.name, r.box, bbox)
        assert r.subject == ("none" if r.name == "banner" else "alpha")
        # Content Credentials validate and name the signed master as the parentOf ingredient.
        state, manifest = read_manifest(data, MIME[ext], None)
        assert state == "Valid", (r.name, state)
        [ingredient] = manifest["ingredients"]
        assert ingredient["relationship"] == "parentOf" and ingredient["title"] == f"{job}-0.png"
        assert store_of(data, MIME[ext])["manifests"][ingredient["active_manifest"]]["signature_info"] == \
            master_store["manifests"][master_store["active_manifest"]]["signature_info"]
        assert ingredient["active_manifest"] == master_store["active_manifest"]
        actions = [a["action"] for a in {a["label"]: a["data"] for a in manifest["assertions"]}
                   ["c2pa.actions.v2"]["actions"]]
        assert actions[0] == "c2pa.opened" and "c2pa.created" not in actions
        assert ("c2pa.cropped" in actions) == (r.fit.value == "crop")
        assert client.provenance.lookup(data) is not None

    client.delete(job)
    for key in [image.key, *(r.key for r in image.renditions)]:
        assert not stored(br_env, key).exists(), key
    assert client.provenance.lookup(stored_bytes := master) is None and stored_bytes


def test_extend_rendition_is_outpainted_by_the_inpainting_pipeline(client, br_env, start_worker, redis_url):
    import redis

    from worker.runner import STATS_CALLS_KEY

    start_worker(br_env)
    job = client.submit({
        "prompt": "a ceramic mug on a walnut table", "seed": 5, "width": 128, "height": 128, "steps": 2,
        "renditions": [{"name": "wide", "width": 320, "height": 180, "fit": "extend"},
                       {"name": "square", "aspect_ratio": "1:1"}]})
    rec = client.wait(job, timeout=120)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    r = redis.Redis.from_url(redis_url)
    assert int(r.get(STATS_CALLS_KEY)) == 2, "the image's call and one outpainting call"
    r.close()
    [image] = rec.result.images
    wide, square = image.renditions
    assert wide.fit.value == "extend" and wide.seed == image.seed and (wide.width, wide.height) == (320, 180)
    x0, y0, x1, y1 = wide.box
    assert x0 < 0 and x1 > 128 and (y0, y1) == (0, 128)
    data = stored(br_env, wide.key).read_bytes()
    state, manifest = read_manifest(data, "image/png", None)
    assert state == "Valid"
    actions = {a["label"]: a["data"] for a in manifest["assertions"]}["c2pa.actions.v2"]["actions"]
    edited = [a for a in actions if a["action"] == "c2pa.edited"]
    assert edited and edited[0]["digitalSourceType"].endswith("compositeWithTrainedAlgorithmicMedia")
    # The master's pixels are in the middle of the extended canvas, the outpainting around them.
    with Image.open(stored(br_env, image.key)) as m, Image.open(io.BytesIO(data)) as w:
        master_px = np.asarray(m.convert("RGB").resize((180, 180), Image.Resampling.LANCZOS), dtype=float)
        wide_px = np.asarray(w.convert("RGB"), dtype=float)
    middle = wide_px[:, 70:250]
    assert np.abs(middle[:, 10:-10] - master_px[:, 10:-10]).mean() < 8
    assert square.box == [0, 0, 128, 128] and (square.width, square.height) == (128, 128)


def test_renditions_are_served_by_the_api_with_their_own_links(br_env, settings_for, tenants, start_worker):
    import hashlib
    from urllib.parse import urlparse

    from starlette.testclient import TestClient

    from producer.api import create_app
    from tests.workers import wait_for

    alice = tenants.create("alice")
    auth = {"Authorization": f"Bearer {alice.api_key}"}
    start_worker(br_env)
    api = TestClient(create_app(settings_for(br_env, api_rate_per_s=1000, api_burst=1000)))
    posted = api.post("/v1/jobs", headers=auth, json={
        "prompt": "a chair", "seed": 3, "width": 64, "height": 64, "steps": 2,
        "renditions": [{"name": "story", "width": 90, "height": 160, "format": "jpeg"},
                       {"name": "wide", "aspect_ratio": "2:1", "fit": "pad"}]})
    assert posted.status_code in (200, 201, 202), posted.text
    job_id = posted.json()["id"]

    def done():
        job = api.get(f"/v1/jobs/{job_id}", headers=auth).json()
        return job if job["status"] not in ("queued", "running") else None

    job = wait_for(done, timeout=120, every=0.2)
    assert job["status"] == "succeeded", job
    [output] = job["outputs"]
    story, wide = output["renditions"]
    assert urlparse(story["url"]).path == f"/v1/jobs/{job_id}/outputs/0/renditions/story"
    assert (wide["width"], wide["height"], wide["box"]) == (128, 64, [-32, 0, 96, 64])
    got = api.get(urlparse(story["url"]).path, headers=auth)
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(got.content).hexdigest() == story["sha256"] == got.headers["etag"].strip('"')
    again = api.get(urlparse(story["url"]).path, headers={**auth, "If-None-Match": got.headers["etag"]})
    assert again.status_code == 304
    signed = urlparse(wide["download_url"])
    keyless = api.get(f"{signed.path}?{signed.query}")  # no API key: the signature admits
    assert keyless.status_code == 200 and hashlib.sha256(keyless.content).hexdigest() == wide["sha256"]
    assert api.get(signed.path).status_code in (401, 403)
    missing = api.get(f"/v1/jobs/{job_id}/outputs/0/renditions/square", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "output_not_found"
    assert "'square'" in missing.json()["error"]["message"] and "story, wide" in missing.json()["error"]["message"]

    root = Path(br_env["BATCHRENDER_STORAGE_URL"].removeprefix("file://"))
    assert {p.name for p in root.rglob("*") if job_id in str(p) and p.is_file() and not p.name.endswith(".json")} \
        == {"0.png", "0.png.thumb.webp", "0.story.jpeg", "0.wide.png"}
    assert api.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
    assert not [p for p in root.rglob("*") if job_id in str(p)], "files and folder gone"


EXTENDED = {"prompt": "a mug on a table", "seed": 40, "width": 64, "height": 64, "steps": 2, "num_images": 2,
            "renditions": [{"name": "wide", "aspect_ratio": "16:9", "fit": "extend"},
                           {"name": "tall", "aspect_ratio": "3:4", "fit": "extend"}]}


def test_extend_renders_count_as_calls_and_tries_of_the_job_progress(br_env, client, settings_for):
    """In process: a ``JobRunner`` at one row per call, two images × two extend renditions."""
    from worker.context import WorkerContext
    from worker.runner import STATS_CALLS_KEY, JobRunner

    ctx = WorkerContext.build(settings_for(br_env))
    runner = JobRunner(ctx, rows_per_call=1)
    progress: list[int] = []
    msg = client.prepare(EXTENDED)
    outcome, = runner.run([msg], progress=lambda job_id, step, total: progress.append(step))
    assert outcome.status is JobStatus.SUCCEEDED, outcome.detail
    assert int(ctx.store.r.get(STATS_CALLS_KEY)) == 2 + 2 * 2  # the images, then each image x each extend
    assert progress == sorted(progress) and progress[-1] == 2, progress  # never back, done at the end
    rec = client.status(msg.job_id)
    for img in rec.result.images:
        assert [(r.name, r.seed) for r in img.renditions] == [("wide", img.seed), ("tall", img.seed)]
        wide, tall = img.renditions
        assert wide.box == [-25, 0, 89, 64] and tall.box == [0, -11, 64, 75]
    # A seed's outpainting gives the same pixels again (deterministic keys are overwritten alike).
    again = client.prepare({**EXTENDED, "num_images": 1, "renditions": EXTENDED["renditions"][:1]})
    assert runner.run([again])[0].status is JobStatus.SUCCEEDED
    first = stored(br_env, rec.result.images[0].renditions[0].key)
    second = stored(br_env, client.status(again.job_id).result.images[0].renditions[0].key)
    with Image.open(first) as a, Image.open(second) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_job_canceled_during_its_outpainting_delivers_nothing(br_env, client, settings_for):
    from worker.context import WorkerContext
    from worker.runner import JobRunner

    ctx = WorkerContext.build(settings_for(br_env))
    runner = JobRunner(ctx, rows_per_call=1)
    msg = client.prepare({**EXTENDED, "num_images": 1})

    def cancel_once_past_the_first_call(job_id, step, total):
        if step >= 1:  # tries are 3 (the image and two extends): step 1 of 2 is reached in the extends
            client.cancel(job_id)

    outcome, = runner.run([msg], progress=cancel_once_past_the_first_call)
    assert outcome.status is JobStatus.CANCELED
    rec = client.status(msg.job_id)
    assert rec.status is JobStatus.CANCELED and not (rec.result and rec.result.images)
    root = Path(br_env["BATCHRENDER_STORAGE_URL"].removeprefix("file://"))
    assert not [p for p in root.rglob("*") if msg.job_id in str(p) and p.is_file()]
