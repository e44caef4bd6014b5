"""Batching: compatible jobs share one pipeline call, keep their own pixels, and survive a kill."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from jobs.status import JobStatus
from tests.workers import stored_files, wait_for

pytestmark = pytest.mark.timeout(300)


def test_job_in_a_batch_renders_the_pixels_it_renders_alone(tiny_model_dir):
    from diffusers import DiffusionPipeline

    from worker.render import CallShape, RenderItem, render

    pipe = DiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    shape = CallShape("tiny", 64, 64, 3, 5.0)
    job = RenderItem("a red bicycle", None, (42,))
    other = RenderItem("a red bicycle", None, (43,))
    three = RenderItem("a studio shot", "blurry, low quality", (7, 8, 9))

    def digest(groups):
        return [[hashlib.sha256(im.tobytes()).hexdigest() for im in g] for g in groups]

    alone = digest(render(pipe, "cpu", shape, [job], rows_per_call=4))[0]
    assert digest(render(pipe, "cpu", shape, [other, three, job], rows_per_call=4))[2] == alone
    assert digest(render(pipe, "cpu", shape, [three, job, job], rows_per_call=4))[1:] == [alone, alone]
    # A multi-image job split across calls keeps its pixels too.
    assert digest(render(pipe, "cpu", shape, [three], rows_per_call=4)) == \
        digest(render(pipe, "cpu", shape, [job, job, three], rows_per_call=4))[2:]


def test_batched_jobs_match_the_same_jobs_rendered_one_by_one(br_env, start_worker, client_for):
    env = {**br_env, "BATCHRENDER_MAX_BATCH": "4"}
    client = client_for(env)
    requests = [{"prompt": f"product shot {i}", "negative_prompt": "blurry" if i % 2 else None, "seed": 100 + i}
                for i in range(4)]
    batched = [client.submit(r) for r in requests]  # queued before any worker: they arrive together
    start_worker(env)
    recs = [client.wait(j, timeout=120) for j in batched]
    assert {r.result.timings.batch_size for r in recs} == {4}, [r.result.timings for r in recs]
    alone = []
    for r in requests:
        rec = client.wait(client.submit(r), timeout=120)
        assert rec.result.timings.batch_size == 1
        alone.append(rec)
    assert [r.result.images[0].pixel_sha256 for r in recs] == [r.result.images[0].pixel_sha256 for r in alone]


def test_worker_killed_mid_batch_loses_no_job_of_the_batch(br_env, start_worker, client_for):
    # The visibility timeout (how soon the killed worker's messages come back) must exceed the
    # render's time limit; the limit is generous so a loaded machine never trips it (it is a
    # safety net here, not what is tested).
    env = {**br_env, "BATCHRENDER_MAX_BATCH": "4", "BATCHRENDER_SOFT_TIME_LIMIT_S": "60",
           "BATCHRENDER_HARD_TIME_LIMIT_S": "61", "BATCHRENDER_VISIBILITY_TIMEOUT_S": "64"}
    client = client_for(env)
    jobs = [client.submit({"prompt": f"batch item {i}", "width": 128, "height": 128, "steps": 30, "seed": i})
            for i in range(4)]
    first = start_worker(env)
    wait_for(lambda: all((client.status(j).progress or {}).get("step", 0) >= 2 for j in jobs), timeout=60)
    first.kill()
    assert {client.status(j).status for j in jobs} == {JobStatus.RUNNING}
    start_worker(env)
    for j in jobs:
        rec = client.wait(j, timeout=240)
        assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
        assert rec.attempts == 2
    files = stored_files(br_env)
    assert sorted(Path(p).parent.name for p in files) == sorted(jobs), "each job's output written exactly once"
