"""Pages as a person sees them: headless Chromium (Debian's ``chromium``) renders the batch gallery
and the API docs from a real uvicorn server, with every network but loopback cut off.

``BR_SCREENSHOT_DIR=docs make test`` (or pytest) also saves the gallery screenshot there.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import require
from tests.integration.test_api_http_client import ApiServer
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(300)
#: Chromium reaches nothing but loopback: a dead proxy for everything else, and no DNS.
OFFLINE = ["--proxy-server=http://127.0.0.1:9",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]


def chromium(tmp_path: Path, *args: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    require(exe is not None, "chromium (apt-get install chromium)")
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", *OFFLINE, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_gallery_shows_every_thumbnail_of_a_12_job_batch(br_env, settings_for, tenants, start_worker, tmp_path):
    from producer.api import create_app

    alice = tenants.create("alice")
    auth = {"Authorization": f"Bearer {alice.api_key}"}
    subjects = ["teapot", "bicycle", "lighthouse", "armchair", "sneaker", "desk lamp", "backpack", "guitar",
                "wristwatch", "camera", "kettle", "umbrella"]
    sizes = [(128, 128), (160, 112), (112, 160)]
    requests = [{"prompt": f"a {s}, studio product photo", "custom_id": f"sku-{i:02d}", "seed": 100 + i, "steps": 2,
                 "width": sizes[i % 3][0], "height": sizes[i % 3][1]} for i, s in enumerate(subjects)]
    start_worker(br_env)
    with ApiServer(create_app(settings_for(br_env))) as server, httpx.Client(base_url=server.url, timeout=30) as api:
        batch = api.post("/v1/batches", json={"requests": requests}, headers=auth).json()
        wait_for(lambda: api.get(f"/v1/batches/{batch['id']}", headers=auth).json()["status"] == "completed",
                 timeout=180, every=0.25)
        info = api.get(f"/v1/batches/{batch['id']}", headers=auth).json()
        assert info["counts"]["succeeded"] == 12, info

        dom = chromium(tmp_path, "--dump-dom", info["gallery_url"])
        loaded = re.search(r'data-thumbs-loaded="(\d+)"', dom)
        total = re.search(r'data-thumbs-total="(\d+)"', dom)
        assert loaded and total, dom[:2000]
        assert (int(loaded.group(1)), int(total.group(1))) == (12, 12)
        assert dom.count("C2PA signed") == 12 and "sku-07" in dom and "seed 105" in dom

        shot = tmp_path / "gallery.png"
        chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,860", "--hide-scrollbars", info["gallery_url"])
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("BR_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["BR_SCREENSHOT_DIR"]) / "gallery.png")

        # The link is the access: without its signature the page wants the API key.
        bare = info["gallery_url"].split("?")[0]
        assert api.get(bare).status_code == 401 and api.get(bare, headers=auth).status_code == 200
        forged = api.get(info["gallery_url"][:-4] + "0000")
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "link_expired"


def test_docs_render_with_the_network_off(br_env, settings_for, tmp_path):
    from producer.api import create_app

    with ApiServer(create_app(settings_for(br_env))) as server:
        page = httpx.get(f"{server.url}/docs").text
        assert not re.search(r'(src|href)="https?://', page), "no asset from elsewhere"
        swagger = chromium(tmp_path, "--dump-dom", f"{server.url}/docs")
        assert "swagger-ui" in swagger and 'class="opblock-tag' in swagger, swagger[:3000]
        for path in ("/v1/jobs/{job_id}/outputs/{index}", "/v1/batches/{batch_id}/gallery", "/v1/deliveries"):
            assert path in swagger, path
        redoc = chromium(tmp_path, "--dump-dom", f"{server.url}/redoc")
        assert "redoc-wrap" in redoc or "api-content" in redoc, redoc[:3000]
        assert "List Jobs" in redoc and "Get Output" in redoc and "JobEvent" in redoc
