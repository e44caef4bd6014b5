"""Done-when for listing: paging through 250 jobs sees each exactly once while new jobs arrive;
filters, tenant scoping, batches, cursors that are not ours."""
from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def api(br_env, settings_for):
    from starlette.testclient import TestClient

    from producer.api import create_app

    settings = settings_for(br_env, api_rate_per_s=10_000, api_burst=10_000, api_max_queued_per_tenant=5_000)
    with TestClient(create_app(settings)) as client:
        yield client


def _auth(tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_key}"}


def _walk(api, tenant, query: str = "", limit: int = 20, between_pages=None) -> list[dict]:
    seen, after = [], None
    while True:
        if between_pages:
            between_pages()
        url = f"/v1/jobs?limit={limit}{query}" + (f"&after={after}" if after else "")
        page = api.get(url, headers=_auth(tenant))
        assert page.status_code == 200, page.text
        body = page.json()
        seen += body["data"]
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return seen
        after = body["next_cursor"]


def test_paging_250_jobs_while_new_ones_arrive_has_no_gap_or_duplicate(api, tenants):
    alice, bob = tenants.create("alice"), tenants.create("bob")
    # No worker: every job stays queued, so the set is fixed apart from the arrivals below.
    lines = "\n".join(f'{{"prompt": "shot {i}", "custom_id": "c{i}"}}' for i in range(250))
    batch = api.post("/v1/batches", content=lines, headers={**_auth(alice), "content-type": "application/jsonl"})
    assert batch.status_code == 201 and batch.json()["accepted"] == 250, batch.text
    bobs = api.post("/v1/jobs", json={"prompt": "bob's own"}, headers=_auth(bob)).json()["id"]
    original = {j["id"] for j in _walk(api, alice, limit=100)}
    assert len(original) == 250

    # New jobs arrive before every page (and from another thread all along).
    stop, arrived = threading.Event(), []

    def arrive():
        arrived.append(api.post("/v1/jobs", json={"prompt": "late"}, headers=_auth(alice)).json()["id"])

    def keep_arriving():
        while not stop.is_set():
            arrive()

    feeder = threading.Thread(target=keep_arriving)
    feeder.start()
    try:
        walked = _walk(api, alice, limit=7, between_pages=arrive)
    finally:
        stop.set()
        feeder.join()
    ids = [j["id"] for j in walked]
    assert len(ids) == len(set(ids)), "no job listed twice"
    assert original <= set(ids), f"{len(original - set(ids))} jobs never listed"
    assert set(ids) - original <= set(arrived), "nothing but the new arrivals on top"
    created = [j["created_at"] for j in walked]
    assert created == sorted(created, reverse=True), "newest first"
    assert len(arrived) >= 250 // 7, "jobs arrived while paging"
    assert bobs not in ids, "another tenant's job is never listed"


def test_filters_batches_and_bad_cursors(api, tenants):
    alice, bob = tenants.create("alice"), tenants.create("bob")
    b1 = api.post("/v1/batches", json={"requests": [{"prompt": f"a {i}"} for i in range(5)]}, headers=_auth(alice))
    b2 = api.post("/v1/batches", json={"requests": [{"prompt": f"b {i}"} for i in range(3)]}, headers=_auth(alice))
    one = api.post("/v1/jobs", json={"prompt": "single"}, headers=_auth(alice)).json()
    api.post(f"/v1/jobs/{one['id']}/cancel", headers=_auth(alice))

    in_b1 = _walk(api, alice, f"&batch_id={b1.json()['id']}", limit=2)
    assert len(in_b1) == 5 and {j["batch_id"] for j in in_b1} == {b1.json()["id"]}
    canceled = _walk(api, alice, "&status=canceled")
    assert [j["id"] for j in canceled] == [one["id"]]
    assert len(_walk(api, alice, "&status=queued", limit=3)) == 8
    newest = _walk(api, alice, f"&created_after={one['created_at'] - 1e-3}")
    assert [j["id"] for j in newest] == [one["id"]]

    batches = api.get("/v1/batches?limit=1", headers=_auth(alice)).json()
    assert [b["id"] for b in batches["data"]] == [b2.json()["id"]] and batches["has_more"]
    rest = api.get(f"/v1/batches?limit=5&after={batches['next_cursor']}", headers=_auth(alice)).json()
    assert [b["id"] for b in rest["data"]] == [b1.json()["id"]] and not rest["has_more"]
    assert api.get("/v1/batches", headers=_auth(bob)).json()["data"] == []
    assert api.get("/v1/jobs", headers=_auth(bob)).json()["data"] == []

    foreign = api.get(f"/v1/jobs?batch_id={b1.json()['id']}", headers=_auth(bob))
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"
    for bad in ("nonsense", "MTIzfGFiYw", "x" * 300):
        r = api.get(f"/v1/jobs?after={bad}", headers=_auth(alice))
        assert r.status_code == 422, r.text
        assert "after" in r.json()["error"]["message"]
    assert api.get("/v1/jobs?status=done", headers=_auth(alice)).json()["error"]["errors"][0]["field"] == "status"
    assert api.get("/v1/jobs?limit=0", headers=_auth(alice)).status_code == 422


def test_unknown_query_parameter_is_a_422_naming_it_not_an_unfiltered_list(api, tenants):
    """Schemathesis found GET /v1/jobs, /v1/batches and /v1/deliveries answering 200 to query
    parameters their schema does not have: a misspelt filter listed everything, as if absent."""
    alice = tenants.create("alice")
    queued = api.post("/v1/jobs", json={"prompt": "queued"}, headers=_auth(alice)).json()
    api.post(f"/v1/jobs/{api.post('/v1/jobs', json={'prompt': 'x'}, headers=_auth(alice)).json()['id']}/cancel",
             headers=_auth(alice))

    r = api.get("/v1/jobs?state=canceled", headers=_auth(alice))  # the filter is `status`
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["errors"][0]["field"] == "state"
    assert "'state'" in error["message"] and "status" in error["message"] and "batch_id" in error["message"]
    assert [j["id"] for j in api.get("/v1/jobs?status=queued", headers=_auth(alice)).json()["data"]] == [queued["id"]]

    r = api.get(f"/v1/deliveries?job={queued['id']}", headers=_auth(alice))  # the filter is `job_id`
    assert r.status_code == 422 and r.json()["error"]["errors"][0]["field"] == "job", r.text
    assert "job_id" in r.json()["error"]["message"]
    assert api.get(f"/v1/deliveries?job_id={queued['id']}", headers=_auth(alice)).status_code == 200

    r = api.get("/v1/batches?limit=5&page=2&sort=asc", headers=_auth(alice))
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["error"]["errors"]] == ["page", "sort"]
    r = api.get(f"/v1/jobs/{queued['id']}?verbose=1", headers=_auth(alice))
    assert r.status_code == 422 and "takes no query parameters" in r.json()["error"]["message"], r.text
    # The OpenAI-compatible routes refuse it in OpenAI's shape (400, `param`).
    r = api.get("/v1/models?limit=5", headers=_auth(alice))
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit", r.text
    # What chat and mail clients add to a shared link is not a filter: ignored, not refused.
    r = api.get("/v1/jobs?status=queued&utm_source=slack&fbclid=abc", headers=_auth(alice))
    assert r.status_code == 200 and [j["id"] for j in r.json()["data"]] == [queued["id"]], r.text


def test_jobs_with_the_same_timestamp_are_each_listed_once(client):
    """Many jobs can share a creation time (a batch written in one transaction): the cursor is a
    position in a total order, so none is skipped or repeated at a page boundary."""
    from jobs.schemas import JobMessage, RenderRequest

    for i in range(9):
        client.store.create(JobMessage(job_id=f"job_same{i}", tenant="t1", submitted_at=1_700_000_000.0,
                                       request=RenderRequest(prompt="x", seed=1, width=64, height=64, steps=1)))
    seen, after = [], None
    while True:
        page, after = client.list_jobs("t1", limit=2, after=after)
        seen += [r.job_id for r in page]
        if after is None:
            break
    assert sorted(seen) == [f"job_same{i}" for i in range(9)] and len(seen) == 9
    assert client.list_jobs("t2")[0] == [], "tenant-scoped"
