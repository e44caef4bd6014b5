"""A real worker measures its pipeline calls (jobs/callstats.py), outpainting apart, and says it
serves its models."""
from __future__ import annotations

import pytest
import redis

from jobs import callstats
from jobs.status import JobStatus
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(240)


def test_a_rendered_job_measures_its_shape_and_the_worker_beats_while_it_runs(client, br_env, start_worker):
    r = redis.Redis.from_url(br_env["BATCHRENDER_REDIS_URL"], decode_responses=True)
    try:
        w = start_worker(br_env)
        # Beats at start, before any job (worker_ready), for the models of its -Q queues only.
        wait_for(lambda: callstats.live_workers(r, "tiny"), timeout=30, what="the worker's heartbeat")
        assert callstats.queue_snapshot(r, "tiny")["workers"] == 1
        assert callstats.estimate(r, model="tiny", width=64, height=64, steps=2) is None, "nothing measured yet"

        job = client.submit({"prompt": "a blue teapot", "seed": 7, "num_images": 2})
        rec = client.wait(job, timeout=120)
        assert rec.status is JobStatus.SUCCEEDED
        q = rec.request
        est = callstats.estimate(r, model="tiny", width=q["width"], height=q["height"], steps=q["steps"])
        assert est is not None and est.source == "measured", est
        assert est.calls >= 1 and est.rows >= 2 and est.seconds_per_row > 0
        # Another size of the same model: scaled from the measured one by pixels x steps.
        scaled = callstats.estimate(r, model="tiny", width=q["width"] * 2, height=q["height"], steps=q["steps"])
        assert scaled.source == "scaled" and scaled.factor == pytest.approx(2.0)
        assert scaled.seconds_per_row == pytest.approx(2 * est.seconds_per_row)

        # An outpainting render is measured as an inpaint call of its own canvas, apart from renders.
        assert callstats.estimate(r, model="tiny", width=128, height=128, steps=2, kind="inpaint").source == "scaled"
        out = client.submit({"prompt": "a mug on a table", "seed": 5, "width": 128, "height": 128, "steps": 2,
                             "renditions": [{"name": "wide", "width": 320, "height": 180, "fit": "extend"}]})
        assert client.wait(out, timeout=120).status is JobStatus.SUCCEEDED
        kinds = {m.rsplit(":", 1)[1] for m in r.smembers(callstats.shapes_key("tiny"))}
        assert kinds == {"render", "inpaint"}
        inpaint = [m for m in r.smembers(callstats.shapes_key("tiny")) if m.endswith(":inpaint")]
        w0, h0 = (int(v) for v in inpaint[0].split(":")[0].split("x"))
        assert callstats.estimate(r, model="tiny", width=w0, height=h0, steps=2, kind="inpaint").source == "measured"

        w.stop()  # a warm shutdown leaves the set at once
        assert callstats.live_workers(r, "tiny") == []
    finally:
        r.close()
