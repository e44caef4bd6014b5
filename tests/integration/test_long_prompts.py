"""Prompts longer than CLIP's 77-token window reach the denoiser whole (worker/prompts.py)."""
from __future__ import annotations

import re

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(240)


def words(n_tokens: int, last: str = "z") -> str:
    """A prompt of exactly ``n_tokens`` tokens for the tiny tokenizers (one token per character),
    ending in ``last``."""
    body = " ".join(["ab"] * ((n_tokens - 1) // 2))
    return (body + " " + "c" * ((n_tokens - 1) % 2) + last).strip()


def load(path):
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), dtype=torch.float32, local_files_only=True,
                                             safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def spy(pipe, monkeypatch):
    """Record the keyword arguments of every pipeline call and the text embeddings the
    denoiser (UNet) is given."""
    calls, seen = [], []
    real = type(pipe).__call__

    def recording(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", recording)
    hook = pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)),
        with_kwargs=True)
    return calls, seen, hook


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from worker.tiny_families import build_tiny_family

    return build_tiny_family("sdxl", tmp_path_factory.mktemp("models") / "tiny-sdxl")


def test_150_token_prompt_reaches_the_unet_whole_with_a_negative_prompt_of_the_same_length(tiny_model_dir, monkeypatch):
    from worker.prompts import prompt_tokens
    from worker.render import CallShape, RenderItem, render

    pipe = load(tiny_model_dir)
    prompt = words(150)
    assert prompt_tokens(pipe, prompt) == 150
    calls, seen, hook = spy(pipe, monkeypatch)
    shape = CallShape("tiny", 64, 64, 2, 5.0)
    a = render(pipe, "cpu", shape, [RenderItem(prompt, "blurry", (1,))], rows_per_call=2)[0][0]
    hook.remove()
    (kw,) = calls
    assert "prompt" not in kw and kw["prompt_embeds"].shape == (2, 2 * 77, 32), "150 tokens need two windows"
    assert kw["negative_prompt_embeds"].shape == kw["prompt_embeds"].shape, "negative padded to the same length"
    assert {tuple(h.shape) for h in seen} == {(4, 154, 32)}, "CFG: negative and positive rows, 154 positions each"
    # Not truncated: the 150th token changes the embeddings and the pixels.
    b = render(pipe, "cpu", shape, [RenderItem(words(150, last="y"), "blurry", (1,))], rows_per_call=2)[0][0]
    assert not np.array_equal(np.asarray(a), np.asarray(b)), "the last token must matter"


def test_a_short_row_keeps_its_pixels_whoever_shares_the_batch(tiny_model_dir):
    from worker.render import CallShape, RenderItem, render

    pipe = load(tiny_model_dir)
    shape = CallShape("tiny", 64, 64, 2, 5.0)
    short = RenderItem("a red bicycle", None, (7,))
    with_long = render(pipe, "cpu", shape, [short, RenderItem(words(200), "x" * 90, (8,))], rows_per_call=2)
    with_short = render(pipe, "cpu", shape, [short, RenderItem("a harbour", None, (8,))], rows_per_call=2)
    assert np.array_equal(np.asarray(with_long[0][0]), np.asarray(with_short[0][0]))
    assert with_long[1][0].size == (64, 64)


def test_a_long_negative_prompt_pads_a_short_prompt(tiny_model_dir, monkeypatch):
    from worker.render import CallShape, RenderItem, render

    pipe = load(tiny_model_dir)
    calls, _, hook = spy(pipe, monkeypatch)
    render(pipe, "cpu", CallShape("tiny", 64, 64, 2, 5.0), [RenderItem("a cup", words(160), (1,))], rows_per_call=1)
    hook.remove()
    assert calls[0]["prompt_embeds"].shape[1] == calls[0]["negative_prompt_embeds"].shape[1] == 3 * 77


def test_sdxl_long_prompt_uses_both_encoders_over_every_window(sdxl_dir, monkeypatch):
    from worker.render import CallShape, RenderItem, render

    pipe = load(sdxl_dir)
    calls, seen, hook = spy(pipe, monkeypatch)
    render(pipe, "cpu", CallShape("tiny-sdxl", 64, 64, 2, 5.0), [RenderItem(words(150), None, (1,))], rows_per_call=1)
    hook.remove()
    kw = calls[0]
    assert kw["prompt_embeds"].shape == kw["negative_prompt_embeds"].shape == (1, 154, 64), "32 + 32 hidden"
    assert kw["pooled_prompt_embeds"].shape == kw["negative_pooled_prompt_embeds"].shape == (1, 32)
    assert {tuple(h.shape) for h in seen} == {(2, 154, 64)}


def test_the_result_says_how_many_tokens_were_used(client, br_env, start_worker, tenants, settings_for):
    from fastapi.testclient import TestClient

    from producer.api import create_app
    from tests.workers import wait_for

    start_worker(br_env)
    short_job = client.submit({"prompt": "a red bicycle", "seed": 1, "width": 64, "height": 64, "steps": 2})
    key = {"Authorization": f"Bearer {tenants.create('acme').api_key}"}
    with TestClient(create_app(settings_for(br_env))) as api:
        job = api.post("/v1/jobs", json={"prompt": words(150), "seed": 1, "width": 64, "height": 64, "steps": 2},
                       headers=key).json()
        done = wait_for(lambda: (r := api.get(f"/v1/jobs/{job['id']}", headers=key).json())["status"] in
                        ("succeeded", "failed", "blocked") and r, 120, "the long job to end", every=0.2)
        api.app.state.client.close()
    assert done["status"] == "succeeded", done
    assert done["prompt_tokens"] == 150, "the HTTP API's job says every token was read"
    short_rec = client.wait(short_job, timeout=120)
    assert short_rec.result.prompt_tokens == len("aredbicycle")


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    from worker.tiny_families import build_tiny_family

    return build_tiny_family("sd3", tmp_path_factory.mktemp("models") / "tiny-sd3")


def test_sd3_reads_a_long_prompt_through_a_wider_t5_window_and_refuses_one_past_its_limit(sd3_dir, monkeypatch):
    from jobs.errors import PermanentError
    from worker.prompts import prompt_tokens
    from worker.render import CallShape, RenderItem, render

    pipe = load(sd3_dir)
    calls, real = [], type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **kw: calls.append(kw) or real(self, *a, **kw))
    shape = CallShape("tiny-sd3", 64, 64, 2, 5.0)
    long, short = words(400), "a label reading SALE"
    assert 255 < prompt_tokens(pipe, long) <= 511
    out = render(pipe, "cpu", shape, [RenderItem(short, None, (1,)), RenderItem(long, None, (2,))], rows_per_call=2)
    assert [len(x) for x in out] == [1, 1]
    assert sorted((kw["max_sequence_length"], kw["prompt"][0]) for kw in calls) == [(256, short), (512, long)]
    too_long = words(1200)
    with pytest.raises(PermanentError, match=r"T5 tokens; model 'tiny-sd3' \(sd3\) reads at most 511"):
        render(pipe, "cpu", shape, [RenderItem(too_long, None, (1,))], rows_per_call=1)


def test_an_sd3_prompt_past_the_t5_limit_fails_its_own_job_and_the_rest_of_its_call_renders(
        client, br_env, start_worker, sd3_dir):
    """Through a real worker: three jobs pulled into one session and grouped into one call; the
    over-long one fails alone before the call, naming the limit; the other two share the call."""
    import redis
    from click.testing import CliRunner

    from jobs.status import JobStatus
    from producer.cli import cli
    from worker.runner import STATS_CALLS_KEY

    res = CliRunner().invoke(cli, ["models", "add", "tiny-sd3", str(sd3_dir), "--dtype", "float32", "--steps", "2",
                                   "--base-size", "64"], env=br_env)
    assert res.exit_code == 0, res.output
    base = {"model": "tiny-sd3", "width": 64, "height": 64, "steps": 2}
    # Queued before the worker starts, so its first session pulls all three (BATCHRENDER_MAX_BATCH=3).
    long = client.submit({**base, "prompt": words(1200), "seed": 1})
    short = [client.submit({**base, "prompt": f"a label reading SALE {i}", "seed": 2 + i}) for i in range(2)]
    start_worker({**br_env, "BATCHRENDER_MAX_BATCH": "3"}, queues="render.tiny-sd3,webhooks")

    for job in short:
        rec = client.wait(job, timeout=180)
        assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
        assert rec.result.timings.batch_size == 2, "the two short jobs shared the call"
    failed = client.wait(long, timeout=60)
    assert failed.status is JobStatus.FAILED, failed.to_dict()
    assert failed.error["code"] == "invalid_request" and failed.error["retryable"] is False
    assert re.fullmatch(r"prompt is \d+ T5 tokens; model 'tiny-sd3' \(sd3\) reads at most 511: shorten the prompt",
                        failed.error["message"]), failed.error
    r = redis.Redis.from_url(br_env["BATCHRENDER_REDIS_URL"])
    assert int(r.get(STATS_CALLS_KEY)) == 1, "one pipeline call, without the refused job"
    r.close()
