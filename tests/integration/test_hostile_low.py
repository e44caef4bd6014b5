"""Issue 26's low findings from the hostile hour, each tried as the probe tried it (real Redis,
the real app): the JSON depth gate and media types, another tenant's ids in cursors, what errors
and webhook delivery lists show tenants, unbounded metadata and event filters."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(240)


def _auth(tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_key}"}


@pytest.fixture
def api(br_env, settings_for):
    from starlette.testclient import TestClient

    from producer.api import create_app

    settings = settings_for(br_env, api_rate_per_s=10_000, api_burst=10_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


#: Deep enough that a parser recursing on it fails (json.loads: RecursionError, a 500).
DEEP = '{"prompt": "a", "metadata": ' + "[" * 20_000 + "]" * 20_000 + "}"


@pytest.mark.parametrize("ctype", ["application/JSON", "Application/Json; charset=utf-8", "APPLICATION/JSON",
                                   "application/vnd.api+JSON", "TEXT/PLAIN", None])
def test_the_json_depth_gate_matches_media_types_in_any_case_and_with_parameters(api, tenants, ctype):
    """A media type is case-insensitive (RFC 9110): the depth gate (and the lone-surrogate check)
    must not be skipped for ``application/JSON``, and a body with no content type is read as JSON
    by the routes, so it is checked too."""
    alice = tenants.create("alice")
    headers = {**_auth(alice), **({"content-type": ctype} if ctype else {})}
    r = api.post("/v1/jobs", content=DEEP, headers=headers)
    assert r.status_code == 422 and "nested deeper than 32" in r.json()["error"]["message"], (ctype, r.text)
    r = api.post("/v1/jobs", content='{"prompt": "a\\ud800"}', headers=headers)
    assert r.status_code == 422 and "surrogate" in r.json()["error"]["message"], (ctype, r.text)


def test_a_second_content_type_header_does_not_hide_a_json_body_from_the_depth_gate(api, tenants):
    alice = tenants.create("alice")
    headers = [*_auth(alice).items(), ("content-type", "application/json"), ("content-type", "image/png")]
    r = api.post("/v1/jobs", content=DEEP, headers=headers)
    assert r.status_code == 422 and "nested deeper than 32" in r.json()["error"]["message"], r.text


def test_paging_after_another_tenants_id_answers_as_for_an_id_that_does_not_exist(api, tenants):
    """``?after=<id>`` positions a page at that item: for another tenant's job or batch it must say
    what it says for an id nobody has, not page from (and so reveal) the other tenant's item."""
    alice, bob = tenants.create("alice"), tenants.create("bob")
    job = api.post("/v1/jobs", json={"prompt": "bob's"}, headers=_auth(bob)).json()["id"]
    batch = api.post("/v1/batches", content='{"prompt": "bob\'s"}\n',
                     headers={**_auth(bob), "content-type": "application/jsonl"}).json()["id"]
    api.post("/v1/jobs", json={"prompt": "alice's"}, headers=_auth(alice))
    for path, theirs, nobodys in (("/v1/jobs", job, "job_" + "0" * 32), ("/v1/batches", batch, "bat_" + "0" * 32)):
        assert len(theirs) == len(nobodys), theirs
        mine_to_them = api.get(path, params={"after": theirs}, headers=_auth(alice))
        mine_to_nobody = api.get(path, params={"after": nobodys}, headers=_auth(alice))
        assert mine_to_them.status_code == mine_to_nobody.status_code == 422, (mine_to_them.text, mine_to_nobody.text)
        assert mine_to_them.text.replace(theirs, "ID") == mine_to_nobody.text.replace(nobodys, "ID")
        assert api.get(path, params={"after": theirs}, headers=_auth(bob)).status_code == 200, "the owner pages on"


def test_the_deliveries_list_never_shows_what_a_webhook_host_resolves_to(api, tenants, redis_url, caplog):
    """A webhook host that resolves to an internal address at delivery time (DNS changed since
    submit, or a rebinding name): the attempt is refused, and the worker's log names the address
    for the operator; the tenant's GET /v1/deliveries shows only the URL it gave and why."""
    import json
    import logging
    import random

    import redis as redis_lib

    from webhooks.delivery import Deliverer
    from webhooks.store import DeliveryStore, EventRecord

    alice = tenants.create("alice")
    r = redis_lib.Redis.from_url(redis_url)
    store = DeliveryStore(r, 3600)
    url = "http://hooks.alice.example:8080/in"
    assert store.create(EventRecord(id="evt_rebound", type="job.succeeded", url=url, tenant=alice.tenant_id,
                                    payload=json.dumps({"type": "job.succeeded"}), secrets=("whsec_" + "A" * 32,)))
    deliverer = Deliverer(store, timeout_s=5, schedule=[0], rng=random.Random(1),
                          resolver=lambda host, port: ["10.61.7.23"])
    with caplog.at_level(logging.INFO, logger="webhooks"):
        deliverer.attempt(store.get("evt_rebound"))
    assert "10.61.7.23" in caplog.text, "the operator's log keeps the resolution detail"
    r.close()

    page = api.get("/v1/deliveries", headers=_auth(alice))
    assert page.status_code == 200, page.text
    [shown] = page.json()["data"]
    assert shown["url"] == url and shown["state"] == "dead", shown
    assert "10.61.7.23" not in page.text, shown
    assert "refused" in shown["last_error"] and "hooks.alice.example" in shown["last_error"], shown
    assert shown["attempt_log"][0]["error"] == shown["last_error"], shown


@pytest.mark.parametrize("error, url, shown", [
    ("refused: [fd00::1]:80 is not the validated webhook target", "http://h.example/", "refused: an address:80 is"),
    ("ConnectError: could not reach 10.0.0.3:8080", "http://h.example:8080/", "could not reach an address"),
    ("ConnectError: 10.0.0.5:80 refused", "http://10.0.0.5/x", "ConnectError: 10.0.0.5:80 refused"),
    ("HTTP 503", "http://h.example/", "HTTP 503"),
])
def test_a_delivery_error_keeps_only_addresses_the_tenant_gave(error, url, shown):
    from producer.api.routers.deliveries import tenant_error

    assert shown in tenant_error(error, url)


def _upload_batch_file(api, auth) -> str:
    line = '{"custom_id": "a", "method": "POST", "url": "/v1/images/generations", "body": {"prompt": "a", "model": "tiny"}}\n'
    r = api.post("/v1/files", files={"file": ("in.jsonl", line.encode(), "application/jsonl")},
                 data={"purpose": "batch"}, headers=auth)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


@pytest.mark.parametrize("metadata, words", [
    ({f"k{i}": "v" for i in range(17)}, "at most 16 keys"),
    ({"k" * 65: "v"}, "64 characters"),
    ({"k": "v" * 513}, "512 characters"),
])
def test_batch_metadata_is_capped_as_openai_caps_it(api, tenants, metadata, words):
    """OpenAI's batch metadata: at most 16 keys, keys up to 64 characters, values up to 512.
    Both batch shapes refuse more, naming the limit, and create nothing."""
    alice = tenants.create("alice")
    auth = _auth(alice)
    r = api.post("/v1/batches", json={"requests": [{"prompt": "a"}], "metadata": metadata}, headers=auth)
    assert r.status_code == 422 and words in r.json()["error"]["message"], r.text
    assert r.json()["error"]["errors"][0]["field"].startswith("metadata"), r.text
    r = api.post("/v1/batches", json={"input_file_id": _upload_batch_file(api, auth),
                                      "endpoint": "/v1/images/generations", "completion_window": "24h",
                                      "metadata": metadata}, headers=auth)
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert api.get("/v1/batches", headers=auth).json()["data"] == [], "no batch was created"
    fine = {f"k{i}": "v" * 512 for i in range(16)}
    r = api.post("/v1/batches", json={"requests": [{"prompt": "a"}], "metadata": fine}, headers=auth)
    assert r.status_code == 201 and r.json()["meta"] == fine, r.text


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
@pytest.mark.parametrize("events, words", [
    (["job.failed"] * 100_000, "at most 8 event types"),
    (["x" * 100_000], "unknown event type"),
])
def test_webhook_events_filter_is_bounded(api, tenants, path, events, words):
    alice = tenants.create("alice")
    hook = {"webhook": "http://127.0.0.1:9/hook"}
    body = ({"prompt": "a", **hook, "webhook_events_filter": events} if path == "/v1/jobs"
            else {"requests": [{"prompt": "a"}], **hook, "webhook_events_filter": events})
    r = api.post(path, json=body, headers=_auth(alice))
    assert r.status_code == 422 and words in r.json()["error"]["message"], r.text[:500]
    assert len(r.text) < 2000, "the refusal does not echo what it refuses"
    r = api.post("/v1/jobs", json={"prompt": "a", "webhook_events_filter": events}, headers=_auth(alice))
    assert r.status_code == 422, "checked without a webhook too"


def test_the_python_client_bounds_the_events_filter_without_a_webhook_too(client):
    from jobs.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="at most 8 event types"):
        client.submit({"prompt": "a", "webhook_events_filter": ["job.failed"] * 1000})
