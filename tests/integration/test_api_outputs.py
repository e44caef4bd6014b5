"""Done-when for fetchable results: an image is fetched through its stable API URL after its
presigned (or signed) link has expired, including through the URL in a webhook delivered after
that expiry. Real celery worker, real uvicorn API, real loopback webhook receiver; for S3 a moto
server behind a proxy that enforces presigned-URL expiry (moto does not) and stands for the
public S3 endpoint a compose network exposes.
"""
from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.test_api_http_client import ApiServer
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(240)
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
def alice(tenants):
    return tenants.create("alice")


def _auth(tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_key}"}


def _succeeded(api: httpx.Client, tenant, job_id: str) -> dict:
    def done():
        r = api.get(f"/v1/jobs/{job_id}", headers=_auth(tenant))
        assert r.status_code == 200, r.text
        job = r.json()
        return job if job["status"] in ("succeeded", "failed", "blocked", "canceled") else None

    job = wait_for(done, timeout=120, every=0.2)
    assert job["status"] == "succeeded", job
    return job


def test_local_output_outlives_its_link_and_the_webhook_url_works_after_expiry(br_env, settings_for, alice,
                                                                                  start_worker):
    from producer.api import create_app
    from webhooks.testing import LoopbackReceiver

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**br_env, "BATCHRENDER_PRESIGN_EXPIRY_S": "1", "BATCHRENDER_PUBLIC_BASE_URL": base,
           "BATCHRENDER_WEBHOOK_SCHEDULE_S": "0,3", "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
    calls = []

    def responder(req):  # the first attempt fails: the event is delivered again after the links expired
        calls.append(time.time())
        return (503, {}) if len(calls) == 1 else (200, {})

    start_worker(env)
    app = create_app(settings_for(env, api_rate_per_s=1000, api_burst=1000))
    with LoopbackReceiver(responder) as rx, ApiServer(app, port=port), httpx.Client(base_url=base, timeout=30) as api:
        r = api.post("/v1/jobs", json={"prompt": "a teapot", "seed": 3, "webhook": rx.url,
                                       "webhook_events_filter": ["job.succeeded"], **SMALL}, headers=_auth(alice))
        assert r.status_code == 201, r.text
        job = _succeeded(api, alice, r.json()["id"])
        [out] = job["outputs"]
        assert out["url"] == f"{base}/v1/jobs/{job['id']}/outputs/0"
        assert out["download_url"].startswith(out["url"] + "?expires=") and out["thumbnail_url"]

        # The stable URL: bytes, ETag, conditional GET, attachment download.
        got = api.get(out["url"], headers=_auth(alice))
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert hashlib.sha256(got.content).hexdigest() == out["sha256"] == got.headers["etag"].strip('"')
        assert api.get(out["url"], headers={**_auth(alice), "If-None-Match": got.headers["etag"]}).status_code == 304
        saved = api.get(out["url"] + "?download=1", headers=_auth(alice))
        assert saved.headers["content-disposition"] == f'attachment; filename="{job["id"]}-0.png"'
        assert api.get(out["url"]).status_code == 401, "the stable URL needs the key"

        # The keyless link expires; the stable URL does not.
        wait_for(lambda: time.time() > out["download_expires_at"] + 0.5)
        expired = api.get(out["download_url"])
        assert expired.status_code == 403 and expired.json()["error"]["code"] == "link_expired"
        again = api.get(out["url"], headers=_auth(alice))
        assert again.status_code == 200 and again.content == got.content
        fresh = api.get(f"/v1/jobs/{job['id']}", headers=_auth(alice)).json()["outputs"][0]
        assert fresh["download_expires_at"] > out["download_expires_at"], "each answer makes new links"

        # The webhook: its second attempt came after the first links had expired and carries new ones.
        wait_for(lambda: len(calls) >= 2 and len(rx.received) >= 2, timeout=60)
        bodies = [json.loads(x.body) for x in rx.received]
        assert [b["type"] for b in bodies] == ["job.succeeded", "job.succeeded"]
        first, last = bodies[0]["data"]["outputs"][0], bodies[-1]["data"]["outputs"][0]
        assert last["download_expires_at"] > first["download_expires_at"], "links refreshed at delivery"
        assert first["thumbnail_url"] and last["thumbnail_url"], "the thumbnail link survives the refresh"
        wait_for(lambda: time.time() > last["download_expires_at"] + 0.5)
        via_webhook = api.get(last["url"], headers=_auth(alice))
        assert via_webhook.status_code == 200 and via_webhook.content == got.content


def test_s3_output_redirects_to_a_fresh_presigned_url_on_the_public_endpoint(br_env, settings_for, alice,
                                                                                s3_endpoint, start_worker):
    import boto3

    from producer.api import create_app
    from tests.faults import FaultProxy

    bucket = f"out-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="t",
                 aws_secret_access_key="t").create_bucket(Bucket=bucket)
    with FaultProxy(s3_endpoint, presign_grace_s=2) as public:
        env = {**br_env, "BATCHRENDER_STORAGE_URL": f"s3://{bucket}/renders", "BATCHRENDER_S3_ENDPOINT_URL": s3_endpoint,
               "BATCHRENDER_S3_PUBLIC_ENDPOINT_URL": public.url, "BATCHRENDER_S3_PATH_STYLE": "true",
               "BATCHRENDER_S3_ACCESS_KEY_ID": "t", "BATCHRENDER_S3_SECRET_ACCESS_KEY": "t",
               "BATCHRENDER_PRESIGN_EXPIRY_S": "1"}
        start_worker(env)
        with ApiServer(create_app(settings_for(env, api_rate_per_s=1000, api_burst=1000))) as server, \
                httpx.Client(base_url=server.url, timeout=30) as api:
            r = api.post("/v1/jobs", json={"prompt": "a lamp", "seed": 4, **SMALL}, headers=_auth(alice))
            job = _succeeded(api, alice, r.json()["id"])
            [out] = job["outputs"]
            assert out["url"] == f"{server.url}/v1/jobs/{job['id']}/outputs/0"
            assert out["download_url"].startswith(public.url + "/"), "signed for the public endpoint"

            # The presigned URL dies (the proxy enforces X-Amz-Expires); the stable URL mints a new one.
            wait_for(lambda: httpx.get(out["download_url"]).status_code == 403, timeout=30)
            hop = api.get(out["url"], headers=_auth(alice))
            assert hop.status_code == 302, hop.text
            old_date = parse_qs(urlparse(out["download_url"]).query)["X-Amz-Date"][0]
            new_date = parse_qs(urlparse(hop.headers["location"]).query)["X-Amz-Date"][0]
            assert new_date > old_date and hop.headers["location"].startswith(public.url + "/")
            image = httpx.get(hop.headers["location"])
            assert image.status_code == 200 and hashlib.sha256(image.content).hexdigest() == out["sha256"]
            thumb = api.get(out["url"] + "/thumbnail", headers=_auth(alice), follow_redirects=True)
            assert thumb.status_code == 200 and thumb.content[:4] == b"RIFF"


def test_unknown_foreign_and_deleted_jobs_answer_404(br_env, settings_for, alice, tenants, start_worker, tmp_path):
    from starlette.testclient import TestClient

    from producer.api import create_app

    bob = tenants.create("bob")
    start_worker(br_env)
    api = TestClient(create_app(settings_for(br_env, api_rate_per_s=1000, api_burst=1000)))
    job_id = api.post("/v1/jobs", json={"prompt": "a chair", **SMALL}, headers=_auth(alice)).json()["id"]
    job = _succeeded(api, alice, job_id)
    path = urlparse(job["outputs"][0]["url"]).path

    unknown = api.get("/v1/jobs/job_doesnotexist", headers=_auth(alice))
    foreign = api.get(f"/v1/jobs/{job_id}", headers=_auth(bob))
    assert unknown.status_code == foreign.status_code == 404
    assert foreign.json()["error"] == {"code": "not_found", "message": f"no job {job_id!r}"}
    assert api.get(path, headers=_auth(bob)).status_code == 404
    assert api.delete(f"/v1/jobs/{job_id}", headers=_auth(bob)).status_code == 404
    assert api.get(path[:-1] + "99", headers=_auth(alice)).status_code == 422  # index out of range 0-63
    assert api.get(path[:-1] + "5", headers=_auth(alice)).json()["error"]["code"] == "output_not_found"

    files = sorted(p.name for p in (tmp_path / "out").rglob("*") if job_id in str(p) and p.is_file())
    assert files == ["0.png", "0.png.json", "0.png.thumb.webp", "0.png.thumb.webp.json"], files
    gone = api.delete(f"/v1/jobs/{job_id}", headers=_auth(alice))
    assert gone.status_code == 200 and gone.json() == {"id": job_id, "deleted": True}
    assert not [p for p in (tmp_path / "out").rglob("*") if job_id in str(p)], "files and folder gone"
    after = api.get(f"/v1/jobs/{job_id}", headers=_auth(alice))
    assert after.status_code == 404 and after.json()["error"]["code"] == "deleted"
    assert api.get(f"/v1/jobs/{job_id}", headers=_auth(bob)).json()["error"]["code"] == "not_found"
    assert api.get(path, headers=_auth(alice)).json()["error"]["code"] == "deleted"
    assert api.get(f"/v1/jobs?after=nonsense", headers=_auth(alice)).json()["error"]["errors"][0]["field"] == "after"
