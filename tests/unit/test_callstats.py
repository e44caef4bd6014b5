"""jobs/callstats.py against a real Redis: what was measured, scaled, refused; the recent window
following the fleet; the queue snapshot an ETA reads; recording never failing a render."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest
import redis

from jobs import callstats
from jobs.names import job_key, queued_key


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def rec(r, model="sdxl", w=1024, h=1024, steps=30, rows=4, seconds=8.0, **kw):
    kw.setdefault("cold", False)
    assert callstats.record_call(r, model=model, width=w, height=h, steps=steps, rows=rows, seconds=seconds, **kw)


def test_an_exact_shape_is_measured_and_says_from_how_many_calls(r):
    rec(r, rows=4, seconds=8.0)
    rec(r, rows=4, seconds=12.0)
    est = callstats.estimate(r, model="sdxl", width=1024, height=1024, steps=30)
    assert est is not None and est.source == "measured" and est.factor == 1.0
    assert est.seconds_per_row == pytest.approx(20.0 / 8) and est.calls == 2 and est.rows == 8
    assert est.measured_shape == {"model": "sdxl", "width": 1024, "height": 1024, "steps": 30, "kind": "render"}
    d = est.to_dict()
    assert d["source"] == "measured" and d["calls"] == 2 and d["measured_rows"] == 8 and d["warm"] is True
    # A plan entry's own keys are never overwritten by the measurement's.
    assert not {"rows", "model", "width", "height", "steps", "kind"} & set(d)
    h = r.hgetall(callstats.shape_key("sdxl", 1024, 1024, 30))
    assert h["calls"] == "2" and h["rows"] == "8" and float(h["seconds"]) == 20.0 and float(h["last_at"]) > 0
    assert r.sismember(callstats.shapes_key("sdxl"), "1024x1024:30:render")


def test_an_unmeasured_shape_is_scaled_from_the_nearest_measured_one_of_its_model(r):
    rec(r, w=512, h=512, steps=20, rows=1, seconds=1.0)     # work 5.2M
    rec(r, w=1024, h=1024, steps=30, rows=1, seconds=6.0)   # work 31.5M
    rec(r, model="other", w=1024, h=768, steps=30, rows=1, seconds=100.0)
    est = callstats.estimate(r, model="sdxl", width=1024, height=768, steps=30)  # work 23.6M: nearer 1024²
    assert est is not None and est.source == "scaled"
    assert est.measured_shape["width"] == 1024 and est.measured_shape["height"] == 1024
    assert est.factor == pytest.approx(0.75) and est.seconds_per_row == pytest.approx(4.5)
    assert "scaled from sdxl 1024x1024" in est.to_dict()["note"]
    small = callstats.estimate(r, model="sdxl", width=512, height=512, steps=40)
    assert small.measured_shape["width"] == 512 and small.seconds_per_row == pytest.approx(2.0)


def test_a_model_never_measured_is_none_never_scaled_from_another_model(r):
    rec(r, model="sdxl")
    assert callstats.estimate(r, model="flux", width=1024, height=1024, steps=30) is None


def test_outpainting_uses_inpaint_measurements_else_the_render_ones_marked_scaled(r):
    rec(r, rows=2, seconds=4.0)
    est = callstats.estimate(r, model="sdxl", width=1024, height=1024, steps=30, kind="inpaint")
    assert est.source == "scaled" and est.factor == 1.0 and est.measured_shape["kind"] == "render"
    assert est.seconds_per_row == pytest.approx(2.0) and "no inpaint call" in est.note
    rec(r, rows=2, seconds=6.0, inpaint=True)
    est = callstats.estimate(r, model="sdxl", width=1024, height=1024, steps=30, kind="inpaint")
    assert est.source == "measured" and est.seconds_per_row == pytest.approx(3.0)
    # Render estimates are not polluted by inpaint calls.
    assert callstats.estimate(r, model="sdxl", width=1024, height=1024, steps=30).seconds_per_row == pytest.approx(2.0)


def test_the_recent_window_follows_the_fleet_when_it_changes(r):
    for _ in range(callstats.WINDOW):
        rec(r, rows=1, seconds=10.0)  # the old GPUs
    for _ in range(callstats.WINDOW):
        rec(r, rows=1, seconds=2.0)   # the new ones
    est = callstats.estimate(r, model="sdxl", width=1024, height=1024, steps=30)
    assert est.seconds_per_row == pytest.approx(2.0) and est.recent and est.calls == callstats.WINDOW
    assert est.total_calls == 2 * callstats.WINDOW
    assert r.llen(callstats.window_key("sdxl", 1024, 1024, 30)) == callstats.WINDOW
    assert callstats.queue_snapshot(r, "sdxl")["seconds_per_row"] == pytest.approx(2.0)


def test_a_first_call_warm_up_is_kept_out_of_the_window_but_used_when_alone(r):
    assert callstats.record_call(r, model="m", width=64, height=64, steps=2, rows=1, seconds=50.0)  # cold
    est = callstats.estimate(r, model="m", width=64, height=64, steps=2)
    assert est.source == "measured" and not est.warm and est.seconds_per_row == pytest.approx(50.0)
    assert callstats.record_call(r, model="m", width=64, height=64, steps=2, rows=1, seconds=1.0)  # warm now
    est = callstats.estimate(r, model="m", width=64, height=64, steps=2)
    assert est.warm and est.seconds_per_row == pytest.approx(1.0) and est.calls == 1


def test_record_calls_sums_calls_per_shape_with_denoised_steps_for_image_conditioned_calls(r):
    @dataclass(frozen=True)
    class Shape:
        model: str
        width: int
        height: int
        steps: int
        strength: float | None = None
        inpaint: bool = False

    plain, outpaint, img2img = Shape("m", 64, 64, 10), Shape("m", 96, 64, 10, 1.0, True), Shape("m", 64, 64, 10, 0.5)
    assert callstats.record_calls(r, [(plain, 2, 1.0), (plain, 2, 3.0), (outpaint, 1, 2.0), (img2img, 1, 0.5)]) == 4
    h = r.hgetall(callstats.shape_key("m", 64, 64, 10))
    # The first call of a shape in a process is cold (warm-up), the next one warm.
    assert (h["cold_calls"], h["cold_rows"], float(h["cold_seconds"])) == ("1", "2", 1.0)
    assert (h["calls"], h["rows"], float(h["seconds"])) == ("1", "2", 3.0)
    assert r.exists(callstats.shape_key("m", 96, 64, 10, "inpaint"))
    assert r.exists(callstats.shape_key("m", 64, 64, 5, "img2img"))  # strength 0.5 of 10 steps


def test_recording_never_raises_into_the_render_path():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, decode_responses=True,
                       retry=Retry(NoBackoff(), 0))
    assert callstats.record_call(dead, model="m", width=8, height=8, steps=1, rows=1, seconds=1.0) is False
    assert callstats.record_calls(dead, [(object(), 1, 1.0)]) == 0
    assert callstats.heartbeat(dead, ["m"]) is False
    callstats.leave(dead, ["m"])


def test_queue_snapshot_prices_the_queue_and_counts_live_workers(r):
    rec(r, model="sdxl", w=1024, h=1024, steps=30, rows=2, seconds=4.0, worker="gpu-a:1")  # 2 s/row; a beat
    now = time.time()
    jobs = {"j1": {"width": 1024, "height": 1024, "steps": 30, "num_images": 2},
            "j2": {"width": 512, "height": 512, "steps": 30, "num_images": 1, "palette_strict": True, "palette_tries": 3},
            "j3": {"width": 1024, "height": 1024, "steps": 30, "num_images": 1,
                   "renditions": [{"name": "story", "ratio": "9:16", "fit": "extend"}]}}
    for i, (job_id, req) in enumerate(jobs.items()):
        r.hset(job_key(job_id), mapping={"status": "queued", "request": json.dumps({"model": "sdxl", **req})})
        r.zadd(queued_key("sdxl"), {job_key(job_id): now + i})
    callstats.heartbeat(r, ["sdxl"], worker="gpu-b:2", now=now - 2 * callstats.LIVE_WITHIN_S)  # gone quiet
    callstats.heartbeat(r, ["flux"], worker="gpu-c:3")
    snap = callstats.queue_snapshot(r, "sdxl")
    assert snap["queued_jobs"] == 3 and snap["queued_rows"] == 2 + 3 + 2 and not snap["sampled"]
    # j1: 2 rows x 2 s; j2: 3 tries at a quarter the pixels (0.5 s); j3: 1 render + 1 outpaint (2 s each).
    assert snap["ahead_gpu_seconds"] == pytest.approx(4.0 + 1.5 + 4.0)
    assert snap["workers"] == 1 and snap["worker_ids"] == ["gpu-a:1"]
    assert snap["seconds_per_row"] == pytest.approx(2.0) and snap["rows_per_second"] == pytest.approx(0.5)
    sampled = callstats.queue_snapshot(r, "sdxl", read_limit=1)
    assert sampled["sampled"] and sampled["queued_rows"] == 6 and sampled["ahead_gpu_seconds"] == pytest.approx(12.0)
    callstats.leave(r, ["sdxl"], worker="gpu-a:1")
    assert callstats.queue_snapshot(r, "sdxl")["workers"] == 0


def test_queue_snapshot_of_an_unmeasured_model_cannot_price_its_queue(r):
    r.hset(job_key("j"), mapping={"request": json.dumps({"width": 64, "height": 64, "steps": 2})})
    r.zadd(queued_key("new"), {job_key("j"): time.time()})
    snap = callstats.queue_snapshot(r, "new")
    assert snap["queued_jobs"] == 1 and snap["ahead_gpu_seconds"] is None and snap["seconds_per_row"] is None
    assert snap["workers"] == 0
    empty = callstats.queue_snapshot(r, "none")
    assert empty["queued_jobs"] == 0 and empty["queued_rows"] == 0 and empty["ahead_gpu_seconds"] == 0.0
