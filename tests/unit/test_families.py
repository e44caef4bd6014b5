"""Model families: per-family buckets, defaults and the inputs each refuses (no I/O, no torch)."""
import pytest

from jobs.errors import InvalidRequest
from jobs.families import FAMILIES, family_of_pipeline, size_for
from jobs.registry import ModelSpec, Registry
from jobs.schemas import ASPECT_RATIOS, RenderRequest, resolve, size_for_ratio
from jobs.settings import Settings


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path)


def spec(family: str, **kw) -> ModelSpec:
    return ModelSpec(name=f"m-{family}", source=f"/models/{family}", family=family, **kw)


def test_unset_defaults_come_from_the_family():
    assert (spec("sdxl").default_steps, spec("sdxl").default_guidance, spec("sdxl").base_size) == (30, 5.0, 1024)
    assert (spec("flux").default_guidance, spec("flux").base_size) == (3.5, 1024)
    assert (spec("sd15").default_steps, spec("sd15").base_size) == (25, 512)
    assert spec("sd3", default_steps=12).default_steps == 12


def test_a_registry_without_family_reads_as_sd15(settings):
    settings.models_file.parent.mkdir(parents=True, exist_ok=True)
    settings.models_file.write_text('{"models": {"old": {"source": "/m", "base_size": 768}}}')
    old = Registry(settings).get("old")
    assert old.family == "sd15" and old.base_size == 768 and old.default_steps == 25


def test_flow_models_refuse_a_non_flow_scheduler():
    with pytest.raises(ValueError, match="flow-matching scheduler"):
        spec("flux", scheduler="DDIMScheduler")
    assert spec("sd3", scheduler="FlowMatchHeunDiscreteScheduler").scheduler


def test_sdxl_aspect_ratios_land_on_its_training_buckets():
    sdxl = FAMILIES["sdxl"]
    assert size_for(ASPECT_RATIOS["1:1"], 1024, sdxl) == (1024, 1024)
    assert size_for(ASPECT_RATIOS["16:9"], 1024, sdxl) == (1344, 768)
    assert size_for(ASPECT_RATIOS["3:2"], 1024, sdxl) == (1216, 832)
    assert size_for(ASPECT_RATIOS["4:5"], 1024, sdxl) == (896, 1152)
    assert size_for(ASPECT_RATIOS["21:9"], 1024, sdxl) == (1536, 640)


@pytest.mark.parametrize("fam", ["sd3", "flux"])
def test_sd3_and_flux_sizes_are_on_their_grid(fam):
    f = FAMILIES[fam]
    for ratio in ASPECT_RATIOS.values():
        w, h = size_for(ratio, 1024, f)
        assert w % 64 == 0 and h % 64 == 0 and 0.8e6 < w * h < 1.3e6
        tw, th = size_for(ratio, 64, f)
        assert tw % 16 == 0 and th % 16 == 0


def test_sd15_sizes_are_unchanged():
    for name, ratio in ASPECT_RATIOS.items():
        for base in (64, 512, 768):
            assert size_for(ratio, base, FAMILIES["sd15"]) == size_for_ratio(name, base)


def test_resolve_uses_the_family_defaults_and_buckets(settings):
    r = resolve(RenderRequest.parse({"prompt": "a poster", "aspect_ratio": "16:9", "model": "m-sdxl"}),
                spec("sdxl"), settings)
    assert (r.width, r.height, r.steps, r.guidance_scale) == (1344, 768, 30, 5.0)


@pytest.mark.parametrize("fam, body, field, words", [
    ("flux", {"negative_prompt": "blurry"}, "negative_prompt", "takes no negative prompt"),
    ("sd3", {"width": 72, "height": 64}, "width", "not a multiple of 16"),
    ("flux", {"width": 64, "height": 40}, "height", "renders multiples of 16"),
])
def test_what_a_family_cannot_take_is_refused_naming_the_field_and_model(settings, fam, body, field, words):
    with pytest.raises(InvalidRequest) as e:
        resolve(RenderRequest.parse({"prompt": "a", **body}), spec(fam), settings)
    found = {x["field"]: x["message"] for x in e.value.errors}
    assert words in found[field] and f"m-{fam}" in found[field], found


def test_a_family_without_image_pipelines_refuses_image_and_mask(settings, monkeypatch):
    import dataclasses

    import jobs.families

    monkeypatch.setitem(jobs.families.FAMILIES, "sd3", dataclasses.replace(FAMILIES["sd3"], tasks=()))
    body = {"prompt": "a", "image": "data:image/png;base64,AAAA", "mask": "data:image/png;base64,AAAA"}
    with pytest.raises(InvalidRequest) as e:
        resolve(RenderRequest.parse(body), spec("sd3"), settings)
    found = {x["field"]: x["message"] for x in e.value.errors}
    assert "model 'm-sd3' (sd3) does no image-to-image; it renders from text only. Families that take image: " \
        "sd15, sdxl, flux" == found["image"]
    assert "does no inpainting" in found["mask"]


def test_every_family_takes_a_reference_image_and_a_mask(settings):
    body = {"prompt": "a", "image": "data:image/png;base64,AAAA", "mask": "data:image/png;base64,AAAA"}
    for fam in FAMILIES:
        assert resolve(RenderRequest.parse(body), spec(fam), settings).strength == 0.75


def test_pipeline_classes_map_to_families():
    assert family_of_pipeline("StableDiffusionXLPipeline") == "sdxl"
    assert family_of_pipeline("FluxPipeline") == "flux"
    assert family_of_pipeline("StableDiffusion3Pipeline") == "sd3"
    assert family_of_pipeline("KandinskyPipeline") is None
