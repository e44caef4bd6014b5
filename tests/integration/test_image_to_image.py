"""Image-to-image: reference images are size-checked before decoding, stored (never sent in
messages), and a face in them switches on the stricter real-person rules for the prompt."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from jobs.errors import InvalidRequest
from jobs.status import JobStatus
from tests.unit.test_safety_input_images import drawn_face, png_header_only

pytestmark = pytest.mark.timeout(180)
UNDRESS = "undress the person in this photo"  # flagged alone, blocked when a real person is shown


def data_uri(img: Image.Image | bytes, fmt: str = "PNG") -> str:
    if isinstance(img, Image.Image):
        buf = io.BytesIO()
        img.save(buf, fmt)
        img = buf.getvalue()
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(img).decode()


def test_image_to_image_job_renders_from_a_stored_reference(client, br_env, start_worker):
    from storage import open_storage

    ref = Image.new("RGB", (120, 90), (200, 40, 40))
    job = client.submit({"prompt": "a red product box, studio light", "image": data_uri(ref), "strength": 0.6,
                         "width": 64, "height": 64, "seed": 3})
    rec = client.status(job)
    assert rec.request["image"] is None and rec.request["strength"] == 0.6
    raw = client.store.r.hget(f"br:job:{job}", "request")
    assert "base64" not in raw, "no image bytes in records"
    start_worker(br_env)
    rec = client.wait(job, timeout=90)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    out = rec.result.images[0]
    assert (out.width, out.height) == (64, 64) and out.c2pa == "signed"
    assert open_storage(client.settings).exists(f"_inputs/{job}")


def test_a_face_in_the_reference_switches_on_the_real_person_rules(client, br_env, start_worker):
    blocked = client.submit({"prompt": UNDRESS, "image": data_uri(drawn_face()), "width": 64, "height": 64})
    rec = client.status(blocked)
    assert rec.status is JobStatus.BLOCKED
    assert "real_person_sexual" in rec.error["categories"] and rec.error["stage"] == "prompt_rules"
    # The same prompt with a reference that shows no one is only flagged, and delivered.
    plain = client.submit({"prompt": UNDRESS, "image": data_uri(Image.new("RGB", (240, 240), (90, 120, 90))),
                           "width": 64, "height": 64})
    start_worker(br_env)
    rec = client.wait(plain, timeout=90)
    assert rec.status is JobStatus.SUCCEEDED
    assert "nudity" in rec.result.moderation["categories"]


def test_worker_checks_the_reference_again_when_the_producer_is_bypassed(client, br_env, start_worker):
    from jobs.names import RENDER_TASK, render_queue

    # A message that claims no real person is shown, with a face in the stored reference.
    msg = client.prepare({"prompt": "a portrait", "image": data_uri(drawn_face()), "width": 64, "height": 64})
    assert msg.real_person_context
    # Signed with the deployment key, as a buggy producer would: the worker still checks the image.
    forged = client.signer.sign(msg.model_copy(update={"real_person_context": False,
                                                       "request": msg.request.model_copy(update={"prompt": UNDRESS})}))
    client.storage.put(forged.input_key, msg._input_bytes, content_type="image/png")
    client.store.create(forged)
    client.app.send_task(RENDER_TASK, args=[forged.model_dump(mode="json")], task_id=forged.job_id,
                         queue=render_queue("tiny"))
    start_worker(br_env)
    rec = client.wait(forged.job_id, timeout=90)
    assert rec.status is JobStatus.BLOCKED and "real_person_sexual" in rec.error["categories"]
    assert rec.result.timings.render_s == 0


@pytest.mark.parametrize("image, words", [
    (data_uri(png_header_only(50_000, 50_000)), "decompression_bomb"),
    (data_uri(png_header_only(3_000, 3_000)), "too_many_pixels"),
    ("data:image/png;base64,@@@not-base64@@@", "not valid base64"),
    ("data:image/gif;base64,R0lGODdh", "data:image/png|jpeg|webp"),
    ("http://169.254.169.254/latest/meta-data/", "cannot fetch"),
])
def test_bad_reference_images_are_refused_naming_the_field(client, image, words):
    with pytest.raises(InvalidRequest) as e:
        client.submit({"prompt": "a product photo", "image": image})
    assert e.value.errors[0]["field"] == "image" and words in e.value.errors[0]["message"], e.value.errors


def test_http_api_accepts_a_reference_image(br_env, settings_for):
    from fastapi.testclient import TestClient

    from producer.api import create_app
    from producer.tenants import Tenants

    settings = settings_for(br_env)
    app = create_app(settings)
    tenant = Tenants(app.state.client.store.r, app.state.client.settings).create("acme")
    with TestClient(app) as http:
        r = http.post("/v1/jobs", headers={"Authorization": f"Bearer {tenant.api_key}"},
                      json={"prompt": "a mug", "image": data_uri(Image.new("RGB", (64, 64))), "strength": 0.5})
        assert r.status_code == 201, r.text
        bomb = http.post("/v1/jobs", headers={"Authorization": f"Bearer {tenant.api_key}"},
                         json={"prompt": "a mug", "image": data_uri(png_header_only(60_000, 60_000))})
        assert bomb.status_code == 422 and bomb.json()["error"]["code"] == "invalid_request"
