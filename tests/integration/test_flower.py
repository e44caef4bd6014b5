"""Flower sees every job: a real ``batchrender flower`` process, a real worker that batches, and
Flower's tasks page rendered in headless Chromium (network cut to loopback).

Jobs gathered into a batched call are pulled from the queue by the session, not handed to a
Celery task; worker/task_events.py sends their task events so Flower lists each as its own task.
``BR_SCREENSHOT_DIR=docs`` also saves the screenshot there (docs/flower.png).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jobs.names import RENDER_TASK
from tests.conftest import free_port
from tests.integration.test_browser import chromium
from tests.workers import ROOT, wait_for

pytestmark = pytest.mark.timeout(360)


class Flower:
    def __init__(self, env: dict[str, str], log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "flower", "--port", str(self.port), *extra],
                                     env={**os.environ, **env}, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def metric(self, name: str, **labels: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = httpx.get(f"{self.url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return None

    def tasks(self, search: str) -> dict:
        """Flower's own tasks table query (what the page's DataTable asks for)."""
        form = {"draw": "1", "start": "0", "length": "100", "search[value]": search,
                "order[0][column]": "0", "order[0][dir]": "desc", "columns[0][data]": "received"}
        return httpx.post(f"{self.url}/tasks/datatable", data=form, timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def test_flower_lists_every_job_of_a_16_job_batch(br_env, client, start_worker, tmp_path):
    env = {**br_env, "BATCHRENDER_MAX_BATCH": "4"}
    flower = Flower(env, tmp_path / "flower.log")
    try:
        worker = start_worker(env, queues="render.tiny", heartbeat=True)
        node = re.search(r"(w-\d+-\d+@test)", worker.log()).group(1)
        # Flower's event receiver is live once it has seen the worker's heartbeat: nothing sent
        # after that can be missed (no sleeping, no timing assumptions).
        wait_for(lambda: flower.metric("flower_worker_online", worker=node) == 1.0, timeout=90,
                 what="Flower to see the worker's heartbeat", every=0.5)

        requests = [{"prompt": f"a product photo of item {i}", "seed": i, "width": 64, "height": 64, "steps": 2}
                    for i in range(16)]
        sub = client.submit_batch(requests)
        batch_id, job_ids = sub.batch_id, sub.job_ids
        client.wait_batch(batch_id, timeout=240)
        records = [client.status(j) for j in job_ids]
        assert all(r.status.value == "succeeded" for r in records)
        # The worker really batched: most jobs were pulled into a leader's call, not run as tasks.
        assert max(r.result.timings.batch_size for r in records) > 1

        wanted = set(job_ids)
        seen = wait_for(lambda: (lambda t: t if {row["uuid"] for row in t["data"]} >= wanted else None)(
            flower.tasks("state:SUCCESS")), timeout=60, what="Flower to list all 16 jobs", every=0.5)
        rows = {row["uuid"]: row for row in seen["data"]}
        assert seen["recordsFiltered"] == 16, seen["recordsFiltered"]
        for job_id in job_ids:
            row = rows[job_id]
            assert row["name"] == RENDER_TASK and row["worker"] == node and row["state"] == "SUCCESS"
            assert job_id in row["args"] and "prompt" not in row["args"], row["args"]  # no payload copies
            assert "succeeded" in row["result"]

        page = f"{flower.url}/tasks?state=SUCCESS"
        dom = chromium(tmp_path, "--dump-dom", page)
        assert "Showing 1 to 15 of 16 tasks" in dom, dom[-3000:]
        assert dom.count(RENDER_TASK) >= 15
        shot = tmp_path / "flower.png"
        chromium(tmp_path, f"--screenshot={shot}", "--window-size=1500,1000", "--hide-scrollbars", page)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("BR_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["BR_SCREENSHOT_DIR"]) / "flower.png")
    finally:
        flower.stop()


def test_flower_refuses_a_public_address_without_basic_auth(br_env):
    out = subprocess.run([sys.executable, "-m", "producer.cli", "flower", "--address", "0.0.0.0"],
                         env={**os.environ, **br_env}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "BATCHRENDER_FLOWER_BASIC_AUTH" in out.stderr
