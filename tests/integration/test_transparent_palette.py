"""Issue 16: transparent backgrounds and palettes, through real Redis and a real worker.

The transparent PNG is checked against the keying algorithm itself: the same prompt the
pipeline received, rendered opaque with the same seed, keyed in the test, must give exactly the
delivered alpha. Content Credentials are read back with ``c2pa.Reader`` and ``batchrender verify``.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.status import JobStatus
from tests.integration.test_api_jobs import alice, api, api_env, auth, make_api  # noqa: F401 (fixtures)
from tests.integration.test_worker_s3_c2pa import cli_verify, read_manifest
from tests.unit.test_cutout import tiny_segformer  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(240)
BASE = {"prompt": "a desk lamp", "seed": 11, "width": 128, "height": 128, "steps": 2}


def solid_blocks(mask: np.ndarray, side: int = 4) -> int:
    """How many ``side``×``side`` windows are entirely True (a region, not stray pixels)."""
    from numpy.lib.stride_tricks import sliding_window_view

    return int(sliding_window_view(mask, (side, side)).all(axis=(-1, -2)).sum())


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparent_render_is_keyed_from_its_pixels_and_its_manifest_validates(client, br_env, start_worker,
                                                                                 tmp_path, fmt):
    from jobs.schemas import RenderRequest
    from worker.conditioning import pipeline_prompts
    from worker.cutout import key_out

    start_worker(br_env)
    request = {**BASE, "background": "transparent", "output_format": fmt}
    job = client.submit(request)
    # The control: exactly the prompts the pipeline received for the transparent job, rendered opaque.
    prompt, negative = pipeline_prompts(RenderRequest.parse(request))
    assert "green background" in prompt and "shadow" in negative
    control = client.submit({**BASE, "prompt": prompt, "negative_prompt": negative, "background": "opaque",
                             "output_format": "png"})

    rec = client.wait(job, timeout=90)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    img = rec.result.images[0]
    data = Path(img.url).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == fmt.upper() and im.mode == "RGBA" and im.size == (128, 128)
        rgba = np.asarray(im)
    alpha = rgba[..., 3]
    # Both fully transparent and fully opaque regions (4x4 blocks, not stray pixels).
    assert solid_blocks(alpha == 0) > 0 and solid_blocks(alpha == 255) > 0
    assert img.alpha is not None and img.alpha.method == "key"
    assert img.alpha.coverage == pytest.approx((alpha == 0).mean(), abs=1e-4)
    assert img.alpha.opaque == pytest.approx((alpha == 255).mean(), abs=1e-4)
    assert 0 < img.alpha.coverage < 1 and 0 < img.alpha.opaque < 1

    # Honest alpha: keying the control render gives the delivered alpha, pixel for pixel.
    ctl = client.wait(control, timeout=90)
    assert ctl.status is JobStatus.SUCCEEDED and ctl.result.images[0].alpha is None
    with Image.open(ctl.result.images[0].url) as im:
        assert im.mode == "RGB"
        keyed = key_out(im)
    assert np.array_equal(np.asarray(keyed.image)[..., 3], alpha)
    assert keyed.report["backdrop"] == img.alpha.backdrop
    if fmt == "png":  # lossless: the colours are the keyed ones too (WebP's colour planes are lossy)
        assert np.array_equal(np.asarray(keyed.image), rgba)
        assert img.pixel_sha256 != ctl.result.images[0].pixel_sha256

    # The alpha survived signing: the manifest validates, and is trusted with the dev CA.
    mime = f"image/{fmt}"
    assert read_manifest(data, mime, None)[0] == "Valid"
    ca_file = Path(br_env["BATCHRENDER_HOME"]) / "keys" / "ca.pem"
    state, manifest = read_manifest(data, mime, ca_file.read_text())
    assert state == "Trusted"
    assertions = {a["label"]: a["data"] for a in manifest["assertions"]}
    assert assertions["org.batchrender.job"]["job_id"] == job
    target = tmp_path / f"cutout.{fmt}"
    target.write_bytes(data)
    code, out = cli_verify(target, "--trust", str(ca_file))
    assert code == 0 and "Trusted" in out, out


def test_palette_report_carries_delta_e_per_image(client, br_env, start_worker):
    start_worker(br_env)
    job = client.submit({**BASE, "prompt": "a mug in #1A73E8 on a table", "palette": ["#1a73e8", "#FBBC05"],
                         "num_images": 2})
    rec = client.wait(job, timeout=90)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    for img in rec.result.images:
        report = img.palette
        assert report is not None and report.threshold == 10.0
        assert [r.hex for r in report.requested] == ["#1A73E8", "#FBBC05"]
        assert report.requested[0].name and report.requested[0].delta_e is not None
        assert report.dominant and abs(sum(d.share for d in report.dominant) - 1) < 1e-3
        for d in report.dominant:
            assert d.nearest in ("#1A73E8", "#FBBC05") and d.delta_e >= 0 and d.passes == (d.delta_e <= 10)
        assert report.passes == all(r.passes for r in report.requested)
        assert report.tries is None


def pipeline_counters() -> tuple[float, float, float]:
    """This process's Prometheus pipeline calls, image rows and padding rows."""
    from prometheus_client import REGISTRY

    return tuple(REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in (
        ("batchrender_pipeline_calls_total", {}), ("batchrender_pipeline_rows_total", {"kind": "image"}),
        ("batchrender_pipeline_rows_total", {"kind": "padding"})))


def test_palette_strict_keeps_the_best_of_n_renders_by_the_injected_scorer(br_env, client, settings_for):
    """In process: a ``JobRunner`` with a stand-in scorer (the red mean of the image)."""
    from worker.context import WorkerContext
    from worker.runner import STATS_CALLS_KEY, STATS_ROWS_KEY, JobRunner

    ctx = WorkerContext.build(settings_for(br_env))
    runner = JobRunner(ctx, rows_per_call=1)  # one row per call: a seed's pixels never depend on the call
    scored: list[tuple[int, float]] = []

    def stand_in(image, palette):
        assert palette == ["#1A73E8"]
        score = float(np.asarray(image.convert("RGB"))[..., 0].mean()) / 255
        scored.append(score)
        # Longer than the runner's 0.2 s between progress writes: the first step of every
        # re-render is recorded, not only each call's last.
        time.sleep(0.25)
        return {"score": score, "passes": False}

    runner.palette_scorer = stand_in
    progress: list[tuple[int, int]] = []
    webhook_progress: list[tuple[int, int]] = []
    real_progress = ctx.events.progress
    ctx.events.progress = lambda msg, step, total: (webhook_progress.append((step, total)),
                                                    real_progress(msg, step, total))
    msg = client.prepare({**BASE, "prompt": "a mug", "palette": ["#1A73E8"], "palette_strict": True,
                          "palette_tries": 3, "num_images": 2})
    counters = pipeline_counters()
    outcome, = runner.run([msg], progress=lambda job_id, step, total: progress.append((step, total)))
    assert outcome.status is JobStatus.SUCCEEDED, outcome.detail
    rec = client.status(msg.job_id)
    assert len(scored) == 6  # 2 images x 3 tries, none passed
    # Every try is a pipeline call of one row (rows_per_call=1), re-renders included.
    assert int(ctx.store.r.get(STATS_CALLS_KEY)) == 6 and int(ctx.store.r.get(STATS_ROWS_KEY)) == 6
    assert [after - before for before, after in zip(counters, pipeline_counters())] == [6, 6, 0]
    # Progress is in the request's steps and never goes back across the tries.
    assert len(progress) > 6 and {total for _, total in progress} == {BASE["steps"]}
    steps = [step for step, _ in progress]
    assert steps == sorted(steps) and steps[-1] == BASE["steps"], steps
    assert rec.progress == {"step": BASE["steps"], "total": BASE["steps"]}
    assert webhook_progress == progress, "job.progress webhooks see the same steps"
    s = msg.request.seed
    for i, img in enumerate(rec.result.images):
        tries = img.palette.tries
        assert [t.seed for t in tries] == [s + i, s + i + 2, s + i + 4]
        best = max(tries, key=lambda t: t.score)
        assert img.seed == best.seed
        # The kept image is the plain render of that seed, and its score is the one recorded.
        plain = client.prepare({**BASE, "prompt": "a mug", "palette": ["#1A73E8"], "seed": best.seed})
        assert runner.run([plain])[0].status is JobStatus.SUCCEEDED
        plain_img = client.status(plain.job_id).result.images[0]
        assert plain_img.pixel_sha256 == img.pixel_sha256
        with Image.open(img.url) as im:
            assert round(float(np.asarray(im.convert("RGB"))[..., 0].mean()) / 255, 4) == best.score
    assert len({t.seed for img in rec.result.images for t in img.palette.tries}) == 6


def test_palette_strict_stops_once_an_image_passes(br_env, client, settings_for):
    from worker.context import WorkerContext
    from worker.runner import JobRunner

    runner = JobRunner(WorkerContext.build(settings_for(br_env)), rows_per_call=1)
    calls = []

    def second_passes(image, palette):
        calls.append(1)
        return {"score": len(calls) / 10, "passes": len(calls) == 2}

    runner.palette_scorer = second_passes
    msg = client.prepare({**BASE, "prompt": "a mug #1A73E8", "palette_strict": True, "palette_tries": 5})
    progress: list[int] = []
    assert runner.run([msg], progress=lambda job_id, step, total: progress.append(step))[0].status \
        is JobStatus.SUCCEEDED
    # 2 of 5 tries rendered: progress rises and then reaches the request's steps once the tries end.
    assert progress == sorted(progress) and progress[-1] == BASE["steps"], progress
    img = client.status(msg.job_id).result.images[0]
    assert [t.score for t in img.palette.tries] == [0.1, 0.2] and img.seed == msg.request.seed + 1
    assert img.palette.requested[0].hex == "#1A73E8"  # the palette came from the prompt


def test_pipeline_receives_colour_names_and_the_backdrop_instead_of_hex_codes(br_env, client, settings_for,
                                                                              monkeypatch):
    import worker.runner as runner_mod
    from worker.colour import colour_name
    from worker.context import WorkerContext

    seen = []
    real = runner_mod.render

    def spy(pipe, device, shape, items, *a, **kw):
        seen.extend((item.prompt, item.negative_prompt) for item in items)
        return real(pipe, device, shape, items, *a, **kw)

    monkeypatch.setattr(runner_mod, "render", spy)
    runner = runner_mod.JobRunner(WorkerContext.build(settings_for(br_env)))
    msg = client.prepare({**BASE, "prompt": "a green bottle, label #1A73E8", "palette": ["#FBBC05"],
                          "background": "transparent"})
    assert runner.run([msg])[0].status is JobStatus.SUCCEEDED
    (prompt, negative), = seen
    assert "#" not in prompt and colour_name("#1A73E8") in prompt
    assert f"colour palette: {colour_name('#FBBC05')}" in prompt
    # "green" is in the prompt, so the backdrop is blue, not chroma green.
    assert "solid blue background" in prompt and "blue subject" in negative
    rec = client.status(msg.job_id)
    assert rec.request["prompt"] == "a green bottle, label #1A73E8"  # the client's prompt is kept as written


# -- bad input, through the HTTP API --------------------------------------------------------------
@pytest.mark.parametrize("body, field, words", [
    ({"background": "clear"}, "background", ["'transparent'", "'opaque'", "'auto'"]),
    ({"background": "transparent", "output_format": "jpeg"}, "background", ["output_format", "jpeg", "png"]),
    ({"palette": ["#1A73E8", "blue"]}, "palette", ["palette[1]", "#RRGGBB"]),
    ({"palette": ["#12345G"]}, "palette", ["#RRGGBB"]),
    ({"palette": ["#000000"] * 9}, "palette", ["at most 8"]),
    ({"palette": []}, "palette", ["1–8"]),
    ({"palette_strict": True}, "palette_strict", ["palette"]),
    ({"palette": ["#000000"], "palette_strict": True, "palette_tries": 9}, "palette_tries", ["8"]),
])
def test_bad_background_and_palette_are_422_naming_the_field(api, alice, body, field, words):
    r = api.post("/v1/jobs", json={"prompt": "a lamp", **body}, headers=auth(alice))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    named = [e for e in error["errors"] if e["field"] == field]
    assert named, error
    assert all(w in named[0]["message"] for w in words), named[0]["message"]


def test_palette_strict_tries_count_against_the_cost_budget(make_api, alice):
    api = make_api(max_job_cost=64 * 64 * 4 * 3)
    ok = api.post("/v1/jobs", json={"prompt": "a lamp", "width": 64, "height": 64, "steps": 4,
                                     "palette": ["#000000"], "palette_strict": True, "palette_tries": 3},
                  headers=auth(alice))
    assert ok.status_code == 201, ok.text
    over = api.post("/v1/jobs", json={"prompt": "a lamp", "width": 64, "height": 64, "steps": 4,
                                       "palette": ["#000000"], "palette_strict": True, "palette_tries": 4},
                    headers=auth(alice))
    assert over.status_code == 422 and "palette_tries" in over.json()["error"]["message"]


def test_with_a_matting_model_the_alpha_is_the_models(br_env, client, settings_for, tiny_segformer):
    """BATCHRENDER_MATTING_MODEL_DIR: a (tiny, random-weight) segmentation model makes the alpha."""
    from jobs.schemas import RenderRequest
    from worker.conditioning import pipeline_prompts
    from worker.context import WorkerContext
    from worker.cutout import MattingModel
    from worker.runner import JobRunner

    env = {**br_env, "BATCHRENDER_MATTING_MODEL_DIR": str(tiny_segformer)}
    runner = JobRunner(WorkerContext.build(settings_for(env)), rows_per_call=1)
    request = {**BASE, "background": "transparent"}
    msg = client.prepare(request)
    prompt, negative = pipeline_prompts(RenderRequest.parse(request))
    control = client.prepare({**BASE, "prompt": prompt, "negative_prompt": negative, "background": "opaque"})
    assert [o.status for o in runner.run([msg, control])] == [JobStatus.SUCCEEDED] * 2
    img = client.status(msg.job_id).result.images[0]
    assert img.alpha.method == "matting" and img.alpha.model == tiny_segformer.name and img.alpha.backdrop is None
    with Image.open(img.url) as im:
        alpha = np.asarray(im)[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any()
    with Image.open(client.status(control.job_id).result.images[0].url) as im:
        expected = MattingModel(tiny_segformer).alpha(im)
    expected = np.where(expected < 2 / 255, 0, np.where(expected > 253 / 255, 1, expected))
    assert np.abs(alpha.astype(float) - np.round(expected * 255)).max() <= 1
