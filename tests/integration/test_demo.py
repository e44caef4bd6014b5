"""``batchrender demo`` end to end, as a user runs it: a subprocess that starts its own worker."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_KEYS

pytestmark = pytest.mark.timeout(300)  # a demo's own limit is 150 s: a loaded machine


def test_demo_renders_signed_images_and_a_manifest(redis_url, tiny_model_dir, tmp_path):
    from provenance.verify import verify

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny").symlink_to(tiny_model_dir)
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRENDER_")}
    env.update(BATCHRENDER_HOME=str(home), BATCHRENDER_REDIS_URL=redis_url, **TEST_KEYS,
               BATCHRENDER_STORAGE_SHARED="1")  # a real Redis URL and the demo's local --out: one host, declared
    exe = Path(sys.executable).with_name("batchrender")
    # Run from an unrelated directory: the demo must not depend on the caller's working directory.
    proc = subprocess.run([str(exe), "demo", "--n", "2", "--out", str(out), "--timeout", "150"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=200)
    worker_log = (out / "worker.log").read_text(errors="replace") if (out / "worker.log").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n--- worker.log ---\n{worker_log[-3000:]}"

    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 2, lines
    assert len({line["job_id"] for line in lines}) == 2
    sheet = (out / "gallery.html").read_text()  # the README's "make demo ... gallery.html"
    assert sheet.count('class="thumb" src="data:image/webp;base64,') == 2
    ca = (home / "keys" / "ca.pem").read_text()
    for line in lines:
        assert line["status"] == "succeeded" and line["key"] and line["sha256"]
        image = out / line["key"]  # the demo stores under --out when no storage is configured
        assert image.is_file(), line
        assert hashlib.sha256(image.read_bytes()).hexdigest() == line["sha256"]
        report = verify(image)
        assert report.state == "Valid" and report.job_id == line["job_id"], report
        assert verify(image, ca).state == "Trusted"
    assert len([p for p in out.rglob("*.png")]) == 2


def test_demo_leaves_running_an_embedded_broker_it_did_not_start(tiny_model_dir, tmp_path):
    """No BATCHRENDER_REDIS_URL: a broker that was already up (a user's `batchrender worker` uses
    it) is still up after the demo, which used it; the demo stops only a broker it started."""
    import shutil

    from jobs.embedded import redis_url_for, stop
    from jobs.settings import Settings
    from tests.conftest import require

    require(shutil.which("redis-server") is not None, "redis-server")
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny").symlink_to(tiny_model_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRENDER_")}
    env.update(BATCHRENDER_HOME=str(home))
    settings = Settings.from_env({"BATCHRENDER_HOME": str(home)})
    url = redis_url_for(settings, start=True)
    try:
        proc = subprocess.run([str(Path(sys.executable).with_name("batchrender")), "demo", "--n", "1", "--out",
                               str(tmp_path / "demo"), "--timeout", "150"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=200)
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        assert url in proc.stderr and "stopped at its end" not in proc.stderr, proc.stderr
        status = subprocess.run([str(Path(sys.executable).with_name("batchrender")), "embedded", "status"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and url.split("/")[2] in status.stdout, "the broker the demo found still runs"
    finally:
        stop(settings)
