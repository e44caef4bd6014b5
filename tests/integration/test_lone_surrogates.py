"""Issue 26, hostile input: a lone surrogate (``"\\ud800"`` as a JSON escape) anywhere in a
request is a 4xx naming the line and the field, before anything is created (jobs/text.py).

The probe that found it: an OpenAI-style batch whose JSONL line had ``custom_id: "a\\ud800"``
was created, and its answer (which echoes each refused line's custom_id) failed with a 500: the
client never learned the batch's id. Against a real API app, real Redis, real local storage.
"""
from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.timeout(120)

GOOD = {"custom_id": "ok", "method": "POST", "url": "/v1/images/generations", "body": {"prompt": "a vase"}}
#: (what is poisoned, the JSONL line as raw text, the field the answer must name)
LINES = [
    ("custom_id", '{"custom_id": "a\\ud800", "method": "POST", "url": "/v1/images/generations", '
                  '"body": {"prompt": "x"}}', "custom_id"),
    ("prompt", '{"custom_id": "b", "method": "POST", "url": "/v1/images/generations", '
               '"body": {"prompt": "x\\udfff"}}', "body.prompt"),
    ("method", '{"custom_id": "c", "method": "PO\\ud83d", "url": "/v1/images/generations", "body": {"prompt": "x"}}',
     "method"),
    ("user", '{"custom_id": "d", "method": "POST", "url": "/v1/images/generations", '
             '"body": {"prompt": "x", "user": "\\udc00"}}', "body.user"),
]


@pytest.fixture
def api(br_env, settings_for):
    from starlette.testclient import TestClient

    from producer.api import create_app

    with TestClient(create_app(settings_for(br_env, api_rate_per_s=10_000, api_burst=10_000)),
                    raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def r(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _auth(tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_key}"}


def _nothing_created(r, tenant) -> None:
    from jobs.names import tenant_key

    assert not r.keys("br:batch:*") and not r.keys("br:job:*"), "a batch or job was created"
    assert int(r.hget(tenant_key(tenant.tenant_id), "active") or 0) == 0


def _stored_as_before(client, tenant, text: str) -> str:
    """A batch file as uploads stored it before they were checked: bytes and record, unjudged."""
    from dataclasses import asdict

    from producer.files import FileRecord, file_key

    rec = FileRecord("file-" + str(time.time_ns()), tenant.tenant_id, "in.jsonl", "batch", len(text), time.time())
    client.storage.put(rec.storage_key, text.encode(), content_type=rec.content_type)
    client.store.r.hset(file_key(rec.id), mapping={k: str(v) for k, v in asdict(rec).items()})
    return rec.id


@pytest.mark.parametrize("what,line,field", LINES, ids=[x[0] for x in LINES])
def test_an_openai_batch_line_with_a_lone_surrogate_is_a_400_naming_line_and_field(
        api, tenants, client, r, what, line, field):
    alice = tenants.create("alice")
    text = json.dumps(GOOD) + "\n" + line + "\n"
    # Uploading it: refused at the door, naming line 2 and the field.
    up = api.post("/v1/files", files={"file": ("in.jsonl", text.encode())}, data={"purpose": "batch"},
                  headers=_auth(alice))
    assert up.status_code == 400, up.text
    error = up.json()["error"]
    assert error["param"] == field and "line 2" in error["message"] and "lone surrogate" in error["message"], error
    assert not r.keys("br:file:*"), "the refused file was recorded"

    # A file stored before uploads were checked: the batch is refused the same way, and nothing
    # (batch, job, reserved slot) is left behind.
    file_id = _stored_as_before(client, alice, text)
    resp = api.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/images/generations"},
                    headers=_auth(alice))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == field and "line 2" in error["message"] and file_id in error["message"], error
    _nothing_created(r, alice)


@pytest.mark.parametrize("path,ctype,body,field", [
    ("/v1/batches", "application/jsonl", b'{"prompt": "ok", "custom_id": "a"}\n{"prompt": "x", "custom_id": "b\\ud800"}\n',
     "custom_id"),
    ("/v1/batches", "application/json", b'{"requests": [{"prompt": "x"}], "metadata": {"k": "\\ud800"}}',
     "metadata.k"),
    ("/v1/batches", "application/json", b'{"input_file_id": "file-\\ud800", "endpoint": "/v1/images/generations"}',
     "input_file_id"),
    ("/v1/jobs", "application/json", b'{"prompt": "x", "webhook_events_filter": ["job.\\udfff"]}',
     "webhook_events_filter[0]"),
    ("/v1/images/generations", "application/json", b'{"prompt": "x", "user": "\\ud800"}', "user"),
    ("/v1/campaigns?dry_run=true", "application/json", b'{"v": 1, "name": "n\\ud800"}', "name"),
], ids=["native-jsonl", "batch-metadata", "openai-batch-body", "jobs", "images", "campaigns"])
def test_a_lone_surrogate_in_any_json_body_is_a_4xx_naming_the_field(api, tenants, r, path, ctype, body, field):
    alice = tenants.create("alice")
    resp = api.post(path, content=body, headers={**_auth(alice), "content-type": ctype})
    assert resp.status_code in (400, 422), resp.text
    error = resp.json()["error"]
    named = error.get("param") or error["errors"][0]["field"]
    assert named == field and "lone surrogate" in error["message"], error
    if ctype == "application/jsonl":
        assert error["errors"][0]["line"] == 2 and "line 2" in error["message"], error
    _nothing_created(r, alice)


def test_paired_surrogates_and_escaped_backslashes_are_text(api, tenants):
    """An emoji written as a surrogate pair, and a literal backslash-u sequence, are fine."""
    alice = tenants.create("alice")
    body = b'{"prompt": "a vase \\ud83d\\ude00", "metadata": {"note": "\\\\ud800 is just text"}}'
    resp = api.post("/v1/jobs", content=body, headers={**_auth(alice), "content-type": "application/json"})
    assert resp.status_code == 201, resp.text
