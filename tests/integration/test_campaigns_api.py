"""Campaigns through the HTTP API (TestClient, real Redis), the CLI and the Python client; no
worker: a job is finished by writing its result the way a worker does (``finish``).

Bad input is refused with 422 naming the row, column or field, and nothing is queued; a dry run
answers the plan and queues nothing; YAML bodies work; another tenant's campaign is a 404; the
manifest, zip and gallery read what was delivered; ``campaign.completed`` is recorded once per
apply; plain jobs with ``cache: "reuse"`` answer with the earlier job of the same content.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile

import pytest
from click.testing import CliRunner

from tests.conftest import TEST_KEYS

pytestmark = pytest.mark.timeout(120)
CSV = b"sku,colour\nmug-01,red\nmug-02,blue\n"


@pytest.fixture
def api_env(tmp_path, redis_url):
    return {"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": redis_url,
            "BATCHRENDER_STORAGE_URL": (tmp_path / "out").as_uri(), "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
            "BATCHRENDER_STORAGE_SHARED": "1", **TEST_KEYS}


@pytest.fixture
def make_api(api_env, settings_for):
    """``make_api(**env overrides) -> TestClient``; closed at the end."""
    from fastapi.testclient import TestClient

    from producer.api import create_app

    made = []

    def make(**env):
        c = TestClient(create_app(settings_for({**api_env, **env})), raise_server_exceptions=False)
        made.append(c)
        return c

    yield make
    for c in made:
        c.app.state.client.close()
        c.close()


@pytest.fixture
def api(make_api):
    return make_api()


@pytest.fixture
def keys(api_env, settings_for, redis_url):
    """``keys(name) -> Authorization headers`` of a new tenant (its id as ``headers.tenant``)."""
    import redis

    from producer.tenants import Tenants

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    tenants = Tenants(r, settings_for(api_env))

    class Auth(dict):
        tenant: str

    def make(name: str) -> Auth:
        t = tenants.create(name)
        a = Auth({"Authorization": f"Bearer {t.api_key}"})
        a.tenant = t.tenant_id
        return a

    yield make
    r.close()


def doc(**changes) -> dict:
    d = {"v": 1, "name": "spring-mugs", "catalog": {"rows": [{"sku": "mug-01", "colour": "red"},
                                                           {"sku": "mug-02", "colour": "blue"}], "key": "sku"},
         "template": {"prompt": "a {colour} mug, product photo", "fields": {"model": "tiny", "steps": 2,
                                                                            "width": 64, "height": 64}}}
    for k, v in changes.items():
        d[k] = v
    return d


def upload(api, auth, data: bytes, name: str = "catalog.csv") -> str:
    r = api.post("/v1/files", headers=auth, data={"purpose": "campaign"}, files={"file": (name, data, "text/csv")})
    assert r.status_code == 200, r.text
    assert r.json()["purpose"] == "campaign"
    return r.json()["id"]


def nothing_queued(api, auth) -> None:
    assert api.get("/v1/jobs", headers=auth).json()["data"] == []
    assert api.get("/v1/campaigns", headers=auth).json()["data"] == []


def finish(client, job_id: str, renditions: tuple[str, ...] = ()) -> None:
    """End a queued job as succeeded with one PNG (and its renditions) stored, as a worker does."""
    from PIL import Image

    from jobs.schemas import ImageResult, JobResult, RenditionResult
    from jobs.status import JobStatus

    def png(colour) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buf, "PNG")
        return buf.getvalue()

    def stored(key: str, data: bytes) -> dict:
        client.storage.put(key, data, content_type="image/png")
        return {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    rec = client.store.get(job_id)
    master = stored(f"{job_id}/0.png", png((200, 30, 30)))
    rends = [RenditionResult(name=n, width=64, height=64, format="png", fit="crop", box=[0, 0, 64, 64],
                             **stored(f"{job_id}/0.{n}.png", png((30, 30, 200)))) for n in renditions]
    image = ImageResult(index=0, seed=1, width=64, height=64, format="png", pixel_sha256=master["sha256"],
                        renditions=rends, **master)
    result = JobResult(job_id=job_id, batch_id=rec.batch_id, custom_id=rec.custom_id, status=JobStatus.SUCCEEDED,
                       model="tiny", images=[image])
    assert client.store.transition(job_id, JobStatus.RUNNING, [JobStatus.QUEUED]).ok
    t = client.store.transition(job_id, JobStatus.SUCCEEDED, [JobStatus.RUNNING], result=result.model_dump_json())
    assert t.ok
    if rec.request.get("webhook"):
        client.events.finished(client.store.message(job_id), result, t.batch_done)


def campaign_jobs(client, cid: str) -> list[str]:
    from producer.campaigns import Campaigns

    return [c["job_id"] for cells in Campaigns(client).iter_cells(cid) for c in cells if c.get("job_id")]


# -- bad input: 422 naming where, nothing queued --------------------------------------------------
@pytest.mark.parametrize("data,where,words", [
    (b"sku,material\nmug-01,glass\n", {"field": "template.prompt"}, "unknown slot {colour}"),  # no such column
    ("sku,colour\nmug-01,red\n".encode("utf-16"), {"row": 0}, "UTF-16 byte-order mark"),
    (b"sku,colour\nmug-01,red\nmug-02,blue,extra\n", {"row": 2}, "row 2 has 3 fields"),  # a stray delimiter
    (b"sku,colour\nmug-01,red\nmug-02,bl\xe9u\n", {"line": 3}, "line 3 is not UTF-8"),  # Latin-1 among UTF-8
    (b"sku,colour\n" + b"".join(b"m%d,red\n" % i for i in range(4)), {"row": 4}, "more than 3 rows"),
], ids=["missing-column", "utf16-bom", "stray-delimiter", "mixed-encodings", "too-many-rows"])
def test_a_bad_catalog_is_422_naming_the_row_and_nothing_is_queued(make_api, keys, data, where, words):
    api = make_api(BATCHRENDER_CAMPAIGN_MAX_ROWS="3")
    auth = keys("alice")
    file_id = upload(api, auth, data)
    for params in ({}, {"dry_run": "true"}):
        r = api.post("/v1/campaigns", params=params, headers=auth,
                     json=doc(catalog={"file_id": file_id, "key": "sku"}))
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert any(all(e.get(k) == v for k, v in where.items()) for e in error["errors"]), error
        assert words in error["message"], error["message"]
    nothing_queued(api, auth)


@pytest.mark.parametrize("changes,field,words", [
    ({"template": {"prompt": "a {colour} mug in {finish}", "fields": {"model": "tiny"}}},
     "template.prompt", "unknown slot {finish}"),
    ({"template": {"prompt": "a {colour.__class__} mug", "fields": {"model": "tiny"}}},
     "template.prompt", "no attribute access"),
    ({"sweeps": {"axes": {"style": ["a", "b", "c"], "seed": [1, 2]}}}, "sweeps", "BATCHRENDER_CAMPAIGN_MAX_CELLS"),
    ({"renditions": [{"name": "tiny", "width": 32, "height": 64}]}, "renditions.0.width", "64"),
    ({"renditions": [{"name": "odd", "width": 64, "height": 64, "fit": "stretch"}]}, "renditions.0.fit", "crop"),
    ({"budget": {"max_gpu_seconds": "lots"}}, "budget.max_gpu_seconds", "must be a finite number"),
    ({"renditions": [{"name": "tall", "aspect_ratio": "1:3", "fit": "extend"}]}, "renditions.tall.fit",
     "at most 2 times"),
], ids=["unknown-slot", "attribute-access", "past-cell-limit", "rendition-under-64px", "unknown-fit",
        "budget-not-a-number", "extend-too-far"])
def test_a_bad_document_is_422_naming_the_field_and_nothing_is_queued(make_api, keys, changes, field, words):
    api = make_api(BATCHRENDER_CAMPAIGN_MAX_CELLS="10")
    auth = keys("alice")
    r = api.post("/v1/campaigns", headers=auth, json=doc(**changes))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert words in error["message"], error["message"]
    assert any(e.get("field") == field for e in error["errors"]), error["errors"]
    if field.startswith("renditions.tall"):  # a cell the model cannot render: refused by row
        assert error["code"] == "cells_refused"
        assert [(e["row"], e["row_key"]) for e in error["errors"]] == [(1, "mug-01"), (2, "mug-02")]
    nothing_queued(api, auth)


@pytest.mark.parametrize("body,ctype,words", [
    (b"v: 1\nname: x\ncatalog: {rows: [{a: 1}]\ntemplate: {prompt: p}\n", "application/yaml", "line 4"),
    (b'{"v": 1, "name": "x",\n "catalog": }', "application/json", "line 2, column 13"),
    (b"- just\n- a list\n", "text/yaml", "a mapping"),
    (b"a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "application/yaml", "more than"),
], ids=["yaml-syntax", "json-syntax", "not-a-mapping", "alias-bomb"])
def test_a_body_that_does_not_parse_is_422_naming_the_line(api, keys, body, ctype, words):
    auth = keys("alice")
    r = api.post("/v1/campaigns", headers={**auth, "content-type": ctype}, content=body)
    assert r.status_code == 422, r.text
    assert words in r.json()["error"]["message"]
    nothing_queued(api, auth)


def test_a_campaign_document_over_http_cannot_read_the_servers_disk(api, keys, tmp_path):
    auth = keys("alice")
    (tmp_path / "c.csv").write_bytes(CSV)
    r = api.post("/v1/campaigns", headers=auth, json=doc(catalog={"path": str(tmp_path / "c.csv")}))
    assert r.status_code == 422 and r.json()["error"]["errors"][0]["field"] == "catalog.path"


# -- plan and apply ----------------------------------------------------------------------------------
def test_dry_run_answers_the_plan_and_queues_nothing(api, keys):
    auth = keys("alice")
    file_id = upload(api, auth, CSV)
    body = doc(catalog={"file_id": file_id, "key": "sku"}, sweeps={"axes": {"style": ["studio", "watercolour"]}},
               renditions=[{"name": "square", "width": 64, "height": 64}, {"name": "wide", "aspect_ratio": "2:1"}])
    body["template"]["prompt"] = "a {colour} mug, {style}"
    r = api.post("/v1/campaigns", params={"dry_run": "true"}, headers=auth, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["dry_run"] is True and out["id"].startswith("cmp_")
    p = out["plan"]
    assert (p["cells"], p["masters"], p["renditions"], p["reused"], p["refused"]) == (4, 4, 8, 0, 0)
    assert p["gpu_seconds"]["complete"] is False  # nothing measured yet, and the plan says so
    nothing_queued(api, auth)
    assert api.get(f"/v1/campaigns/{out['id']}", headers=auth).status_code == 404


def test_a_yaml_document_applies_and_answers_201(api, keys):
    auth = keys("alice")
    body = (b"v: 1\nname: yaml-mugs\ncatalog:\n  key: sku\n  rows:\n    - {sku: mug-01, colour: red}\n"
            b"    - {sku: mug-02, colour: blue}\ntemplate:\n  prompt: 'a {colour} mug'\n"
            b"  fields: {model: tiny, steps: 2, width: 64, height: 64}\nmetadata: {launch: 2025-03-01}\n")
    r = api.post("/v1/campaigns", headers={**auth, "content-type": "application/yaml"}, content=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["applied"] == {"submitted": 2, "reused": 0, "refused": 0} and out["batch_id"]
    jobs = api.get("/v1/jobs", headers=auth).json()["data"]
    assert sorted(j["custom_id"] for j in jobs) == ["mug-01", "mug-02"]
    status = api.get(f"/v1/campaigns/{out['id']}", headers=auth).json()
    assert status["status"] == "in_progress" and status["progress"]["cells_total"] == 2
    assert status["document"]["metadata"] == {"launch": "2025-03-01"}  # a YAML date stays the text it was
    assert "signature=" in status["gallery_url"] and status["results_url"].endswith(f"/{out['id']}/results")
    assert api.get("/v1/campaigns/yaml-mugs", headers=auth).json()["id"] == out["id"]  # by name too
    assert [c["name"] for c in api.get("/v1/campaigns", headers=auth).json()["data"]] == ["yaml-mugs"]


def test_unknown_query_parameters_are_refused(api, keys):
    auth = keys("alice")
    r = api.post("/v1/campaigns", params={"dryrun": "true"}, headers=auth, json=doc())
    assert r.status_code == 422 and "dryrun" in r.json()["error"]["message"]
    nothing_queued(api, auth)


def test_another_tenants_campaign_is_404_like_an_unknown_one(api, keys):
    alice, bob = keys("alice"), keys("bob")
    cid = api.post("/v1/campaigns", headers=alice, json=doc()).json()["id"]
    for path in ("", "/results", "/results?format=csv", "/results.zip", "/gallery"):
        for who, target in ((bob, cid), (bob, "spring-mugs"), (alice, "cmp_nope")):
            r = api.get(f"/v1/campaigns/{target}{path}", headers=who)
            assert r.status_code == 404, (path, target, r.text)
    assert api.get("/v1/campaigns", headers=bob).json()["data"] == []
    # bob's own campaign of the same name is another campaign
    mine = api.post("/v1/campaigns", headers=bob, json=doc()).json()["id"]
    assert mine != cid


# -- results: manifest, zip, gallery -----------------------------------------------------------------
def test_results_manifest_zip_and_gallery_read_what_was_delivered(api, keys):
    from producer.campaign_results import archive_name

    auth = keys("alice")
    client = api.app.state.client
    body = doc(renditions=[{"name": "square", "width": 64, "height": 64}, {"name": "story", "width": 64,
                                                                          "height": 128}])
    body["catalog"]["rows"].append({"sku": "../<b>x</b>", "colour": "green"})
    cid = api.post("/v1/campaigns", headers=auth, json=body).json()["id"]
    jobs = campaign_jobs(client, cid)
    assert len(jobs) == 3
    for job in jobs[:2]:
        finish(client, job, renditions=("square", "story"))

    lines = [json.loads(x) for x in api.get(f"/v1/campaigns/{cid}/results", headers=auth).text.splitlines()]
    assert [(x["row_key"], x["rendition"], x["status"]) for x in lines] == [
        ("mug-01", "master", "succeeded"), ("mug-01", "square", "succeeded"), ("mug-01", "story", "succeeded"),
        ("mug-02", "master", "succeeded"), ("mug-02", "square", "succeeded"), ("mug-02", "story", "succeeded"),
        ("../<b>x</b>", None, "queued")]
    as_csv = api.get(f"/v1/campaigns/{cid}/results", headers={**auth, "accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert [(r["row_key"], r["rendition"]) for r in csv.DictReader(io.StringIO(as_csv.text))][:2] == [
        ("mug-01", "master"), ("mug-01", "square")]

    for url in (f"/v1/campaigns/{cid}/results.zip", f"/v1/campaigns/{cid}/results?format=zip"):
        z = api.get(url, headers=auth)
        assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
            names = zf.namelist()
            assert sorted(names) == ["manifest.csv", "mug-01/mug-01/master.png", "mug-01/mug-01/square.png",
                                     "mug-01/mug-01/story.png", "mug-02/mug-02/master.png",
                                     "mug-02/mug-02/square.png", "mug-02/mug-02/story.png"]
            square = client.store.get(jobs[0]).result.images[0].renditions[0]
            assert hashlib.sha256(zf.read("mug-01/mug-01/square.png")).hexdigest() == square.sha256
            table = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
            assert [t["file"] for t in table][:2] == ["mug-01/mug-01/master.png", "mug-01/mug-01/square.png"]
            assert table[-1]["row_key"] == "../<b>x</b>" and table[-1]["file"] == ""
    # No catalog value climbs out of the folder.
    assert archive_name({"row_key": "../../etc", "cell": "../../etc#1", "rendition": "master", "format": "jpeg",
                         "image": 1}) == "etc/etc_1/master-1.jpg"

    signed = api.get(f"/v1/campaigns/{cid}", headers=auth).json()["gallery_url"]
    page = api.get(signed.replace("http://testserver", ""))  # no API key: the signature admits
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert html.count('<img class="thumb"') == 6  # 2 cells × (master + 2 renditions); the queued cell says so
    assert "queued" in html
    for src in re.findall(r'<img class="thumb" src="([^"]+)"', html):  # every preview loads without a key
        assert api.get(src.replace("&amp;", "&").replace("http://testserver", "")).status_code == 200, src
    assert "<b>x</b>" not in html and "../&lt;b&gt;x&lt;/b&gt;" in html
    assert [h for h in ("<th>master</th>", "<th>square</th>", "<th>story</th>") if h not in html] == []
    forged = signed.replace("signature=", "signature=0")
    assert api.get(forged.replace("http://testserver", "")).status_code == 403


# -- campaign.completed ------------------------------------------------------------------------------
def test_campaign_completed_is_recorded_once_per_apply(make_api, keys):
    from webhooks import events as ev
    from webhooks.campaign_events import subject
    from webhooks.store import DeliveryStore

    api = make_api(BATCHRENDER_WEBHOOK_SECRET="whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    auth = keys("alice")
    client = api.app.state.client
    deliveries = DeliveryStore(client.store.r, client.settings.record_ttl_s)
    body = doc(webhook="http://127.0.0.1:9/hook")
    first = api.post("/v1/campaigns", headers=auth, json=body).json()
    cid = first["id"]
    event = ev.event_id(subject(cid, 1), ev.CAMPAIGN_COMPLETED)
    jobs = campaign_jobs(client, cid)
    finish(client, jobs[0])
    assert deliveries.get(event) is None  # one cell of two has ended
    finish(client, jobs[1])
    rec = deliveries.get(event)
    assert rec is not None and rec.type == "campaign.completed" and rec.url == "http://127.0.0.1:9/hook"
    data = json.loads(rec.payload)["data"]
    assert (data["campaign_id"], data["name"], data["apply"], data["batch_id"]) == (cid, "spring-mugs", 1,
                                                                                   first["batch_id"])
    assert data["counts"] == {"succeeded": 2} and data["progress"]["cells_done"] == 2
    assert data["results_url"].endswith(f"/v1/campaigns/{cid}/results")
    # A redelivered last job sends nothing new.
    from webhooks.campaign_events import enqueue_campaign_completed

    info = client.store.batch_info(first["batch_id"])
    assert enqueue_campaign_completed(client.app, client.settings, client.store, cid, info) == event
    assert len([e for e in deliveries_of(deliveries) if e.type == "campaign.completed"]) == 1

    # Applied again: every cell is reused, nothing renders, and the event comes at once.
    second = api.post("/v1/campaigns", headers=auth, json=body).json()
    assert second["applied"] == {"submitted": 0, "reused": 2, "refused": 0} and second["batch_id"] is None
    again = deliveries.get(ev.event_id(subject(cid, 2), ev.CAMPAIGN_COMPLETED))
    assert again is not None and json.loads(again.payload)["data"]["counts"] == {"reused_succeeded": 2}


def deliveries_of(store):
    from webhooks.store import PREFIX

    ids = store.redis.zrange(PREFIX + "all", 0, -1)
    return [store.get(i if isinstance(i, str) else i.decode()) for i in ids]


# -- files -------------------------------------------------------------------------------------------
def test_a_campaign_file_is_no_batch_input(api, keys):
    auth = keys("alice")
    file_id = upload(api, auth, CSV)
    content = api.get(f"/v1/files/{file_id}/content", headers=auth)
    assert content.content == CSV and content.headers["content-type"].startswith("text/csv")
    r = api.post("/v1/batches", headers=auth, json={"input_file_id": file_id, "endpoint": "/v1/images/generations",
                                                    "completion_window": "24h"})
    assert r.status_code == 400 and "purpose 'campaign'" in r.json()["error"]["message"]
    bad = api.post("/v1/files", headers=auth, data={"purpose": "fine-tune"}, files={"file": ("a.csv", CSV)})
    assert bad.status_code == 400 and "'campaign'" in bad.json()["error"]["message"]


# -- the CLI and the Python client -------------------------------------------------------------------
def test_cli_plan_exits_2_naming_the_row_of_a_bad_csv(api_env, tmp_path):
    from producer.cli import cli

    (tmp_path / "catalog.csv").write_bytes(b"sku,colour\nmug-01,red\nmug-02,blue,extra\n")
    (tmp_path / "doc.yaml").write_text("v: 1\nname: cli-mugs\ncatalog: {path: catalog.csv, key: sku}\n"
                                       "template: {prompt: 'a {colour} mug', fields: {model: tiny, width: 64, "
                                       "height: 64}}\n")
    run = lambda *a: CliRunner().invoke(cli, ["campaign", *a], env=api_env)  # noqa: E731
    bad = run("plan", str(tmp_path / "doc.yaml"))
    assert bad.exit_code == 2, bad.output
    assert "row 2 has 3 fields and the header has 2" in bad.stderr

    (tmp_path / "good.csv").write_bytes(CSV)
    ok = run("plan", str(tmp_path / "doc.yaml"), "--catalog", str(tmp_path / "good.csv"))
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["plan"]["masters"] == 2

    (tmp_path / "good.csv").rename(tmp_path / "catalog.csv")  # catalog.path is relative to the document
    applied = run("apply", str(tmp_path / "doc.yaml"))
    assert applied.exit_code == 0, applied.output
    cid = json.loads(applied.stdout)["id"]
    status = run("status", "cli-mugs")
    assert status.exit_code == 0 and json.loads(status.stdout)["id"] == cid
    results = run("results", "cli-mugs", "--format", "csv")
    assert results.exit_code == 0 and [r["row_key"] for r in csv.DictReader(io.StringIO(results.stdout))] == [
        "mug-01", "mug-02"]
    page = run("gallery", "cli-mugs", "--out", str(tmp_path / "sheet.html"))
    assert page.exit_code == 0 and "campaign cli-mugs" in (tmp_path / "sheet.html").read_text()
    over = (tmp_path / "doc.yaml").read_text() + "budget: {max_gpu_seconds: 1}\n"
    (tmp_path / "over.yaml").write_text(over.replace("cli-mugs", "cli-over"))
    refused = run("apply", str(tmp_path / "over.yaml"))
    assert refused.exit_code == 2 and "budget" in refused.stderr  # unmeasured: the budget cannot be checked
    (tmp_path / "later.yaml").write_text((tmp_path / "doc.yaml").read_text().replace("cli-mugs", "cli-later"))
    waited = run("apply", str(tmp_path / "later.yaml"), "--wait", "--timeout", "0.01")  # no worker here
    assert waited.exit_code == 3 and "0/2 cells done" in waited.stderr
    down = CliRunner().invoke(cli, ["campaign", "plan", str(tmp_path / "doc.yaml")],
                              env={**api_env, "BATCHRENDER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.exit_code == 75 and "Redis is unavailable" in down.stderr


def test_python_client_plans_and_applies_with_a_catalog_of_bytes(client_for, api_env):
    c = client_for(api_env)
    spec = doc(catalog={"path": "unused.csv", "key": "sku"})
    plan = c.campaign(spec, catalog=CSV, dry_run=True)
    assert plan["plan"]["masters"] == 2 and c.list_jobs()[0] == []
    out = c.campaign(spec, catalog=CSV)
    assert out["applied"]["submitted"] == 2
    assert c.campaign_status("spring-mugs")["progress"]["cells_total"] == 2


# -- cache: "reuse" for plain jobs ---------------------------------------------------------------------
def test_cache_reuse_answers_with_the_earlier_job_of_the_same_content(api, keys, client_for, api_env):
    alice, bob = keys("alice"), keys("bob")
    client = api.app.state.client
    req = {"prompt": "a teapot", "seed": 5, "width": 64, "height": 64, "steps": 2, "cache": "reuse"}
    first = api.post("/v1/jobs", headers=alice, json=req)
    assert first.status_code == 201 and "batchrender-reused" not in first.headers
    job = first.json()["id"]
    again = api.post("/v1/jobs", headers=alice, json={**req, "custom_id": "other", "metadata": {"x": 1}})
    assert again.status_code == 200 and again.headers["batchrender-reused"] == job and again.json()["id"] == job
    # Not by default, not with another seed, not for another tenant.
    assert api.post("/v1/jobs", headers=alice, json={**req, "cache": None}).status_code == 201
    assert api.post("/v1/jobs", headers=alice, json={**req, "seed": 6}).status_code == 201
    assert api.post("/v1/jobs", headers=bob, json=req).status_code == 201
    assert len(api.get("/v1/jobs", headers=alice).json()["data"]) == 3
    # A succeeded job is reused; a canceled one is not (the next request renders and takes its place).
    finish(client, job)
    assert api.post("/v1/jobs", headers=alice, json=req).headers["batchrender-reused"] == job
    other = api.post("/v1/jobs", headers=alice, json={**req, "seed": 7}).json()["id"]
    api.post(f"/v1/jobs/{other}/cancel", headers=alice)
    fresh = api.post("/v1/jobs", headers=alice, json={**req, "seed": 7})
    assert fresh.status_code == 201 and fresh.json()["id"] != other
    assert api.post("/v1/jobs", headers=alice, json={**req, "seed": 7}).headers["batchrender-reused"] == \
        fresh.json()["id"]
    # Without a seed, reuse is refused (a drawn seed never matches).
    assert api.post("/v1/jobs", headers=alice, json={**req, "seed": None}).status_code == 422
    # The Python client (tenant-less) reuses the same way.
    c = client_for(api_env)
    one = c.submit({**req, "prompt": "a kettle"})
    assert c.submit({**req, "prompt": "a kettle"}) == one != c.submit({**req, "prompt": "a kettle", "seed": 9})


# -- found by review: refusals the plan must see, and applies that stop half-way -----------------
def test_a_reference_url_the_guard_refuses_refuses_its_cell_in_the_plan_and_nothing_is_queued(api, keys):
    auth = keys("alice")
    rows = [{"sku": "mug-01", "colour": "red", "ref": "https://example.invalid/ok.png"},
            {"sku": "mug-02", "colour": "blue", "ref": "http://127.0.0.1:9/ref.png"}]
    d = doc(catalog={"rows": rows[1:], "key": "sku"},
            template={"prompt": "a {colour} mug", "fields": {"model": "tiny", "steps": 2, "width": 64, "height": 64,
                                                             "image": "{ref}"}})
    plan = api.post("/v1/campaigns", params={"dry_run": "true"}, json=d, headers=auth)
    assert plan.status_code == 200, plan.text
    p = plan.json()["plan"]
    assert (p["refused"], p["masters"]) == (1, 0)
    assert p["refusals"][0]["row"] == 1 and p["refusals"][0]["field"] == "image"
    r = api.post("/v1/campaigns", json=d, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "cells_refused"
    nothing_queued(api, auth)


def test_cells_with_the_same_custom_id_are_refused_naming_the_earlier_row(api, keys):
    auth = keys("alice")
    d = doc(template={"prompt": "a {colour} mug", "fields": {"model": "tiny", "steps": 2, "width": 64, "height": 64,
                                                             "custom_id": "mug"}})
    p = api.post("/v1/campaigns", params={"dry_run": "true"}, json=d, headers=auth).json()["plan"]
    assert (p["masters"], p["refused"]) == (1, 1)
    assert p["refusals"][0]["code"] == "duplicate_custom_id" and "row 1" in p["refusals"][0]["message"]
    assert api.post("/v1/campaigns", json=d, headers=auth).status_code == 422
    nothing_queued(api, auth)


def test_an_apply_that_fails_half_way_keeps_what_it_queued_and_its_batch_completes(api, keys, monkeypatch):
    from jobs.errors import BrokerUnavailable
    from jobs.store import JobStore
    from producer import campaigns as campaigns_mod

    monkeypatch.setattr(campaigns_mod, "CHUNK", 2)
    auth = keys("alice")
    rows = [{"sku": f"mug-{i:02d}", "colour": c} for i, c in enumerate(["red", "blue", "green", "teal", "grey"])]
    d = doc(catalog={"rows": rows, "key": "sku"})
    real = JobStore.append_batch_records

    def redis_gone(self, *a, **kw):  # the second part's records cannot be written
        raise BrokerUnavailable("Redis is unavailable")

    monkeypatch.setattr(JobStore, "append_batch_records", redis_gone)
    r = api.post("/v1/campaigns", json=d, headers=auth)
    assert r.status_code == 503, r.text
    client = api.app.state.client
    cid = api.get("/v1/campaigns", headers=auth).json()["data"][0]["id"]
    jobs = campaign_jobs(client, cid)
    assert len(jobs) == 2  # the first part was queued and is listed
    assert client.store.tenant_active(auth.tenant) == 2  # slots of what was not queued given back, none twice
    info = api.get("/v1/campaigns/" + cid, headers=auth).json()
    batch = client.store.batch_info(info["batch_id"])
    assert batch["total"] == 2
    for j in jobs:
        finish(client, j)
    assert client.store.batch_info(info["batch_id"])["status"] == "completed"
    monkeypatch.setattr(JobStore, "append_batch_records", real)
    again = api.post("/v1/campaigns", json=d, headers=auth)
    assert again.status_code == 201 and again.json()["applied"] == {"submitted": 3, "reused": 2, "refused": 0}


def test_apply_moderates_each_prompt_once_and_audits_every_submitted_cell(api, keys, api_env):
    """The plan's decisions are the ones submission records: each cell's prompt is checked by the
    rules once per apply (not again at submission), and every queued job still has its audit line."""
    from pathlib import Path

    auth = keys("alice")
    client = api.app.state.client
    stage = client.moderation.prompt_stages[0]
    checked: list[str] = []
    real = stage.check

    def counting(prompt, *a, **kw):
        checked.append(prompt)
        return real(prompt, *a, **kw)

    stage.check = counting
    try:
        body = doc(name="audited-mugs", sweeps={"axes": {"style": ["studio", "watercolour"]}})
        body["template"]["prompt"] = "a {colour} mug, {style}"
        r = api.post("/v1/campaigns", headers=auth, json=body)
    finally:
        del stage.check
    assert r.status_code == 201, r.text
    assert r.json()["applied"]["submitted"] == 4
    assert sorted(checked) == sorted({f"a {c} mug, {s}" for c in ("red", "blue") for s in ("studio", "watercolour")})
    jobs = {j["id"] for j in api.get("/v1/jobs", headers=auth).json()["data"]}
    lines = [json.loads(x) for x in (Path(api_env["BATCHRENDER_HOME"]) / "moderation" / "audit.jsonl").read_text().splitlines()]
    audited = [x for x in lines if x["kind"] == "prompt" and x["job_id"] in jobs]
    assert len(jobs) == 4 and {x["job_id"] for x in audited} == jobs and len(audited) == 4
    assert all(x["action"] == "allow" and x["actor"] for x in audited)
