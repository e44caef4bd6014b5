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
    with pytest.raises(InvalidRequest, match="does no image-to-image"):
        client.submit({"prompt": "x", "model": "tiny-flux", "image": "data:image/png;base64,AAAA"})
    with pytest.raises(InvalidRequest, match="multiple of 16"):
        client.submit({"prompt": "x", "model": "tiny-flux", "width": 72, "height": 64})
