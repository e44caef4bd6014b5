"""Prometheus metrics move with a batch: the API's ``/metrics`` (real uvicorn) and the workers'
endpoint served by a real ``batchrender worker --metrics-port`` (a render process and a webhook
process in prometheus-client multiprocess mode), both parsed with prometheus-client's own parser.
"""
from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.test_api_http_client import ApiServer
from tests.workers import ROOT, wait_for

pytestmark = pytest.mark.timeout(300)
BLOCKED = "Nude photo of a child"


def scrape(url: str, **headers: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    resp = httpx.get(url, headers=headers, timeout=10)
    resp.raise_for_status()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_with_a_batch(br_env, settings_for, tenants, tmp_path):
    from producer.api import create_app
    from producer.http_client import HttpClient
    from webhooks.testing import LoopbackReceiver

    env = {**br_env, "BATCHRENDER_MAX_BATCH": "4", "BATCHRENDER_METRICS_TOKEN": "scrape-me"}
    alice = tenants.create("alice")
    port = free_port()
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "producer.cli", "worker", "--models", "tiny",
                               "--metrics-port", str(port)], env={**os.environ, **env}, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    worker_url = f"http://127.0.0.1:{port}/metrics"
    app = create_app(settings_for(env))
    try:
        wait_for(lambda: (tmp_path / "worker.log").read_text(errors="replace").count(" ready.") >= 2, timeout=120,
                 what="the render and webhook processes", every=0.2)
        with ApiServer(app) as server, LoopbackReceiver() as hook, HttpClient(server.url, alice.api_key) as api:
            api_url = f"{server.url}/metrics"
            assert httpx.get(api_url).status_code == 401, "the token is required when set"
            before = scrape(api_url, authorization="Bearer scrape-me")
            assert ("batchrender_queue_depth", frozenset({("queue", "render.tiny")})) in before
            wbefore = scrape(worker_url)
            assert value(wbefore, "batchrender_jobs_finished_total", status="succeeded", model="tiny") == 0

            requests = [{"prompt": f"a lamp {i}", "seed": i, "width": 64, "height": 64, "steps": 2} for i in range(6)]
            batch = api.create_batch(requests + [{"prompt": BLOCKED, "width": 64, "height": 64, "steps": 2}],
                                     webhook=hook.url)
            wait_for(lambda: api.get_batch(batch["id"])["status"] == "completed", timeout=180, every=0.25,
                     what="the batch")
            # 7 job events + batch.completed, delivered by the webhook process
            wait_for(lambda: len(hook.received) >= 8, timeout=60, what="the webhooks", every=0.2)
            after = scrape(api_url, authorization="Bearer scrape-me")
            wafter = wait_for(lambda: (lambda s: s if value(s, "batchrender_webhook_deliveries_total",
                                                            outcome="delivered") >= 8 else None)(scrape(worker_url)),
                              timeout=30, what="the delivery counter")
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
        app.state.client.close()

    delta = lambda s0, s1, name, **labels: value(s1, name, **labels) - value(s0, name, **labels)  # noqa: E731
    # The API process queued 7 jobs and ended the blocked one itself (prompt moderation at submit).
    assert delta(before, after, "batchrender_jobs_submitted_total", model="tiny", tenant=alice.tenant_id) == 7
    assert delta(before, after, "batchrender_jobs_finished_total", status="blocked", model="tiny") == 1
    blocks = sum(v for (n, labels), v in after.items() if n == "batchrender_moderation_decisions_total"
                 and dict(labels)["action"] == "block") - \
        sum(v for (n, labels), v in before.items() if n == "batchrender_moderation_decisions_total"
            and dict(labels)["action"] == "block")
    assert blocks >= 1
    # The workers rendered and delivered the other six.
    assert delta(wbefore, wafter, "batchrender_jobs_finished_total", status="succeeded", model="tiny") == 6
    for phase in ("queue_wait", "render", "postprocess"):
        assert delta(wbefore, wafter, "batchrender_job_duration_seconds_count", phase=phase) == 6, phase
        assert delta(wbefore, wafter, "batchrender_job_duration_seconds_sum", phase=phase) > 0, phase
        assert value(wafter, "batchrender_job_duration_seconds_bucket", phase=phase, le="+Inf") == 6
    # Prompt checks (6) and output checks (6) in the render process.
    assert delta(wbefore, wafter, "batchrender_moderation_decisions_total", action="allow", category="none") >= 12
    assert delta(wbefore, wafter, "batchrender_webhook_deliveries_total", outcome="delivered") >= 8
    assert delta(wbefore, wafter, "batchrender_render_busy_seconds_total") > 0
    ratio = value(wafter, "batchrender_gpu_busy_ratio")
    assert 0 < ratio <= 1, ratio
    assert ("batchrender_queue_depth", frozenset({("queue", "webhooks")})) in wafter


def test_the_apis_metrics_count_the_jobs_every_process_finished(br_env, settings_for, start_worker, client):
    """The API's /metrics has the fleet's finished jobs, by status and model: the one terminal
    transition counts them in Redis in whichever process ends a job (here a real worker renders
    one and this process blocks one), and the API reads the counts at scrape. Its own
    ``batchrender_jobs_finished_total`` counts only what its process ended."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from jobs.status import JobStatus
    from producer.api import create_app

    def scrape_api() -> dict[tuple[str, frozenset], float]:
        with TestClient(create_app(settings_for(br_env))) as api:
            text = api.get("/metrics").text
            api.app.state.client.close()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = scrape_api()
    assert value(before, "batchrender_fleet_jobs_finished_total", status="succeeded", model="tiny") == 0
    start_worker(br_env, queues="render.tiny")
    rendered = client.submit({"prompt": "a lamp", "seed": 1, "width": 64, "height": 64, "steps": 2})
    assert client.wait(rendered, timeout=None).status is JobStatus.SUCCEEDED
    assert client.status(client.submit({"prompt": BLOCKED, "width": 64, "height": 64})).status is JobStatus.BLOCKED
    after = scrape_api()
    assert value(after, "batchrender_fleet_jobs_finished_total", status="succeeded", model="tiny") == 1, after
    assert value(after, "batchrender_fleet_jobs_finished_total", status="blocked", model="tiny") == 1
    local = "batchrender_jobs_finished_total"
    assert value(after, local, status="succeeded", model="tiny") == value(before, local, status="succeeded", model="tiny"), \
        "the render ended in the worker's process, not this one"
