"""The HTTP API's batch endpoints, in process (TestClient) against real Redis, no worker."""
from __future__ import annotations

import json

import pytest

from tests.conftest import TEST_KEYS

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api(tmp_path, redis_url, settings_for):
    from fastapi.testclient import TestClient

    from producer.api import create_app

    env = {"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": redis_url,
           "BATCHRENDER_STORAGE_URL": (tmp_path / "out").as_uri(), "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
           "BATCHRENDER_STORAGE_SHARED": "1", **TEST_KEYS}
    with TestClient(create_app(settings_for(env)), raise_server_exceptions=False) as c:
        yield c
        c.app.state.client.close()


@pytest.fixture
def headers(tenants):
    return {"Authorization": f"Bearer {tenants.create('alice').api_key}"}


def jsonl(*lines) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()


def test_json_batch_queues_valid_items_and_reports_bad_ones(api, headers):
    r = api.post("/v1/batches", headers=headers, json={"requests": [
        {"prompt": "a cat", "custom_id": "c1"}, {"prompt": "", "custom_id": "c2"},
        {"prompt": "a dog", "custom_id": "c3", "steps": 999}, {"prompt": "a cow", "custom_id": "c4"}],
        "metadata": {"order": 7}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["accepted"] == 2 and body["rejected"] == 2 and body["total"] == 2
    assert [(e["line"], e["custom_id"], e["code"]) for e in body["errors"]] == [
        (2, "c2", "invalid_request"), (3, "c3", "invalid_request")]
    assert body["errors"][1]["errors"][0]["field"] == "steps"
    info = api.get(f"/v1/batches/{body['id']}", headers=headers).json()
    assert info["status"] == "in_progress" and info["meta"] == {"order": 7}
    assert info["counts"] == {"total": 2, "succeeded": 0, "failed": 0, "blocked": 0, "canceled": 0, "pending": 2}


def test_jsonl_batch_reports_errors_by_line_and_queues_the_rest(api, headers):
    body = jsonl({"prompt": "a cat", "custom_id": "a"}, "", "{not json", {"prompt": "a dog", "width": 100,
                 "height": 64, "custom_id": "b"}, '["a list"]', {"prompt": "a cow", "custom_id": "c"},
                 {"prompt": "again", "custom_id": "a"})
    r = api.post("/v1/batches", headers={**headers, "content-type": "application/jsonl"}, content=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["accepted"] == 2 and out["rejected"] == 4
    assert [(e["line"], e["code"]) for e in out["errors"]] == [
        (3, "invalid_json"), (4, "invalid_request"), (5, "invalid_request"), (7, "duplicate_custom_id")]
    assert "multiple of 8" in out["errors"][1]["message"] and out["errors"][1]["custom_id"] == "b"
    results = api.get(f"/v1/batches/{out['id']}/results", headers=headers)
    assert results.headers["content-type"].startswith("application/jsonl")
    assert [json.loads(x)["custom_id"] for x in results.text.splitlines()] == ["a", "c"]


def test_results_are_joined_on_custom_id(api, headers):
    sent = [{"prompt": f"item {i}", "custom_id": f"sku-{i}"} for i in range(5)]
    batch = api.post("/v1/batches", headers=headers, json={"requests": sent}).json()
    lines = [json.loads(x) for x in api.get(f"/v1/batches/{batch['id']}/results", headers=headers).text.splitlines()]
    by_id = {x["custom_id"]: x for x in lines}
    assert set(by_id) == {s["custom_id"] for s in sent}
    for x in lines:
        job = api.get(f"/v1/jobs/{x['job_id']}", headers=headers).json()
        assert job["custom_id"] == x["custom_id"] and job["status"] == x["status"] == "queued"
        assert job["batch_id"] == batch["id"]


def test_cancel_batch_cancels_every_queued_job(api, headers):
    batch = api.post("/v1/batches", headers=headers, json={"requests": [{"prompt": f"p{i}"} for i in range(3)]}).json()
    r = api.post(f"/v1/batches/{batch['id']}/cancel", headers=headers)
    assert r.status_code == 200
    assert r.json()["counts"]["canceled"] == 3 and r.json()["status"] == "completed"
    lines = api.get(f"/v1/batches/{batch['id']}/results", headers=headers).text.splitlines()
    assert {json.loads(x)["status"] for x in lines} == {"canceled"}


def test_batch_webhook_applies_to_each_item(api, headers):
    batch = api.post("/v1/batches", headers=headers, json={"requests": [{"prompt": "a"}, {"prompt": "b"}],
                                                          "webhook": "http://127.0.0.1:9/hook"}).json()
    api.post(f"/v1/batches/{batch['id']}/cancel", headers=headers)
    types = sorted(e["type"] for e in api.get("/v1/deliveries", headers=headers).json()["data"])
    assert types == ["batch.completed", "job.canceled", "job.canceled"]


def test_batch_with_no_valid_item_is_422(api, headers):
    r = api.post("/v1/batches", headers={**headers, "content-type": "application/jsonl"}, content=jsonl("{", {"x": 1}))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and [e["line"] for e in err["errors"]] == [1, 2]
    r = api.post("/v1/batches", headers=headers, json={"requests": []})
    assert r.status_code == 422


@pytest.mark.parametrize("payload", [{"requests": "nope"}, {"requests": [], "extra": 1}, [1, 2]])
def test_malformed_json_batch_is_422(api, headers, payload):
    r = api.post("/v1/batches", headers=headers, json=payload)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_batch_in_another_media_type_is_415(api, headers):
    r = api.post("/v1/batches", headers={**headers, "content-type": "application/xml"}, content=b"<a/>")
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
