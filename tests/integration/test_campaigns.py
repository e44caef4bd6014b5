"""Issue 23: a campaign end to end, through a real API server (uvicorn, HTTP) and a real worker.

A 4-row CSV × a 2-style sweep × 3 renditions (1:1, 4:5, 9:16, all crops of a transparent master):
the plan prices 8 masters and 24 renditions from measured calls and says where the figures came
from; apply renders 8 masters (pipeline rows counted in Redis) and stores 24 renditions, each
signed with its master as the parentOf ingredient; every 9:16 crop keeps every opaque pixel of its
master. Applied again after one row is edited, exactly that row's 2 masters render; applied again
without a row, nothing renders and the row is reported removed. The gallery renders in Chromium.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.test_api_http_client import ApiServer
from tests.integration.test_worker_s3_c2pa import read_manifest
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(600)
ROWS_KEY = "br:stats:rows_rendered"
CATALOG = [("sku", "colour", "material"), ("mug-01", "red", "ceramic"), ("mug-02", "blue", "glass"),
           ("mug-03", "green", "enamel"), ("mug-04", "white", "porcelain")]
RENDITIONS = [{"name": "square", "width": 1080, "height": 1080}, {"name": "portrait", "width": 1080, "height": 1350},
              {"name": "story", "width": 1080, "height": 1920}]


def csv_bytes(rows) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def document(file_id: str) -> dict:
    return {"v": 1, "name": "spring-mugs", "catalog": {"file_id": file_id, "key": "sku"},
            "template": {"prompt": "a {colour} {material} coffee mug, {style}, product shot",
                         "negative_prompt": "text, watermark",
                         "fields": {"model": "tiny", "steps": 2, "background": "transparent",
                                    "custom_id": "{sku}-{style}"}},
            "sweeps": {"mode": "cartesian", "axes": {"style": ["studio", "watercolour"]}},
            "renditions": RENDITIONS, "budget": {"max_gpu_seconds": 3600, "max_cost": 5}}


def manifest_store(data: bytes, mime: str) -> tuple[str, dict]:
    import c2pa

    with c2pa.Reader(mime, io.BytesIO(data)) as reader:
        return reader.get_validation_state(), json.loads(reader.json())


def test_campaign_plans_applies_and_reapplies_only_what_changed(br_env, settings_for, tenants, start_worker,
                                                                 tmp_path):
    import redis

    from producer.api import create_app

    env = {**br_env, "BATCHRENDER_MAX_BATCH": "1", "BATCHRENDER_GPU_SECOND_PRICE": "0.0005",
           "BATCHRENDER_API_RATE_PER_S": "1000", "BATCHRENDER_API_BURST": "2000"}  # the test reads ~100 files
    alice = tenants.create("alice")
    auth = {"Authorization": f"Bearer {alice.api_key}"}
    r = redis.Redis.from_url(env["BATCHRENDER_REDIS_URL"], decode_responses=True)
    start_worker(env)
    with ApiServer(create_app(settings_for(env))) as server, httpx.Client(base_url=server.url, timeout=60) as api:
        # A warm-up job of another shape: the first plan can only scale from it, and must say so.
        warm = api.post("/v1/jobs", json={"prompt": "a warm-up mug", "seed": 1, "steps": 2, "width": 64,
                                          "height": 64}, headers=auth).json()
        wait_for(lambda: api.get(f"/v1/jobs/{warm['id']}", headers=auth).json()["status"] == "succeeded",
                 timeout=180, every=0.2)

        up = api.post("/v1/files", headers=auth, data={"purpose": "campaign"},
                      files={"file": ("catalog.csv", csv_bytes(CATALOG), "text/csv")})
        assert up.status_code in (200, 201), up.text
        doc = document(up.json()["id"])

        # -- plan: nothing queued ------------------------------------------------------------------
        plan = api.post("/v1/campaigns", params={"dry_run": "true"}, json=doc, headers=auth)
        assert plan.status_code == 200, plan.text
        p = plan.json()["plan"]
        assert (p["cells"], p["masters"], p["renditions"], p["reused"], p["refused"]) == (8, 8, 24, 0, 0), p
        gpu = p["gpu_seconds"]
        assert gpu["complete"] and gpu["total"] > 0
        (shape,) = gpu["by_shape"]
        assert shape["rows"] == 8 and shape["source"] == "scaled" and shape["calls"] >= 1
        assert (shape["measured_shape"]["width"], shape["measured_shape"]["height"]) == (64, 64)
        assert (shape["width"], shape["height"]) != (64, 64)  # the master: 9:16, the largest rendition's ratio
        assert shape["width"] < shape["height"]
        assert p["cost"]["amount"] == pytest.approx(gpu["total"] * 0.0005, rel=0.01)  # total shown to 1 ms
        assert p["budget"]["fits"] is True and p["eta"]["seconds"] is not None
        listed = api.get("/v1/jobs", headers=auth).json()["data"]
        assert [j["id"] for j in listed] == [warm["id"]]

        # -- apply ---------------------------------------------------------------------------------
        rows_before = int(r.get(ROWS_KEY) or 0)
        applied = api.post("/v1/campaigns", json=doc, headers=auth)
        assert applied.status_code == 201, applied.text
        cid = applied.json()["id"]
        assert applied.json()["applied"] == {"submitted": 8, "reused": 0, "refused": 0}
        status = wait_completed(api, auth, cid)
        assert status["counts"] == {"succeeded": 8}, status
        assert status["progress"]["cells_done"] == 8 and status["progress"]["gpu_seconds_spent"] > 0
        assert int(r.get(ROWS_KEY) or 0) - rows_before == 8  # 8 masters, one pipeline row each

        lines = [json.loads(x) for x in api.get(f"/v1/campaigns/{cid}/results", headers=auth).text.splitlines()]
        masters = {(x["job_id"], x["image"]): x for x in lines if x["rendition"] == "master"}
        renditions = [x for x in lines if x["rendition"] != "master"]
        assert len(masters) == 8 and len(renditions) == 24
        assert sorted({x["rendition"] for x in renditions}) == ["portrait", "square", "story"]
        jobs = {j: api.get(f"/v1/jobs/{j}", headers=auth).json() for j, _ in masters}
        for x in renditions:
            master = masters[(x["job_id"], x["image"])]
            got = api.get(x["url"], headers=auth)
            assert got.status_code == 200 and got.content[:1] != b"{", (x["url"], got.text[:300])
            data = got.content
            mime = f"image/{x['format']}"
            state, store = manifest_store(data, mime)
            assert state in ("Valid", "Trusted"), (state, x)
            active = store["manifests"][store["active_manifest"]]
            parents = [i for i in active.get("ingredients", []) if i.get("relationship") == "parentOf"]
            assert len(parents) == 1, active.get("ingredients")
            # The ingredient's manifest is the master's own.
            master_bytes = api.get(master["url"], headers=auth).content
            _state, master_store = manifest_store(master_bytes, f"image/{master['format']}")
            assert parents[0]["active_manifest"] == master_store["active_manifest"]
            with Image.open(io.BytesIO(data)) as im:
                want = next(rd for rd in RENDITIONS if rd["name"] == x["rendition"])
                assert im.size == (want["width"], want["height"])
            if x["rendition"] == "story":
                image = jobs[x["job_id"]]["outputs"][x["image"]]
                (story,) = [rv for rv in image["renditions"] if rv["name"] == "story"]
                with Image.open(io.BytesIO(master_bytes)) as m:
                    alpha = np.asarray(m.convert("RGBA"))[..., 3]
                ys, xs = np.nonzero(alpha)
                assert len(xs) > 0
                x0, y0, x1, y1 = story["box"]
                # No opaque (or partly opaque) subject pixel of the master is cut by the 9:16 crop.
                assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1, (story, xs.min(),
                                                                                                   xs.max(), ys.min(), ys.max())
                assert story["subject"] == "alpha"
        # Re-planned now, the master's own shape is measured.
        again = api.post("/v1/campaigns", params={"dry_run": "true"}, json=doc, headers=auth).json()["plan"]
        assert (again["masters"], again["reused"]) == (0, 8)

        # -- one row edited: its two cells render, six are reused ------------------------------------
        edited = [list(row) for row in CATALOG]
        edited[2][1] = "navy"
        up2 = api.post("/v1/files", headers=auth, data={"purpose": "campaign"},
                       files={"file": ("catalog.csv", csv_bytes(edited), "text/csv")}).json()
        doc2 = document(up2["id"])
        p2 = api.post("/v1/campaigns", params={"dry_run": "true"}, json=doc2, headers=auth).json()["plan"]
        assert (p2["masters"], p2["reused"], p2["renditions"]) == (2, 6, 6)
        assert p2["gpu_seconds"]["by_shape"][0]["source"] == "measured"
        rows_before = int(r.get(ROWS_KEY) or 0)
        stored_before = stored_count(env)
        second = api.post("/v1/campaigns", json=doc2, headers=auth)
        assert second.status_code == 201 and second.json()["id"] == cid
        assert second.json()["applied"] == {"submitted": 2, "reused": 6, "refused": 0}
        status = wait_completed(api, auth, cid)
        assert int(r.get(ROWS_KEY) or 0) - rows_before == 2
        assert stored_count(env) - stored_before == 2 * (1 + 3)  # 2 masters and their 3 renditions each
        lines = [json.loads(x) for x in api.get(f"/v1/campaigns/{cid}/results", headers=auth).text.splitlines()]
        reused = {x["cell"] for x in lines if x["reused_from"]}
        assert len(reused) == 6 and not any(c.startswith("mug-02") for c in reused)
        assert status["counts"] == {"succeeded": 2, "reused_succeeded": 6}, status

        # -- one row removed: nothing renders, the row is reported --------------------------------
        up3 = api.post("/v1/files", headers=auth, data={"purpose": "campaign"},
                       files={"file": ("catalog.csv", csv_bytes(edited[:4]), "text/csv")}).json()
        rows_before = int(r.get(ROWS_KEY) or 0)
        third = api.post("/v1/campaigns", json=document(up3["id"]), headers=auth).json()
        assert third["applied"] == {"submitted": 0, "reused": 6, "refused": 0}
        assert third["plan"]["removed_rows"] == ["mug-04"]
        assert int(r.get(ROWS_KEY) or 0) == rows_before
        manifest_csv = api.get(f"/v1/campaigns/{cid}/results", params={"format": "csv"}, headers=auth).text
        table = list(csv.DictReader(io.StringIO(manifest_csv)))
        assert len(table) == 6 * 4 and {t["row_key"] for t in table} == {"mug-01", "mug-02", "mug-03"}

        # -- the gallery, in Chromium -------------------------------------------------------------
        from tests.integration.test_browser import chromium

        gallery = api.get(f"/v1/campaigns/{cid}", headers=auth).json().get("gallery_url")
        assert gallery, "the campaign has a signed gallery link"
        dom = chromium(tmp_path, "--dump-dom", gallery)
        assert dom.count("<img") >= 6 * 4
        loaded = re.search(r'data-thumbs-loaded="(\d+)"', dom)
        total = re.search(r'data-thumbs-total="(\d+)"', dom)
        assert loaded and total and loaded.group(1) == total.group(1) != "0", dom[:2000]
        shots = os.environ.get("BR_SCREENSHOT_DIR")
        if shots:
            chromium(tmp_path, f"--screenshot={Path(shots).absolute() / 'campaign-gallery.png'}",
                     "--window-size=1280,900", gallery)


def wait_completed(api, auth, cid: str) -> dict:
    wait_for(lambda: api.get(f"/v1/campaigns/{cid}", headers=auth).json()["status"] == "completed",
             timeout=300, every=0.5, what=f"campaign {cid} completed")
    return api.get(f"/v1/campaigns/{cid}", headers=auth).json()


def stored_count(env: dict) -> int:
    from tests.workers import stored_files

    return len(stored_files(env))
