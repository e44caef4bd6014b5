"""``producer.http_client``: errors and secrets, with an in-memory transport (no I/O)."""
from __future__ import annotations

import json

import httpx
import pytest

from producer.http_client import ApiError, HttpClient

KEY = "br_secret-key-that-must-not-leak"


def client_answering(handler) -> HttpClient:
    return HttpClient("http://api.test/", KEY, transport=httpx.MockTransport(handler))


def test_api_key_is_sent_as_bearer_and_never_shown():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200, json={"id": "job_1", "status": "queued"})

    api = client_answering(handler)
    assert api.get_job("job_1")["status"] == "queued"
    assert seen["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(api) and KEY not in str(vars(api).get("base_url"))


def test_error_body_becomes_a_typed_api_error():
    def handler(request):
        return httpx.Response(429, headers={"Retry-After": "3"},
                              json={"error": {"code": "rate_limited", "message": "slow down"}})

    with pytest.raises(ApiError) as e:
        client_answering(handler).get_batch("bat_1")
    err = e.value
    assert (err.status, err.code, err.message, err.retry_after) == (429, "rate_limited", "slow down", 3.0)
    assert err.body["error"]["code"] == "rate_limited" and KEY not in str(err)


def test_non_json_error_still_raises_api_error():
    with pytest.raises(ApiError) as e:
        client_answering(lambda request: httpx.Response(502, text="bad gateway")).get_job("x")
    assert e.value.status == 502 and e.value.code == "http_error" and "bad gateway" in e.value.message


def test_create_job_sends_idempotency_key_and_prefer_wait():
    seen = {}

    def handler(request):
        seen.update(request.headers, body=json.loads(request.content))
        return httpx.Response(201, json={"id": "job_1", "status": "succeeded"})

    client_answering(handler).create_job({"prompt": "a cat"}, idempotency_key="k-1", wait=5)
    assert seen["idempotency-key"] == "k-1" and seen["prefer"] == "wait=5" and seen["body"] == {"prompt": "a cat"}


def test_jsonl_batch_is_sent_as_is_and_results_are_parsed():
    seen = {}

    def handler(request):
        if request.url.path.endswith("/results"):
            return httpx.Response(200, text='{"custom_id": "a"}\n{"custom_id": "b"}\n',
                                  headers={"content-type": "application/jsonl"})
        seen.update(path=request.url.path, ctype=request.headers["content-type"], body=request.content)
        return httpx.Response(201, json={"id": "bat_1"})

    api = client_answering(handler)
    api.create_batch('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert seen["ctype"] == "application/jsonl" and seen["body"].count(b"\n") == 2
    assert [r["custom_id"] for r in api.batch_results("bat_1")] == ["a", "b"]


def test_ids_stay_one_path_segment():
    paths = []

    def handler(request):
        paths.append(request.url.raw_path)
        return httpx.Response(200, json={})

    client_answering(handler).get_job("../batches/x")
    assert paths == [b"/v1/jobs/..%2Fbatches%2Fx"]
