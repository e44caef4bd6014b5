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
