"""Render options (worker/models.py, worker/render.py): each opt-in, each rendering real tiny
pipelines loaded through ``from_pretrained`` on the CPU; with all of them off, the bare pipeline's pixels."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.errors import ConfigurationError
from jobs.registry import ModelSpec

pytestmark = pytest.mark.timeout(300)
SHAPE = ("tiny", 64, 64, 2, 5.0)


def spec_for(path, family="sd15") -> ModelSpec:
    return ModelSpec(name=f"tiny-{family}", source=str(path), dtype="float32", device="cpu", family=family,
                     base_size=64)


def load(path, family="sd15", **options):
    from worker.models import ModelCache

    loaded, _ = ModelCache(**options).get(spec_for(path, family))
    return loaded


def draw(loaded, items=None, width=64, height=64, rows=2):
    from worker.render import CallShape, RenderItem, render

    items = items or [RenderItem("a red cup on a table", "blurry", (1, 2))]
    loaded.prepare_for(width, height, rows)
    out = render(loaded.pipe, "cpu", CallShape("tiny", width, height, 2, 5.0), items, rows_per_call=rows)
    return [np.asarray(img) for imgs in out for img in imgs]


def same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from worker.tiny_families import build_tiny_family

    return build_tiny_family("sdxl", tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="module")
def bare(tiny_model_dir):
    """The pixels of the pipeline loaded the plain diffusers way, no option touched."""
    import torch
    from diffusers import DiffusionPipeline

    from worker.render import CallShape, RenderItem, render

    pipe = DiffusionPipeline.from_pretrained(str(tiny_model_dir), dtype=torch.float32, local_files_only=True,
                                             safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = render(pipe, "cpu", CallShape(*SHAPE), [RenderItem("a red cup on a table", "blurry", (1, 2))],
                 rows_per_call=2)
    return [np.asarray(img) for imgs in out for img in imgs]


@pytest.fixture
def dynamo():
    """torch.compile state is per process: put the recompile limit back and drop compiled graphs."""
    import torch._dynamo

    limit = torch._dynamo.config.recompile_limit
    yield torch._dynamo
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.reset()


def test_with_every_option_off_the_worker_renders_the_bare_pipelines_pixels(tiny_model_dir, bare):
    loaded = load(tiny_model_dir)
    assert same(draw(loaded), bare)
    vae = loaded.pipe.vae
    assert loaded.vae_plan == (False, False) and not vae.use_slicing and not vae.use_tiling
    assert not hasattr(loaded.pipe, "_batchrender_prompt_cache") and loaded.pipe._batchrender_sdpa_backend is None


def test_vae_slicing_turns_on_only_when_free_memory_is_short(tiny_model_dir, bare):
    from worker.models import VAE_MEMORY_HEADROOM, vae_decode_bytes

    loaded = load(tiny_model_dir)
    one = int(vae_decode_bytes(64 * 64, 1, 4) / VAE_MEMORY_HEADROOM) + 1
    loaded.free_memory = lambda device: one  # room for one 64² image, not two
    assert loaded.prepare_for(64, 64, 2) == (True, False) and loaded.pipe.vae.use_slicing
    sliced = draw(loaded)
    assert len(sliced) == 2 and sliced[0].shape == (64, 64, 3)
    loaded.free_memory = lambda device: one // 8  # not even one image: sliced, never tiled for memory
    assert loaded.prepare_for(128, 128, 2) == (True, False) and not loaded.pipe.vae.use_tiling
    assert draw(loaded, width=128, height=128)[0].shape == (128, 128, 3)
    loaded.free_memory = lambda device: None  # plenty again: both off, the bare pixels back
    assert same(draw(loaded), bare) and not loaded.pipe.vae.use_slicing and not loaded.pipe.vae.use_tiling


def test_vae_slicing_always_reproduces_the_old_cuda_setting(tiny_model_dir):
    loaded = load(tiny_model_dir, vae_slicing="always")
    assert loaded.prepare_for(64, 64, 2) == (True, False) and loaded.pipe.vae.use_slicing
    assert load(tiny_model_dir, vae_tiling_above=64 * 64).prepare_for(64, 64, 1) == (False, True)


def test_compiled_unet_and_vae_decoder_render_the_uncompiled_pixels(tiny_model_dir, bare, dynamo):
    from torch._dynamo.eval_frame import OptimizedModule

    loaded = load(tiny_model_dir, compile_unet=True, compile_vae=True, compile_backend="eager", capacity=1)
    assert isinstance(loaded.pipe.unet, OptimizedModule) and isinstance(loaded.pipe.vae.decoder, OptimizedModule)
    assert dynamo.config.recompile_limit == 8, "eight sizes from the aspect ratios, one model cached"
    seen = []
    hook = loaded.pipe.unet._orig_mod.register_forward_pre_hook(lambda mod, args: seen.append(1))
    assert same(draw(loaded), bare)
    hook.remove()
    assert seen, "the render went through the compiled UNet"


def test_a_shape_beyond_the_recompile_limit_runs_eagerly_with_the_same_pixels(tiny_model_dir, dynamo):
    from worker.models import compile_pipeline
    from worker.render import CallShape, RenderItem, render

    plain = load(tiny_model_dir)
    compiled = load(tiny_model_dir)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    assert compile_pipeline(compiled.pipe, denoiser=True, vae=False, mode="default", backend=counting,
                            recompile_limit=1) == ["unet"]
    item = [RenderItem("a kite", None, (3,))]
    first = render(compiled.pipe, "cpu", CallShape("tiny", 64, 64, 2, 5.0), item, rows_per_call=1)
    after_first = len(graphs)
    assert after_first > 0
    stray = render(compiled.pipe, "cpu", CallShape("tiny", 48, 40, 2, 5.0), item, rows_per_call=1)
    assert len(graphs) == after_first, "no graph compiled for the stray shape"
    expect = render(plain.pipe, "cpu", CallShape("tiny", 48, 40, 2, 5.0), item, rows_per_call=1)
    assert np.array_equal(np.asarray(stray[0][0]), np.asarray(expect[0][0]))
    assert first[0][0].size == (64, 64)


def test_a_compile_backend_torch_does_not_know_is_refused_by_name(tiny_model_dir, dynamo):
    with pytest.raises(ConfigurationError, match="BATCHRENDER_COMPILE_BACKEND='nope'.*inductor"):
        load(tiny_model_dir, compile_unet=True, compile_backend="nope")


def test_a_forced_sdpa_backend_holds_through_the_pipeline_call(tiny_model_dir):
    import torch

    loaded = load(tiny_model_dir, sdpa_backend="math")
    flags = []
    hook = loaded.pipe.unet.register_forward_pre_hook(
        lambda mod, args: flags.append((torch._C._get_math_sdp_enabled(), torch._C._get_flash_sdp_enabled())))
    assert len(draw(loaded)) == 2
    hook.remove()
    assert flags and set(flags) == {(True, False)}, "only the math kernel is enabled inside the call"
    assert torch._C._get_flash_sdp_enabled(), "and torch's own choice is back after it"


def test_an_sdpa_backend_the_device_cannot_run_is_refused_at_load_and_at_start(tiny_model_dir, settings_for):
    from worker.models import ModelCache

    with pytest.raises(ConfigurationError) as e:
        load(tiny_model_dir, sdpa_backend="efficient")
    assert "BATCHRENDER_SDPA_BACKEND=efficient cannot run on cpu" in str(e.value) and "math" in str(e.value)
    with pytest.raises(ConfigurationError, match="BATCHRENDER_SDPA_BACKEND=cudnn cannot run on cpu; allowed here: auto"):
        ModelCache.from_settings(settings_for({"BATCHRENDER_SDPA_BACKEND": "cudnn", "BATCHRENDER_DEVICE": "cpu"}))


def test_a_worker_with_an_sdpa_backend_its_device_cannot_run_exits_at_start(br_env, start_worker):
    bad = start_worker({**br_env, "BATCHRENDER_SDPA_BACKEND": "efficient", "BATCHRENDER_DEVICE": "cpu"}, ready=False)
    assert bad.proc.wait(90) != 0
    log = bad.log()
    assert "worker cannot start" in log and "BATCHRENDER_SDPA_BACKEND=efficient" in log, log[-2000:]


def test_channels_last_applies_to_the_vae_too(tiny_model_dir, bare):
    import torch

    loaded = load(tiny_model_dir, channels_last=True)
    for module in (loaded.pipe.unet.conv_in, loaded.pipe.vae.decoder.conv_in):
        assert module.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(draw(loaded)) == 2


def count_calls(module) -> list:
    calls = []
    module.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(args[0].shape if args else None),
                                     with_kwargs=True)
    return calls


def test_prompt_cache_encodes_a_repeated_prompt_once_and_renders_the_same_pixels(tiny_model_dir):
    loaded = load(tiny_model_dir, prompt_cache_size=8)
    cache = loaded.pipe._batchrender_prompt_cache
    calls = count_calls(loaded.pipe.text_encoder)
    first = draw(loaded)  # two images of one job: the same (prompt, negative) twice in one call
    assert len(calls) == 2, "the prompt and the negative prompt, each encoded once at batch 1"
    assert all(shape[0] == 1 for shape in calls)
    again = draw(loaded)
    assert len(calls) == 2, "a repeated prompt is not encoded again"
    assert same(first, again) and (cache.hits, cache.misses) == (3, 1)


def test_prompt_cache_keeps_the_pixels_of_a_prompt_whatever_shares_its_call(tiny_model_dir):
    from worker.render import RenderItem

    loaded = load(tiny_model_dir, prompt_cache_size=8)
    alone = draw(loaded, [RenderItem("a lighthouse", None, (5,)), RenderItem("a lighthouse", None, (6,))])
    mixed = draw(loaded, [RenderItem("a lighthouse", None, (5,)), RenderItem("a teapot", "dark", (9,))])
    assert np.array_equal(alone[0], mixed[0])


def test_prompt_cache_is_least_recently_used_and_bounded(tiny_model_dir):
    from worker.render import RenderItem

    loaded = load(tiny_model_dir, prompt_cache_size=2)
    cache = loaded.pipe._batchrender_prompt_cache
    for prompt in ("one", "two", "three"):
        draw(loaded, [RenderItem(prompt, None, (1,))], rows=1)
    assert len(cache) == 2 and ("one", "", 1) not in cache._items and ("three", "", 1) in cache._items


def test_prompt_cache_serves_long_prompts_through_the_chunked_encoder(tiny_model_dir, monkeypatch):
    from worker.render import RenderItem

    loaded = load(tiny_model_dir, prompt_cache_size=8)
    kwargs = []
    real = type(loaded.pipe).__call__
    monkeypatch.setattr(type(loaded.pipe), "__call__", lambda self, *a, **kw: kwargs.append(kw) or real(self, *a, **kw))
    calls = count_calls(loaded.pipe.text_encoder)
    long = " ".join(["ab"] * 70)  # 139 tokens: two CLIP windows
    a = draw(loaded, [RenderItem(long, "blurry", (1, 2))])
    b = draw(loaded, [RenderItem(long, "blurry", (1, 2))])
    assert kwargs[0]["prompt_embeds"].shape == kwargs[0]["negative_prompt_embeds"].shape == (2, 154, 32)
    assert "prompt" not in kwargs[0]
    assert [shape[0] for shape in calls] == [2, 2], "one text per encoder call, its two windows as rows"
    assert same(a, b)


def test_prompt_cache_on_sdxl_keeps_both_encoders_and_the_pooled_embeddings(sdxl_dir, monkeypatch):
    loaded = load(sdxl_dir, "sdxl", prompt_cache_size=8)
    kwargs = []
    real = type(loaded.pipe).__call__
    monkeypatch.setattr(type(loaded.pipe), "__call__", lambda self, *a, **kw: kwargs.append(kw) or real(self, *a, **kw))
    first = count_calls(loaded.pipe.text_encoder)
    second = count_calls(loaded.pipe.text_encoder_2)
    a, b = draw(loaded), draw(loaded)
    assert len(first) == len(second) == 2 and same(a, b)
    kw = kwargs[0]
    assert kw["prompt_embeds"].shape == kw["negative_prompt_embeds"].shape == (2, 77, 64)
    assert kw["pooled_prompt_embeds"].shape == kw["negative_pooled_prompt_embeds"].shape == (2, 32)


def test_compile_reaches_the_transformer_of_flux_with_the_same_pixels(tmp_path_factory, dynamo):
    from torch._dynamo.eval_frame import OptimizedModule

    from worker.render import RenderItem
    from worker.tiny_families import build_tiny_family

    path = build_tiny_family("flux", tmp_path_factory.mktemp("models") / "tiny-flux")
    item = [RenderItem("a sign reading OPEN", None, (3,))]
    plain = draw(load(path, "flux"), item, rows=1)
    loaded = load(path, "flux", compile_unet=True, compile_backend="eager", capacity=1)
    assert isinstance(loaded.pipe.transformer, OptimizedModule) and not hasattr(loaded.pipe, "unet")
    assert same(draw(loaded, item, rows=1), plain)


def test_a_forced_kernel_leaves_math_as_the_fallback_for_attention_it_cannot_run(tiny_model_dir):
    """torch's kernel switches are process-wide: during a call with flash forced, attention that
    flash cannot run (the VAE's 512-wide head, moderation classifiers in other threads) falls back
    to math rather than failing."""
    import torch
    import torch.nn.functional as F

    loaded = load(tiny_model_dir, sdpa_backend="flash")
    flags = []
    hook = loaded.pipe.unet.register_forward_pre_hook(lambda mod, args: flags.append(
        (torch._C._get_flash_sdp_enabled(), torch._C._get_math_sdp_enabled(), torch._C._get_mem_efficient_sdp_enabled())))
    assert len(draw(loaded)) == 2
    hook.remove()
    assert flags and set(flags) == {(True, True, False)}, "flash first, math as the fallback, nothing else"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from worker.models import sdpa_context

    # A kernel that cannot run some attention: "efficient" has no CPU kernel at all here. Alone it
    # fails; as a forced backend, the attention runs on math.
    q = torch.randn(1, 1, 8, 64)
    with pytest.raises(RuntimeError), sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        F.scaled_dot_product_attention(q, q, q)
    loaded.pipe._batchrender_sdpa_backend = "efficient"
    with sdpa_context(loaded.pipe), torch.inference_mode():
        assert F.scaled_dot_product_attention(q, q, q).shape == q.shape
