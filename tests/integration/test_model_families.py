"""Tiny SDXL, SD3 and FLUX pipelines, registered with ``batchrender models add``, render through a
real celery worker (random weights built offline: worker/tiny_families.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.status import JobStatus
from producer.cli import cli

pytestmark = pytest.mark.timeout(300)
FAMILIES = ("sdxl", "sd3", "flux")


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    from worker.tiny_families import build_tiny_family

    root = tmp_path_factory.mktemp("families")
    return {fam: build_tiny_family(fam, root / fam) for fam in FAMILIES}


def add(env, *args):
    return CliRunner().invoke(cli, ["models", "add", *args], env=env)


def test_models_add_reads_the_family_and_takes_its_defaults(br_env, family_dirs):
    from jobs.registry import Registry
    from jobs.settings import Settings

    for fam, path in family_dirs.items():
        res = add(br_env, f"tiny-{fam}", str(path), "--dtype", "float32")
        assert res.exit_code == 0, res.output
    specs = Registry(Settings.from_env(br_env)).all()
    assert {n: s.family for n, s in specs.items()} == {"tiny": "sd15", "tiny-sdxl": "sdxl", "tiny-sd3": "sd3",
                                                       "tiny-flux": "flux"}
    assert (specs["tiny-flux"].default_guidance, specs["tiny-flux"].base_size) == (3.5, 1024)
    assert (specs["tiny-sdxl"].default_steps, specs["tiny-sdxl"].default_guidance) == (30, 5.0)


def test_models_add_refuses_a_family_that_does_not_match_or_a_misfit_scheduler(br_env, family_dirs):
    wrong = add(br_env, "x", str(family_dirs["flux"]), "--family", "sdxl")
    assert wrong.exit_code == 2 and "--family sdxl does not match" in wrong.output and "FluxPipeline" in wrong.output
    sched = add(br_env, "y", str(family_dirs["sd3"]), "--scheduler", "DDIMScheduler")
    assert sched.exit_code == 2 and "flow-matching scheduler" in sched.output, sched.output


def test_tiny_sdxl_sd3_and_flux_render_through_a_real_worker(client, br_env, start_worker, family_dirs):
    for fam, path in family_dirs.items():
        assert add(br_env, f"tiny-{fam}", str(path), "--dtype", "float32", "--steps", "2",
                   "--base-size", "64").exit_code == 0
    start_worker(br_env, queues="render.tiny-sdxl,render.tiny-sd3,render.tiny-flux,webhooks")
    jobs = {
        "sdxl": client.submit({"prompt": "a poster with the word SALE", "model": "tiny-sdxl", "seed": 1,
                               "aspect_ratio": "16:9", "negative_prompt": "blurry"}),
        "sd3": client.submit({"prompt": "a label reading BATCH 42", "model": "tiny-sd3", "seed": 2,
                              "width": 64, "height": 48, "negative_prompt": "blurry"}),
        "flux": client.submit({"prompt": "a sign reading OPEN", "model": "tiny-flux", "seed": 3,
                               "aspect_ratio": "9:16", "num_images": 2}),
    }
    sizes = {"sdxl": (80, 48), "sd3": (64, 48), "flux": (48, 80)}  # SDXL's 1344x768 bucket at 64 px; 16-px grid
    for fam, job in jobs.items():
        rec = client.wait(job, timeout=180)
        assert rec.status is JobStatus.SUCCEEDED, (fam, rec.to_dict())
        assert rec.result.prompt_tokens and rec.result.prompt_tokens > 10
        for img in rec.result.images:
            assert (img.width, img.height) == sizes[fam]
            with Image.open(Path(img.url)) as im:
                assert im.size == sizes[fam]
    again = client.wait(client.submit({"prompt": "a sign reading OPEN", "model": "tiny-flux", "seed": 3,
                                       "aspect_ratio": "9:16"}), timeout=120)
    assert again.result.images[0].pixel_sha256 == client.status(jobs["flux"]).result.images[0].pixel_sha256


def test_unsupported_inputs_are_refused_before_queueing(client, br_env, family_dirs):
    from jobs.errors import InvalidRequest

    assert add(br_env, "tiny-flux", str(family_dirs["flux"])).exit_code == 0
    with pytest.raises(InvalidRequest, match="takes no negative prompt"):
        client.submit({"prompt": "x", "model": "tiny-flux", "negative_prompt": "blurry"})
    with pytest.raises(InvalidRequest, match="multiple of 16"):
        client.submit({"prompt": "x", "model": "tiny-flux", "width": 72, "height": 64})


@pytest.mark.parametrize("fam", FAMILIES)
def test_image_to_image_and_inpainting_follow_the_reference(family_dirs, fam):
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    from worker.render import CallShape, RenderItem, render

    pipe = DiffusionPipeline.from_pretrained(str(family_dirs[fam]), dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    red, blue = Image.new("RGB", (64, 48), (220, 20, 20)), Image.new("RGB", (64, 48), (20, 20, 220))
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (16, 16, 48, 32))
    # 4 steps at strength 0.5 start halfway: with fewer, a flow-matching schedule starts from pure noise.
    for shape in (CallShape(f"tiny-{fam}", 64, 48, 4, 4.0, strength=0.5),
                  CallShape(f"tiny-{fam}", 64, 48, 4, 4.0, strength=0.5, inpaint=True)):
        a, b, a2 = (render(pipe, "cpu", shape, [RenderItem("a label", None, (5,), ref, mask)], rows_per_call=2)[0][0]
                    for ref in (red, blue, red))
        assert a.size == (64, 48)
        assert np.array_equal(np.asarray(a), np.asarray(a2)), "same reference and seed, same pixels"
        assert not np.array_equal(np.asarray(a), np.asarray(b)), "the reference must matter"


def test_flux_inpainting_job_renders_through_a_real_worker(client, br_env, start_worker, family_dirs):
    import base64
    import io

    assert add(br_env, "tiny-flux", str(family_dirs["flux"]), "--dtype", "float32", "--steps", "2",
               "--base-size", "64").exit_code == 0
    start_worker(br_env, queues="render.tiny-flux,webhooks")

    def uri(img):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    job = client.submit({"prompt": "a sign reading OPEN", "model": "tiny-flux", "seed": 4, "width": 64, "height": 64,
                         "image": uri(Image.new("RGB", (64, 64), (30, 160, 60))), "mask": uri(mask),
                         "strength": 0.8})
    rec = client.wait(job, timeout=180)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    assert (rec.result.images[0].width, rec.result.images[0].height) == (64, 64)
