"""BATCHRENDER_LOG_FORMAT=json: a real worker's log is one JSON object per line, and every line about
a job carries its id (``job_id``, or ``job_ids`` for a batched call)."""
from __future__ import annotations

import json
import logging

import pytest

pytestmark = pytest.mark.timeout(240)


def test_worker_logs_json_lines_with_job_ids(br_env, client, start_worker):
    env = {**br_env, "BATCHRENDER_LOG_FORMAT": "json", "BATCHRENDER_MAX_BATCH": "4"}
    worker = start_worker(env)
    sub = client.submit_batch([{"prompt": f"a chair {i}", "seed": i, "width": 64, "height": 64, "steps": 2}
                               for i in range(5)])
    client.wait_batch(sub.batch_id, timeout=180)
    lines = [line for line in worker.log().splitlines() if line.strip()]
    # Celery's banner is printed, not logged; everything logged is JSON.
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(logged) >= 10
    assert all({"ts", "level", "logger", "message"} <= set(x) for x in logged)
    ids = set(sub.job_ids)
    about_jobs = [x for x in logged if any(j in x["message"] for j in ids)]
    assert about_jobs, "the worker logged nothing about the jobs"
    for x in about_jobs:
        named = {x.get("job_id")} | set(x.get("job_ids", []))
        assert named & ids and all(j in named for j in ids if j in x["message"]), x
    # The render of a batched call names every job in it.
    assert any(len(set(x.get("job_ids", [])) & ids) > 1 for x in logged) or \
        len({x["job_id"] for x in logged if x.get("job_id") in ids}) == len(ids)


def test_text_lines_name_the_job_and_json_lines_carry_it():
    from jobs.logs import JsonFormatter, _TextWithJobs, job_context

    record = logging.LogRecord("worker.runner", logging.WARNING, __file__, 1, "retrying %s", ("upload",), None)
    with job_context("job_abc"):
        line = json.loads(JsonFormatter().format(record))
        text = _TextWithJobs("%(name)s: %(message)s").format(record)
    assert line["job_id"] == "job_abc" and line["message"] == "retrying upload" and line["level"] == "WARNING"
    assert text == "worker.runner [job_abc]: retrying upload"
    with job_context("job_a", "job_b"):
        assert json.loads(JsonFormatter().format(record))["job_ids"] == ["job_a", "job_b"]
    assert "job_id" not in json.loads(JsonFormatter().format(record))
