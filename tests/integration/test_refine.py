"""Multi-turn refinement through the HTTP API and real celery workers: each turn is image-to-image
from the parent's stored image with its seed, the lineage is on the record and at
``GET /v1/jobs/{id}/lineage``, and each image's C2PA manifest lists its parent image as a
``parentOf`` ingredient, so the last image's manifest store walks back to the first."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.integration.test_api_jobs import BLOCKED_PROMPT

pytestmark = pytest.mark.timeout(300)
ENDED = ("succeeded", "failed", "blocked", "canceled")
TINY = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
def api(br_env, settings_for):
    from fastapi.testclient import TestClient

    from producer.api import create_app

    with TestClient(create_app(settings_for(br_env))) as c:
        yield c
        c.app.state.client.close()


def auth(tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_key}"}


def ended(api, job_id: str, headers) -> dict:
    from tests.workers import wait_for

    return wait_for(lambda: (r := api.get(f"/v1/jobs/{job_id}", headers=headers).json())["status"] in ENDED and r,
                    150, f"job {job_id} to end", every=0.2)


def manifest_store(data: bytes, ca_pem: str) -> tuple[str, dict]:
    """(validation state, manifest store) read with c2pa.Reader, the worker's dev CA trusted."""
    import c2pa

    ctx = c2pa.Context.from_dict({"trust": {"trust_anchors": ca_pem}})
    try:
        with c2pa.Reader("image/png", io.BytesIO(data), context=ctx) as reader:
            return reader.get_validation_state(), json.loads(reader.json())
    finally:
        ctx.close()


def job_assertion(manifest: dict) -> dict:
    return next(a["data"] for a in manifest["assertions"] if a["label"] == "org.batchrender.job")


def actions(manifest: dict) -> list[str]:
    return [a["action"] for a in next(a["data"] for a in manifest["assertions"]
                                      if a["label"].startswith("c2pa.actions"))["actions"]]


def test_three_turn_chain_verifies_with_c2pa_ingredients_back_to_the_first_image(
        api, client, br_env, start_worker, tenants):
    start_worker(br_env)
    acme = auth(tenants.create("acme"))
    first = api.post("/v1/jobs", json={"prompt": "a man in a blue jacket", "seed": 11, **TINY}, headers=acme).json()
    first = ended(api, first["id"], acme)
    assert first["status"] == "succeeded", first
    assert "lineage" not in first or first["lineage"] is None

    r = api.post(f"/v1/jobs/{first['id']}/refine", json={"prompt": "make the jacket red"}, headers=acme)
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["lineage"] == {"parent_id": first["id"], "parent_index": 0, "turn": 1, "root_id": first["id"]}
    second = ended(api, second["id"], acme)
    assert second["status"] == "succeeded", second

    r = api.post(f"/v1/jobs/{second['id']}/refine", json={"prompt": "add a yellow hat", "strength": 0.5, "steps": 3},
                 headers=acme)
    assert r.status_code == 201, r.text
    third = ended(api, r.json()["id"], acme)
    assert third["status"] == "succeeded", third
    assert third["lineage"] == {"parent_id": second["id"], "parent_index": 0, "turn": 2, "root_id": first["id"]}

    # Each child is image-to-image from its parent's delivered bytes, with the parent's seed, model and size.
    recs = [client.status(j["id"]) for j in (first, second, third)]
    for parent, child in zip(recs, recs[1:]):
        assert client.storage.get(f"_inputs/{child.job_id}") == client.storage.get(parent.result.images[0].key)
        assert child.result.images[0].seed == parent.result.images[0].seed == 11
        assert (child.model, child.request["width"], child.request["height"]) == ("tiny", 64, 64)
        assert child.request["strength"] is not None and child.request["image"] is None
    assert recs[1].request["steps"] == 2 and recs[2].request["steps"] == 3 and recs[2].request["strength"] == 0.5

    # The last image, fetched over the API, verifies and walks back through parentOf ingredients.
    data = [api.get(j["outputs"][0]["url"], headers=acme).content for j in (first, second, third)]
    ca_pem = (Path(br_env["BATCHRENDER_HOME"]) / "keys" / "ca.pem").read_text()
    state, store = manifest_store(data[2], ca_pem)
    assert state == "Trusted", store.get("validation_results")
    labels = [manifest_store(d, ca_pem)[1]["active_manifest"] for d in data]
    assert store["active_manifest"] == labels[2]
    manifest, walked = store["manifests"][labels[2]], []
    while True:
        walked.append(job_assertion(manifest)["job_id"])
        parents = [i for i in manifest.get("ingredients", []) if i["relationship"] == "parentOf"]
        if not parents:
            assert actions(manifest) == ["c2pa.created"]
            break
        assert len(parents) == 1 and actions(manifest) == ["c2pa.opened", "c2pa.edited"]
        ingredient = parents[0]
        # Validated by the worker when it signed: intact; "untrusted" only (its context held no trust anchors).
        checked = ingredient["validation_results"]["activeManifest"]
        assert {"claimSignature.validated", "assertion.dataHash.match"} <= {x["code"] for x in checked["success"]}
        assert {x["code"] for x in checked.get("failure", [])} <= {"signingCredential.untrusted"}, checked
        assert job_assertion(manifest)["parent_job_id"] == ingredient["title"].rsplit("-", 1)[0]
        manifest = store["manifests"][ingredient["active_manifest"]]
    assert walked == [third["id"], second["id"], first["id"]]
    # The ingredients' manifests are the parents' own (same labels as read from their images).
    assert store["manifests"][labels[2]]["ingredients"][0]["active_manifest"] == labels[1]
    assert store["manifests"][labels[1]]["ingredients"][0]["active_manifest"] == labels[0]

    # The lineage lists the three turns, from any job of the chain.
    r = api.get(f"/v1/jobs/{third['id']}/lineage", headers=acme)
    assert r.status_code == 200, r.text
    chain = r.json()
    assert chain["id"] == third["id"] and chain["root_id"] == first["id"]
    assert [(t["id"], t["turn"], t["status"], t["prompt"]) for t in chain["turns"]] == [
        (first["id"], 0, "succeeded", "a man in a blue jacket"), (second["id"], 1, "succeeded", "make the jacket red"),
        (third["id"], 2, "succeeded", "add a yellow hat")]
    assert [t["output_url"] for t in chain["turns"]] == [j["outputs"][0]["url"] for j in (first, second, third)]
    assert [t["parent_id"] for t in chain["turns"]] == [None, first["id"], second["id"]]
    middle = api.get(f"/v1/jobs/{second['id']}/lineage", headers=acme).json()
    assert [t["id"] for t in middle["turns"]] == [first["id"], second["id"]]
    root = api.get(f"/v1/jobs/{first['id']}/lineage", headers=acme).json()
    assert [(t["id"], t["turn"]) for t in root["turns"]] == [(first["id"], 0)] and root["root_id"] == first["id"]

    # A deleted parent stays in the chain by id and turn; nothing else of it is shown.
    assert api.delete(f"/v1/jobs/{first['id']}", headers=acme).status_code == 200
    turns = api.get(f"/v1/jobs/{third['id']}/lineage", headers=acme).json()["turns"]
    assert turns[0] == {"id": first["id"], "turn": 0, "status": None, "prompt": None, "parent_id": None,
                        "parent_index": None, "image_index": None, "output_url": None}
    assert [t["status"] for t in turns[1:]] == ["succeeded", "succeeded"]


def test_refine_honours_prefer_wait_like_a_submit(api, br_env, start_worker, tenants):
    """``Prefer: wait=N`` on POST /v1/jobs/{id}/refine answers with the new job once it ended (it
    was ignored: 201 with the job queued). The parent's render warms the worker first, so the wait
    covers one tiny warm render."""
    acme = auth(tenants.create("acme"))
    start_worker(br_env)
    parent = ended(api, api.post("/v1/jobs", json={"prompt": "a red kite", **TINY}, headers=acme).json()["id"], acme)
    assert parent["status"] == "succeeded", parent
    r = api.post(f"/v1/jobs/{parent['id']}/refine", json={"prompt": "make it blue"},
                 headers={**acme, "Prefer": "wait=60"})
    assert r.status_code == 201 and r.headers.get("preference-applied") == "wait=60", (r.status_code, r.headers)
    assert r.json()["status"] == "succeeded" and r.json()["outputs"], r.json()


def test_refine_refusals_name_the_field_and_tenants_stay_isolated(api, client, br_env, start_worker, tenants):
    acme, other = auth(tenants.create("acme")), auth(tenants.create("other"))
    queued = api.post("/v1/jobs", json={"prompt": "a red kite", **TINY}, headers=acme).json()
    r = api.post(f"/v1/jobs/{queued['id']}/refine", json={"prompt": "make it blue"}, headers=acme)
    assert r.status_code == 409 and r.json()["error"]["code"] == "parent_not_succeeded", r.text
    assert "queued" in r.json()["error"]["message"] and r.json()["error"]["errors"][0]["field"] == "job_id"

    r = api.post("/v1/jobs", json={"prompt": BLOCKED_PROMPT, **TINY}, headers=acme)
    blocked = r.json()["error"]["job_id"]
    r = api.post(f"/v1/jobs/{blocked}/refine", json={"prompt": "a kite"}, headers=acme)
    assert r.status_code == 409 and "blocked" in r.json()["error"]["message"], r.text

    start_worker(br_env)
    parent = ended(api, queued["id"], acme)
    assert parent["status"] == "succeeded", parent
    url = f"/v1/jobs/{parent['id']}/refine"

    r = api.post(url, json={"prompt": "make it blue", "image_index": 1}, headers=acme)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["errors"][0]["field"] == "image_index" and "allowed 0" in err["errors"][0]["message"]
    for prompt in ("", "   "):
        r = api.post(url, json={"prompt": prompt}, headers=acme)
        assert r.status_code == 422 and r.json()["error"]["errors"][0]["field"] == "prompt", r.text
    r = api.post(url, json={"prompt": "make it blue", "seed": 3}, headers=acme)
    assert r.status_code == 422 and r.json()["error"]["errors"][0]["field"] == "seed", r.text

    # Another tenant's job is answered exactly like an unknown id, on both routes.
    unknown = "job_" + "0" * 32
    for path in ("refine", "lineage"):
        method = api.post if path == "refine" else api.get
        kw = {"json": {"prompt": "make it blue"}} if path == "refine" else {}
        theirs = method(f"/v1/jobs/{parent['id']}/{path}", headers=other, **kw)
        nobody = method(f"/v1/jobs/{unknown}/{path}", headers=other, **kw)
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json()["error"]["code"] == nobody.json()["error"]["code"] == "not_found"
        assert theirs.json()["error"]["message"].replace(parent["id"], unknown) == nobody.json()["error"]["message"]
    assert client.store.tenant_active("other") == 0

    # An Idempotency-Key makes a retried refinement safe; the same key for another body is a conflict.
    key = {**acme, "Idempotency-Key": "refine-1"}
    made = api.post(url, json={"prompt": "make it green"}, headers=key)
    again = api.post(url, json={"prompt": "make it green"}, headers=key)
    assert made.status_code == 201 and again.status_code == 200, (made.text, again.text)
    assert again.json()["id"] == made.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other_body = api.post(url, json={"prompt": "make it pink"}, headers=key)
    assert other_body.status_code == 409 and other_body.json()["error"]["code"] == "idempotency_conflict"
    assert ended(api, made.json()["id"], acme)["status"] == "succeeded"

    # The refined prompt passes the same moderation as any job: blocked, recorded with its lineage.
    r = api.post(url, json={"prompt": BLOCKED_PROMPT}, headers=acme)
    assert r.status_code == 422 and r.json()["error"]["code"] == "moderation_blocked", r.text
    child = client.status(r.json()["error"]["job_id"])
    assert child.status.value == "blocked" and child.lineage["parent_id"] == parent["id"]
    assert client.store.tenant_active("acme") == 0, "no slot is held by refusals"


def test_cli_refines_a_job_and_prints_its_lineage(client, br_env, start_worker):
    from click.testing import CliRunner

    from producer.cli import cli

    runner = CliRunner()
    start_worker(br_env)
    parent = client.submit({"prompt": "a blue teapot", "seed": 4, "num_images": 2, **TINY})
    assert client.wait(parent, timeout=150).status.value == "succeeded"
    out = runner.invoke(cli, ["refine", parent, "make the teapot red", "--image-index", "1", "--strength", "0.6",
                              "--wait"], env=br_env)
    assert out.exit_code == 0, out.output
    child = client.status(out.stdout.splitlines()[0])
    assert child.status.value == "succeeded" and child.lineage["parent_index"] == 1
    assert child.result.images[0].seed == 5, "image 1 of the parent was rendered with seed + 1"
    assert client.storage.get(f"_inputs/{child.job_id}") == client.storage.get(
        client.status(parent).result.images[1].key)
    out = runner.invoke(cli, ["lineage", child.job_id], env=br_env)
    assert out.exit_code == 0, out.output
    chain = json.loads(out.stdout)
    assert [(t["id"], t["turn"], t["image_index"]) for t in chain["turns"]] == [(parent, 0, 1), (child.job_id, 1, 0)]

    out = runner.invoke(cli, ["refine", parent, "make it red", "--image-index", "2"], env=br_env)
    assert out.exit_code == 2 and "image_index" in out.output and "allowed 0, 1" in out.output, out.output
    out = runner.invoke(cli, ["refine", "job_" + "0" * 32, "make it red"], env=br_env)
    assert out.exit_code == 2 and "no job" in out.output, out.output


def test_the_python_client_refines_and_reads_the_lineage(client, br_env, start_worker):
    from jobs.errors import InvalidRequest, JobNotFound, ParentNotSucceeded

    parent = client.submit({"prompt": "a green vase", "seed": 9, **TINY})
    with pytest.raises(ParentNotSucceeded):
        client.refine(parent, "make the vase blue")  # still queued: no worker yet
    start_worker(br_env)
    assert client.wait(parent, timeout=150).status.value == "succeeded"
    child = client.refine(parent, "make the vase blue", strength=0.5, custom_id="vase-2")
    rec = client.wait(child, timeout=150)
    assert rec.status.value == "succeeded" and rec.request["custom_id"] == "vase-2"
    assert rec.lineage["parent_id"] == parent and rec.result.images[0].seed == 9
    assert [(t["id"], t["turn"]) for t in client.lineage(child)["turns"]] == [(parent, 0), (child, 1)]
    with pytest.raises(InvalidRequest) as e:
        client.refine(parent, "again", image_index=3)
    assert e.value.errors[0]["field"] == "image_index"
    with pytest.raises(JobNotFound):
        client.refine(parent, "again", tenant="someone-else")
