"""The HTTP API's job endpoints, in process (TestClient) against real Redis; no worker unless named."""
from __future__ import annotations

import pytest

from tests.conftest import TEST_KEYS

pytestmark = pytest.mark.timeout(120)

BLOCKED_PROMPT = "Nude photo of a child"  # tests/data/moderation/prompts.jsonl, label minors_sexual


@pytest.fixture
def api_env(tmp_path, redis_url):
    """Settings env of one test, without the tiny model (nothing here renders)."""
    return {"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": redis_url,
            "BATCHRENDER_STORAGE_URL": (tmp_path / "out").as_uri(), "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
            "BATCHRENDER_STORAGE_SHARED": "1", **TEST_KEYS}


@pytest.fixture
def make_api(api_env, settings_for):
    """``make_api(**settings overrides) -> TestClient``; clients are closed at the end."""
    from fastapi.testclient import TestClient

    from producer.api import create_app

    made = []

    def make(env=None, **overrides):
        c = TestClient(create_app(settings_for(env or api_env, **overrides)), raise_server_exceptions=False)
        made.append(c)
        return c

    yield make
    for c in made:
        c.app.state.client.close()
        c.close()


def auth(tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_key}"}


@pytest.fixture
def api(make_api):
    return make_api()


@pytest.fixture
def alice(tenants):
    return tenants.create("alice")


# -- auth and isolation -----------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer br_not-a-key"}, {"Authorization": "Basic eDp5"},
                                     {"Authorization": "Bearer "}])
def test_request_without_a_valid_key_is_401(api, headers):
    r = api.post("/v1/jobs", json={"prompt": "a cat"}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_a_key_that_is_not_recognised_is_told_so_not_asked_for_a_key(api, tenants):
    """A sent key that matches no tenant (or a disabled one) is named as the problem; only a
    request without a key is asked to send one."""
    wrong = api.post("/v1/jobs", json={"prompt": "a cat"}, headers={"Authorization": "Bearer br_not-a-key"})
    assert wrong.status_code == 401 and "not recognised" in wrong.json()["error"]["message"], wrong.text
    assert "send 'Authorization" not in wrong.json()["error"]["message"]
    bob = tenants.create("bob")
    tenants.set_disabled(bob.tenant_id)
    disabled = api.get("/v1/jobs", headers=auth(bob))
    assert disabled.status_code == 401 and "not recognised" in disabled.json()["error"]["message"], disabled.text
    for headers in ({}, {"Authorization": "Basic eDp5"}):
        none = api.post("/v1/jobs", json={"prompt": "a cat"}, headers=headers)
        assert none.status_code == 401 and "send 'Authorization: Bearer" in none.json()["error"]["message"]


def test_revoked_key_is_401(api, tenants, alice):
    assert api.get("/v1/deliveries", headers=auth(alice)).status_code == 200
    tenants.revoke_key(alice.api_key)
    assert api.get("/v1/deliveries", headers=auth(alice)).status_code == 401


def test_tenant_sees_nothing_of_another_tenant(api, tenants, alice):
    bob = tenants.create("bob")
    job = api.post("/v1/jobs", json={"prompt": "a cat", "webhook": "http://127.0.0.1:9/hook"},
                   headers=auth(alice)).json()
    batch = api.post("/v1/batches", json={"requests": [{"prompt": "a dog", "custom_id": "d1"}]},
                     headers=auth(alice)).json()
    ended = api.post("/v1/jobs", json={"prompt": "a cow", "webhook": "http://127.0.0.1:9/hook"},
                     headers=auth(alice)).json()
    api.post(f"/v1/jobs/{ended['id']}/cancel", headers=auth(alice))  # a job.canceled event for alice
    assert [e["type"] for e in api.get("/v1/deliveries", headers=auth(alice)).json()["data"]] == ["job.canceled"]
    for method, path in [("GET", f"/v1/jobs/{job['id']}"), ("POST", f"/v1/jobs/{job['id']}/cancel"),
                         ("GET", f"/v1/batches/{batch['id']}"), ("GET", f"/v1/batches/{batch['id']}/results"),
                         ("POST", f"/v1/batches/{batch['id']}/cancel"), ("GET", f"/v1/deliveries?job_id={job['id']}"),
                         ("GET", f"/v1/deliveries?job_id={ended['id']}")]:
        r = api.request(method, path, headers=auth(bob))
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
        # exactly what a missing id answers: nothing tells bob the id exists
        missing = api.request(method, path.replace(job["id"], "job_missing").replace(batch["id"], "bat_missing")
                              .replace(ended["id"], "job_missing"), headers=auth(bob))
        assert missing.status_code == 404
    assert api.get("/v1/deliveries", headers=auth(bob)).json() == {"data": []}
    # bob's cancels changed nothing
    assert api.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).json()["status"] == "queued"
    assert api.get(f"/v1/batches/{batch['id']}", headers=auth(alice)).json()["counts"]["canceled"] == 0


# -- jobs -------------------------------------------------------------------------------------------
def test_queued_job_shows_its_queue_position(make_api, alice):
    api = make_api(scheduler="fifo")  # submission order (fair share: tests/integration/test_fair_share.py)
    ids = [api.post("/v1/jobs", json={"prompt": f"a cat {i}"}, headers=auth(alice)).json()["id"] for i in range(3)]
    views = [api.get(f"/v1/jobs/{j}", headers=auth(alice)).json() for j in ids]
    assert [v["status"] for v in views] == ["queued"] * 3
    assert [v["queue_position"] for v in views] == [0, 1, 2]
    api.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth(alice))
    assert api.get(f"/v1/jobs/{ids[2]}", headers=auth(alice)).json()["queue_position"] == 1


def test_cancel_queued_job(api, alice):
    job = api.post("/v1/jobs", json={"prompt": "a cat"}, headers=auth(alice)).json()
    r = api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(alice))
    assert r.status_code == 200 and r.json()["status"] == "canceled" and r.json()["queue_position"] is None
    again = api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(alice))
    assert again.json()["status"] == "canceled"


def test_invalid_request_names_the_field(api, alice):
    r = api.post("/v1/jobs", json={"prompt": "x", "width": 100, "height": 64}, headers=auth(alice))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and "multiple of 8" in err["message"]
    assert err["errors"][0]["field"] == "width"
    r = api.post("/v1/jobs", json={"prompt": "x", "model": "nope"}, headers=auth(alice))
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_model"
    r = api.post("/v1/jobs", content=b"{not json", headers={**auth(alice), "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_moderation_block_is_422_with_stage_and_categories_and_recorded(api, alice):
    r = api.post("/v1/jobs", json={"prompt": BLOCKED_PROMPT}, headers=auth(alice))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "moderation_blocked"
    assert err["stage"] == "prompt_rules" and "minors_sexual" in err["categories"]
    job = api.get(f"/v1/jobs/{err['job_id']}", headers=auth(alice)).json()
    assert job["status"] == "blocked" and job["error"]["code"] == "moderation_blocked"


@pytest.mark.parametrize("prompt", [
    "夕暮れの灯台、油絵",  # Japanese
    "해질녘 등대, 유화",  # Korean
    "\u202elighthouse at dusk\u202c",  # a right-to-left override
    "مَنارة عند الغروب lighthouse 灯塔 маяк",  # mixed scripts
    "light\u200bhouse\u2060 at\u00ad dusk",  # invisible characters
])
def test_prompt_in_any_script_is_accepted(api, alice, prompt):
    r = api.post("/v1/jobs", json={"prompt": prompt}, headers=auth(alice))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("body,field", [
    (b'{"prompt": "a lighthouse \\ud800 at dusk"}', "prompt"),
    (b'{"prompt": "a lighthouse", "negative_prompt": "blur \\udfff"}', "negative_prompt"),
])
def test_lone_surrogate_is_a_422_naming_the_field_never_a_500(api, alice, body, field):
    r = api.post("/v1/jobs", content=body, headers={**auth(alice), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    # ours ("contains a lone surrogate U+D800 ...") or the JSON parser's ("... unicode string")
    assert err["errors"][0]["field"] == field, err
    assert "surrogate" in err["errors"][0]["message"] or "unicode" in err["errors"][0]["message"], err


@pytest.mark.parametrize("prompt", ["裸の小学生", "голая девочка", "n\u200bude c\u200bhild"])
def test_blocked_prompt_in_another_script_is_a_422_moderation_block(api, alice, prompt):
    r = api.post("/v1/jobs", json={"prompt": prompt}, headers=auth(alice))
    assert r.status_code == 422 and r.json()["error"]["code"] == "moderation_blocked", r.text


def test_unknown_route_and_method_are_json_errors(api, alice):
    r = api.get("/v1/nope", headers=auth(alice))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = api.delete("/v1/jobs", headers=auth(alice))
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_openapi_and_docs_are_served(api):
    spec = api.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/batches", "/v1/batches/{batch_id}",
            "/v1/batches/{batch_id}/results", "/v1/batches/{batch_id}/cancel", "/v1/deliveries"} <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "ErrorBody" in spec["components"]["schemas"]
    assert api.get("/docs").status_code == 200


# -- idempotency ------------------------------------------------------------------------------------
def test_same_idempotency_key_and_body_returns_the_same_job(api, alice):
    h = {**auth(alice), "Idempotency-Key": "order-17"}
    first = api.post("/v1/jobs", json={"prompt": "a cat", "seed": 1}, headers=h)
    second = api.post("/v1/jobs", json={"prompt": "a cat", "seed": 1}, headers=h)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert second.status_code == 200 and second.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == second.json()["id"]


def test_same_idempotency_key_with_another_body_is_409(api, alice):
    h = {**auth(alice), "Idempotency-Key": "order-18"}
    assert api.post("/v1/jobs", json={"prompt": "a cat"}, headers=h).status_code == 201
    r = api.post("/v1/jobs", json={"prompt": "a dog"}, headers=h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"


def test_idempotency_keys_are_per_tenant(api, tenants, alice):
    bob = tenants.create("bob")
    a = api.post("/v1/jobs", json={"prompt": "a cat"}, headers={**auth(alice), "Idempotency-Key": "k"})
    b = api.post("/v1/jobs", json={"prompt": "a dog"}, headers={**auth(bob), "Idempotency-Key": "k"})
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]


def test_without_idempotency_key_each_post_is_a_new_job(api, alice):
    ids = {api.post("/v1/jobs", json={"prompt": "a cat"}, headers=auth(alice)).json()["id"] for _ in range(3)}
    assert len(ids) == 3


def test_refused_request_releases_its_idempotency_key(api, alice):
    h = {**auth(alice), "Idempotency-Key": "order-19"}
    assert api.post("/v1/jobs", json={"prompt": "x", "model": "nope"}, headers=h).status_code == 422
    assert api.post("/v1/jobs", json={"prompt": "x"}, headers=h).status_code == 201


def test_replayed_blocked_request_is_blocked_again(api, alice):
    h = {**auth(alice), "Idempotency-Key": "order-20"}
    first = api.post("/v1/jobs", json={"prompt": BLOCKED_PROMPT}, headers=h)
    second = api.post("/v1/jobs", json={"prompt": BLOCKED_PROMPT}, headers=h)
    assert first.status_code == second.status_code == 422
    assert second.headers["idempotent-replayed"] == "true"
    assert first.json()["error"]["job_id"] == second.json()["error"]["job_id"]


# -- limits -----------------------------------------------------------------------------------------
def test_rate_limit_is_429_with_integer_retry_after(make_api, alice):
    api = make_api(api_rate_per_s=0.5, api_burst=2)
    codes = [api.get("/v1/deliveries", headers=auth(alice)) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    r = codes[-1]
    assert r.json()["error"]["code"] == "rate_limited"
    assert r.headers["retry-after"].isdigit() and 1 <= int(r.headers["retry-after"]) <= 2


def test_rate_limit_is_per_tenant(make_api, tenants, alice):
    api = make_api(api_rate_per_s=0.5, api_burst=1)
    bob = tenants.create("bob")
    assert api.get("/v1/deliveries", headers=auth(alice)).status_code == 200
    assert api.get("/v1/deliveries", headers=auth(alice)).status_code == 429
    assert api.get("/v1/deliveries", headers=auth(bob)).status_code == 200


def test_too_many_queued_jobs_is_429(make_api, alice):
    api = make_api(api_max_queued_per_tenant=2)
    for i in range(2):
        assert api.post("/v1/jobs", json={"prompt": f"a cat {i}"}, headers=auth(alice)).status_code == 201
    r = api.post("/v1/jobs", json={"prompt": "one too many"}, headers=auth(alice))
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_queued_jobs"
    assert r.headers["retry-after"].isdigit()
    batch = api.post("/v1/batches", json={"requests": [{"prompt": "x"}]}, headers=auth(alice))
    assert batch.status_code == 429 and batch.json()["error"]["code"] == "too_many_queued_jobs"


def test_ended_jobs_free_queue_slots(make_api, alice):
    api = make_api(api_max_queued_per_tenant=1)
    job = api.post("/v1/jobs", json={"prompt": "a cat"}, headers=auth(alice)).json()
    assert api.post("/v1/jobs", json={"prompt": "a dog"}, headers=auth(alice)).status_code == 429
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(alice))
    assert api.post("/v1/jobs", json={"prompt": "a dog"}, headers=auth(alice)).status_code == 201


def test_body_over_the_limit_is_413(make_api, alice):
    api = make_api(api_max_body_bytes=1024)
    r = api.post("/v1/jobs", json={"prompt": "a" * 2000}, headers=auth(alice))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b'{"prompt": "' + b"a" * 100 + b'"}\n'

    r = api.post("/v1/batches", content=chunks(), headers={**auth(alice), "content-type": "application/jsonl"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert api.post("/v1/jobs", json={"prompt": "a cat"}, headers=auth(alice)).status_code == 201


# -- webhooks: the SSRF guard at submission ---------------------------------------------------------
@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.0.0.1/hook", "file:///etc/passwd",
                                 "http://localhost:8080/hook", "http://metadata.google.internal/",
                                 "http://user:pw@example.com/", "http://2130706433/", "http://[::1]/hook",
                                 "gopher://example.com/", "http://a b.example/"])
def test_webhook_to_a_refused_target_is_422(make_api, api_env, alice, url):
    api = make_api({**api_env, "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": ""})
    r = api.post("/v1/jobs", json={"prompt": "a cat", "webhook": url}, headers=auth(alice))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "webhook_target_refused"
    batch = api.post("/v1/batches", json={"requests": [{"prompt": "ok"}, {"prompt": "a cat", "webhook": url}]},
                     headers=auth(alice)).json()
    assert batch["accepted"] == 1 and batch["errors"][0]["code"] == "webhook_target_refused"


def test_a_refused_loopback_webhook_names_the_setting_api_and_workers_need(make_api, api_env, alice):
    api = make_api({**api_env, "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": ""})
    for url in ("http://127.0.0.1:8000/hook", "http://localhost:8000/hook"):
        r = api.post("/v1/jobs", json={"prompt": "a cat", "webhook": url}, headers=auth(alice))
        assert r.status_code == 422 and r.json()["error"]["code"] == "webhook_target_refused", r.text
        message = r.json()["error"]["message"]
        assert "BATCHRENDER_WEBHOOK_ALLOW_HOSTS" in message and "for the API and for every worker" in message, message
        assert "127.0.0.1" not in message.replace(url, ""), "what a name resolves to stays inside"


def test_allow_listed_loopback_webhook_is_accepted(make_api, api_env, alice):
    api = make_api({**api_env, "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"})
    r = api.post("/v1/jobs", json={"prompt": "a cat", "webhook": "http://127.0.0.1:9/hook"}, headers=auth(alice))
    assert r.status_code == 201


def test_a_malformed_json_body_is_named_as_such_with_line_and_column(api, alice):
    """The parser's refusal says 'malformed JSON' and where, not a field named after the
    character offset ("18") that FastAPI puts where a field name goes."""
    body = b'{\n  "prompt": "a cat",\n  "steps": 4,,\n}'
    r = api.post("/v1/jobs", content=body, headers={**auth(alice), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["errors"][0]["field"] == "body", err
    message = err["errors"][0]["message"]
    assert "malformed JSON" in message and "line 3, column 14" in message, message
    assert not any(e["field"].isdigit() for e in err["errors"])


def test_unknown_webhook_event_type_is_422(api, alice):
    r = api.post("/v1/jobs", json={"prompt": "a cat", "webhook": "https://example.com/hook",
                                   "webhook_events_filter": ["job.done"]}, headers=auth(alice))
    assert r.status_code == 422 and "job.succeeded" in r.json()["error"]["message"]


# -- Prefer: wait, with a real worker ---------------------------------------------------------------
def test_prefer_wait_returns_the_finished_job(br_env, settings_for, start_worker, tenants):
    from fastapi.testclient import TestClient

    from producer.api import MAX_WAIT_S, create_app

    alice = tenants.create("alice")
    start_worker(br_env, queues="render.tiny")
    with TestClient(create_app(settings_for(br_env))) as api:
        # Warm the worker first (no timing involved: wait for the end however long it takes), so
        # the measured request depends on a tiny warm render, not on a cold model load under load.
        warm = api.post("/v1/jobs", json={"prompt": "warm-up", "seed": 1}, headers=auth(alice)).json()
        api.app.state.client.wait(warm["id"], timeout=None)
        r = api.post("/v1/jobs", json={"prompt": "a red bicycle", "seed": 3},
                     headers={**auth(alice), "Prefer": f"wait={MAX_WAIT_S}"})
        assert r.status_code == 201 and r.headers["preference-applied"] == f"wait={MAX_WAIT_S}"
        job = r.json()
        assert job["status"] == "succeeded", job
        assert len(job["outputs"]) == 1 and job["outputs"][0]["seed"] == 3 and job["finished_at"]


def test_prefer_wait_returns_the_pending_job_when_time_runs_out(api, alice):
    r = api.post("/v1/jobs", json={"prompt": "a cat"}, headers={**auth(alice), "Prefer": "wait=1"})
    assert r.status_code == 201 and r.json()["status"] == "queued" and r.json()["queue_position"] == 0
