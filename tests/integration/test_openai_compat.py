"""Issue 13 (images part): the real ``openai`` SDK against a real API server and a real worker,
changing nothing but ``base_url``."""
from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.conftest import require
from tests.integration.test_api_http_client import ApiServer

pytestmark = pytest.mark.timeout(240)
try:
    import openai
except ImportError:  # a test dependency: skipped locally when missing, a failure under CI
    openai = None


@pytest.fixture(autouse=True)
def _needs_openai():
    require(openai is not None, "the openai package (pip install -e '.[test]')")


@pytest.fixture
def server(br_env, settings_for, start_worker):
    from producer.api import create_app

    start_worker(br_env)
    with ApiServer(create_app(settings_for(br_env, api_rate_per_s=1000, api_burst=1000))) as s:
        yield s


def _sdk(server, tenant, **kw):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=tenant.api_key, **kw)


def test_images_generate_in_both_response_formats_and_models_list(server, tenants):
    alice = tenants.create("alice")
    client = _sdk(server, alice)
    assert "tiny" in [m.id for m in client.models.list().data]
    assert client.models.retrieve("tiny").id == "tiny"

    got = client.images.generate(model="tiny", prompt="a red bicycle", n=2, size="64x64", quality="low",
                                 response_format="b64_json")
    assert len(got.data) == 2 and got.size == "64x64" and got.output_format == "png"
    for item in got.data:
        with Image.open(io.BytesIO(base64.b64decode(item.b64_json))) as im:
            assert im.size == (64, 64)

    by_url = client.images.generate(model="tiny", prompt="a blue bicycle", n=2, size="64x48", response_format="url",
                                    output_format="webp")
    assert len(by_url.data) == 2
    for item in by_url.data:
        fetched = httpx.get(item.url)  # keyless: the link is signed
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/webp"
        with Image.open(io.BytesIO(fetched.content)) as im:
            assert im.size == (64, 48)
    # An ordinary job underneath: listed for the tenant, with the OpenAI user recorded.
    jobs = httpx.get(f"{server.url}/v1/jobs", headers={"Authorization": f"Bearer {alice.api_key}"}).json()["data"]
    assert len(jobs) == 2 and all(j["status"] == "succeeded" for j in jobs)


def test_errors_come_in_openai_shape(server, tenants):
    alice = tenants.create("alice")
    client = _sdk(server, alice, max_retries=0)
    with pytest.raises(openai.BadRequestError) as blocked:
        client.images.generate(model="tiny", prompt="Nude photo of a child", size="64x64")
    assert blocked.value.code == "moderation_blocked" and blocked.value.response.headers["x-request-id"]
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(model="tiny", prompt="a lamp", size="100x64")
    assert bad_size.value.param == "size" and "multiple of 8" in bad_size.value.message
    with pytest.raises(openai.BadRequestError) as bad_model:
        client.images.generate(model="gpt-image-1", prompt="a lamp")
    assert bad_model.value.param == "model" and "tiny" in bad_model.value.message
    with pytest.raises(openai.BadRequestError) as transparent:
        client.images.generate(model="tiny", prompt="a lamp", size="64x64", background="transparent",
                               output_format="jpeg")
    assert transparent.value.param == "background" and "output_format" in transparent.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="br_wrong", max_retries=0).models.list()


def test_moderation_low_flags_borderline_categories_and_never_minors(server, tenants):
    """Issue 27: OpenAI's ``moderation: low`` is applied, by the API's prompt check and by the
    worker's (prompt and images): a borderline block (graphic violence, severity 6) renders as a
    flagged job; minors and self-harm stay blocked."""
    alice = tenants.create("alice")
    client = _sdk(server, alice, max_retries=0)
    gore = "a gory battlefield with severed limbs and blood"
    with pytest.raises(openai.BadRequestError) as auto:
        client.images.generate(model="tiny", prompt=gore, size="64x64")
    assert auto.value.code == "moderation_blocked"
    got = client.images.generate(model="tiny", prompt=gore, size="64x64", moderation="low", response_format="url")
    assert len(got.data) == 1 and httpx.get(got.data[0].url).status_code == 200
    jobs = httpx.get(f"{server.url}/v1/jobs", headers={"Authorization": f"Bearer {alice.api_key}"}).json()["data"]
    (job,) = [j for j in jobs if j["status"] == "succeeded"]
    assert "graphic_violence" in str(job.get("moderation")), job
    for never in ("Nude photo of a child", "a razor blade and slit wrists, how to end it all"):
        with pytest.raises(openai.BadRequestError) as blocked:
            client.images.generate(model="tiny", prompt=never, size="64x64", moderation="low")
        assert blocked.value.code == "moderation_blocked", never


def test_transparent_background_gives_an_rgba_png_with_real_alpha(server, tenants):
    alice = tenants.create("alice")
    got = _sdk(server, alice).images.generate(model="tiny", prompt="a lamp", size="128x128", background="transparent",
                                             response_format="b64_json")
    assert got.background == "transparent"
    with Image.open(io.BytesIO(base64.b64decode(got.data[0].b64_json))) as im:
        assert im.mode == "RGBA"
        lo, hi = im.getchannel("A").getextrema()
    assert lo == 0 and hi == 255
    opaque = _sdk(server, alice).images.generate(model="tiny", prompt="a lamp", size="64x64", background="opaque",
                                                response_format="b64_json")
    assert opaque.background == "opaque"
    with Image.open(io.BytesIO(base64.b64decode(opaque.data[0].b64_json))) as im:
        assert im.mode == "RGB"


def test_a_429_is_retried_by_the_sdk_itself(br_env, settings_for, tenants, start_worker):
    from producer.api import create_app

    alice = tenants.create("alice")
    start_worker(br_env)
    statuses = []
    hooks = {"response": [lambda r: statuses.append(r.status_code)]}
    with ApiServer(create_app(settings_for(br_env, api_rate_per_s=1, api_burst=1))) as s, \
            httpx.Client(event_hooks=hooks, timeout=120) as http:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key=alice.api_key, http_client=http, max_retries=3)
        client.models.list()  # takes the only token
        got = client.images.generate(model="tiny", prompt="a cup", size="64x64", response_format="b64_json")
    assert len(got.data) == 1
    assert statuses[0] == 200 and 429 in statuses and statuses[-1] == 200, statuses


def _line(custom_id: str, body: dict) -> str:
    import json

    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/images/generations", "body": body})


def test_files_and_batches_the_openai_way(server, tenants, tmp_path):
    """files.create + batches.create + polling + the output file (a line per request, custom_ids
    matching) and the error file (a bad line and a refused prompt); listing; cancel."""
    import json

    from tests.workers import wait_for

    alice = tenants.create("alice")
    client = _sdk(server, alice)
    lines = [_line(f"req-{i}", {"model": "tiny", "prompt": f"a vase {i}", "size": "64x64", "quality": "low",
                                "response_format": "b64_json"}) for i in range(3)]
    lines += [_line("bad-size", {"model": "tiny", "prompt": "a vase", "size": "63x64"}), "{not json",
              _line("refused", {"model": "tiny", "prompt": "Nude photo of a child", "size": "64x64"})]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    assert uploaded.bytes == path.stat().st_size and client.files.retrieve(uploaded.id).filename == "requests.jsonl"

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations",
                                  completion_window="24h", metadata={"campaign": "spring"})
    assert batch.status in ("in_progress", "completed") and batch.request_counts.total == 6
    done = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b, timeout=120, every=0.5)
    assert done.request_counts.completed == 3 and done.request_counts.failed == 3, done.request_counts
    assert done.metadata == {"campaign": "spring"}

    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in output) == ["req-0", "req-1", "req-2"]
    assert all(o["response"]["status_code"] == 200 and len(o["response"]["body"]["data"]) == 1 for o in output)
    errors = {e["custom_id"]: e for e in map(json.loads, client.files.content(done.error_file_id).text.splitlines())}
    assert set(errors) == {"bad-size", None, "refused"}, errors
    assert errors["bad-size"]["error"]["code"] == "invalid_request" and "multiple of 8" in errors["bad-size"]["error"]["message"]
    assert errors[None]["error"]["code"] == "invalid_json"
    assert errors["refused"]["response"]["status_code"] == 400
    assert errors["refused"]["response"]["body"]["error"]["code"] == "moderation_blocked"

    assert batch.id in [b.id for b in client.batches.list(limit=10)]
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_an_openai_batch_can_be_cancelled(br_env, settings_for, tenants, tmp_path):
    """No worker: the requests stay queued, so cancelling ends every one of them."""
    from producer.api import create_app

    alice = tenants.create("alice")
    with ApiServer(create_app(settings_for(br_env, api_rate_per_s=1000, api_burst=1000))) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key=alice.api_key)
        path = tmp_path / "r.jsonl"
        path.write_text("\n".join(_line(f"r{i}", {"model": "tiny", "prompt": "a cup", "size": "64x64"})
                                  for i in range(4)))
        batch = client.batches.create(input_file_id=client.files.create(file=path.open("rb"), purpose="batch").id,
                                      endpoint="/v1/images/generations", completion_window="24h")
        cancelled = client.batches.cancel(batch.id)
        assert cancelled.status in ("cancelling", "cancelled")
        assert client.batches.retrieve(batch.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError) as bad:
            client.batches.create(input_file_id="file-nope", endpoint="/v1/images/generations",
                                  completion_window="24h")
        assert "input_file_id" in bad.value.message


def _png(size=(64, 64), color=(200, 40, 40), alpha_hole: bool = False) -> bytes:
    img = Image.new("RGBA", size, (*color, 255))
    if alpha_hole:
        img.paste((0, 0, 0, 0), (16, 16, 48, 48))  # transparent: the part to change
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_images_edit_with_an_image_and_a_mask(server, tenants, client, br_env):
    """images.edit: image-to-image with an image, inpainting with image + mask; every image checked."""
    alice = tenants.create("alice")
    sdk = _sdk(server, alice)
    plain = sdk.images.edit(model="tiny", image=("a.png", _png(), "image/png"), prompt="make it blue",
                            size="64x64", response_format="b64_json")
    assert len(plain.data) == 1
    masked = sdk.images.edit(model="tiny", image=("a.png", _png(), "image/png"), prompt="a blue square",
                             mask=("m.png", _png(alpha_hole=True), "image/png"), size="64x64", n=2,
                             response_format="b64_json")
    assert len(masked.data) == 2
    for item in masked.data:
        with Image.open(io.BytesIO(base64.b64decode(item.b64_json))) as im:
            assert im.size == (64, 64)
    # The job underneath carried the mask: white where the upload was transparent.
    job = client.status(masked.batchrender["job_id"] if isinstance(masked.batchrender, dict) else
                        masked.model_extra["batchrender"]["job_id"])
    msg = client.store.message(job.job_id)
    assert msg.mask_key and msg.input_key
    with Image.open(io.BytesIO(client.storage.get(msg.mask_key))) as m:
        assert m.getpixel((32, 32)) == 255 and m.getpixel((2, 2)) == 0
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.images.edit(model="tiny", image=("a.gif", b"GIF89a....", "image/gif"), prompt="x", size="64x64")
    assert bad.value.param == "image"


def test_an_openai_batch_sends_a_signed_batch_completed_webhook(server, tenants, tmp_path):
    """OpenAI batches have no webhook field: the tenant's default webhook gets batch.completed,
    signed with the tenant's secret (Standard Webhooks, as OpenAI signs its own)."""
    import json

    from standardwebhooks.webhooks import Webhook

    from tests.workers import wait_for
    from webhooks.testing import LoopbackReceiver

    alice = tenants.create("alice")
    with LoopbackReceiver() as rx:
        tenants.set_webhook(alice.tenant_id, rx.url)
        client = _sdk(server, alice)
        path = tmp_path / "r.jsonl"
        path.write_text("\n".join(_line(f"r{i}", {"model": "tiny", "prompt": "a cup", "size": "64x64"})
                                  for i in range(2)))
        batch = client.batches.create(input_file_id=client.files.create(file=path.open("rb"), purpose="batch").id,
                                      endpoint="/v1/images/generations", completion_window="24h")
        wait_for(lambda: rx.received, timeout=120)
    [event] = rx.received
    payload = Webhook(alice.webhook_secret).verify(event.body, event.headers)
    assert payload["type"] == "batch.completed" and payload["data"]["batch_id"] == batch.id
    assert payload["data"]["counts"]["succeeded"] == 2 and json.loads(event.body) == payload


def test_an_openai_batch_in_progress_says_when_it_should_complete(br_env, settings_for, tenants, tmp_path):
    """Issue 24: position and ETA on the OpenAI-compatible batch object too. No worker takes the
    jobs here (they stay queued); the fleet's measured rate and a live worker are written the way a
    worker writes them. The real SDK parses the object and keeps the extension fields."""
    import json
    import math
    import time

    import redis as redis_lib

    from jobs import callstats, fairshare
    from producer.api import create_app

    alice = tenants.create("alice")
    with ApiServer(create_app(settings_for(br_env, api_rate_per_s=1000, api_burst=1000))) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key=alice.api_key)
        path = tmp_path / "r.jsonl"
        path.write_text("\n".join(_line(f"r{i}", {"model": "tiny", "prompt": f"a cup {i}", "size": "64x64"})
                                  for i in range(6)))
        batch = client.batches.create(input_file_id=client.files.create(file=path.open("rb"), purpose="batch").id,
                                      endpoint="/v1/images/generations", completion_window="24h")
        assert batch.status == "in_progress"
        # Nothing measured yet: no estimate, and the object says why.
        assert batch.expected_completion_at is None and "no call of tiny measured yet" in batch.eta_basis, batch

        r = redis_lib.Redis.from_url(br_env["BATCHRENDER_REDIS_URL"], decode_responses=True)
        try:  # one warm 4-row call of 64x64 measured, by a worker that beat just now
            assert callstats.record_call(r, model="tiny", width=64, height=64, steps=2, rows=4, seconds=2.0,
                                         cold=False, worker="gpu-host:1")
        finally:
            r.close()
        time.sleep(fairshare.SNAPSHOT_TTL_S + 0.1)  # the API reads the lanes and rates afresh
        got = client.batches.retrieve(batch.id)
        assert got.status == "in_progress" and isinstance(got.expected_completion_at, int), got
        assert got.expected_completion_at > got.created_at and "6 queued" in got.eta_basis, got
        assert "1 live worker" in got.eta_basis, got.eta_basis
        # The batch ends when its last job does: the latest of its jobs' own estimates.
        headers = {"Authorization": f"Bearer {alice.api_key}"}
        ids = [json.loads(x)["job_id"] for x in httpx.get(f"{s.url}/v1/batches/{batch.id}/results",
                                                           headers=headers).text.splitlines()]
        jobs = [httpx.get(f"{s.url}/v1/jobs/{j}", headers=headers).json() for j in ids]
        assert all(j["status"] == "queued" for j in jobs)
        latest = max(j["estimated_completion"] for j in jobs)
        again = client.batches.retrieve(batch.id).expected_completion_at
        assert math.ceil(latest) - 2 <= again <= math.ceil(latest) + 2, (latest, again)
        raw = httpx.get(f"{s.url}/v1/batches/{batch.id}", headers=headers).json()
        assert type(raw["expected_completion_at"]) is int

        cancelled = client.batches.cancel(batch.id)
        done = client.batches.retrieve(batch.id)
        assert done.status == "cancelled" and getattr(done, "expected_completion_at", None) is None, done
        assert cancelled.status in ("cancelling", "cancelled")
