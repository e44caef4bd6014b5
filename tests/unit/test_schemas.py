import pytest

from jobs.errors import InvalidRequest, UnknownModel
from jobs.registry import Registry
from jobs.schemas import JobMessage, RenderRequest, resolve, size_for_ratio
from jobs.settings import Settings


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path)


def fields_of(exc: InvalidRequest) -> dict[str, str]:
    return {e["field"]: e["message"] for e in exc.errors}


@pytest.mark.parametrize("body, field, words", [
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": "   "}, "prompt", "empty"),
    ({"prompt": "x" * 2001}, "prompt", "2000"),
    ({"prompt": "a", "width": 65, "height": 64}, "width", "multiple of 8"),
    ({"prompt": "a", "steps": 0}, "steps", "greater than or equal to 1"),
    ({"prompt": "a", "output_format": "gif"}, "output_format", "'png', 'jpeg' or 'webp'"),
    ({"prompt": "a", "aspect_ratio": "7:3"}, "aspect_ratio", "allowed: 1:1, 16:9"),
    ({"prompt": "a", "custom_id": "../etc"}, "custom_id", "letters, digits"),
    ({"prompt": "a", "colour": "red"}, "colour", "allowed fields"),
    ({"prompt": "a", "num_images": 0}, "num_images", "greater than or equal to 1"),
    ({"prompt": "a", "quality": 101}, "quality", "less than or equal to 100"),
    ({"prompt": "a", "width": 64}, "request", "both width and height"),
])
def test_bad_request_names_the_field_and_what_is_allowed(body, field, words):
    with pytest.raises(InvalidRequest) as e:
        RenderRequest.parse(body)
    assert words in fields_of(e.value)[field], fields_of(e.value)


def test_too_many_pixels_and_steps_are_refused_against_deployment_limits(settings):
    spec = Registry(settings).get("tiny")
    req = RenderRequest.parse({"prompt": "a", "width": 2048, "height": 4096, "steps": 151})
    with pytest.raises(InvalidRequest) as e:
        resolve(req, spec, settings)
    f = fields_of(e.value)
    assert "pixels exceeds the limit" in f["width"]
    assert "allowed 1–150" in f["steps"]


def test_unknown_model_lists_the_registered_ones(settings):
    with pytest.raises(UnknownModel, match="registered models: tiny"):
        Registry(settings).get("sdxl-nope")


def test_aspect_ratios_map_to_model_sized_grids():
    assert size_for_ratio("1:1", 512) == (512, 512)
    assert size_for_ratio("16:9", 1024) == (1344, 768)
    assert size_for_ratio("9:16", 1024) == (768, 1344)
    w, h = size_for_ratio("4:5", 64)
    assert w % 8 == 0 and h % 8 == 0 and w < h


def test_resolve_fills_model_defaults_and_draws_a_recorded_seed(settings):
    spec = Registry(settings).get("tiny")
    r = resolve(RenderRequest.parse({"prompt": "a cat", "aspect_ratio": "16:9"}), spec, settings)
    assert (r.steps, r.guidance_scale) == (spec.default_steps, spec.default_guidance)
    assert r.seed is not None and r.width and r.height and r.aspect_ratio is None
    msg = JobMessage(job_id="job_1", request=r.model_copy(update={"num_images": 3}))
    assert msg.seeds == [r.seed, r.seed + 1, r.seed + 2]


def test_message_round_trips_as_versioned_json_and_refuses_other_versions(settings):
    spec = Registry(settings).get("tiny")
    msg = JobMessage(job_id="job_1", request=resolve(RenderRequest.parse({"prompt": "a"}), spec, settings))
    wire = msg.model_dump(mode="json")
    assert wire["v"] == 1 and JobMessage.model_validate(wire) == msg
    with pytest.raises(ValueError, match="schema version 2"):
        JobMessage.model_validate({**wire, "v": 2})


def test_strength_without_a_reference_image_is_refused(settings):
    spec = Registry(settings).get("tiny")
    with pytest.raises(InvalidRequest) as e:
        resolve(RenderRequest.parse({"prompt": "a", "strength": 0.5}), spec, settings)
    assert "give an image too" in fields_of(e.value)["strength"]
    with pytest.raises(InvalidRequest, match="data:image"):
        RenderRequest.parse({"prompt": "a", "image": "file:///etc/passwd"})


def test_reference_image_gets_a_default_strength(settings):
    spec = Registry(settings).get("tiny")
    r = resolve(RenderRequest.parse({"prompt": "a", "image": "data:image/png;base64,AAAA"}), spec, settings)
    assert r.strength == 0.75
    assert resolve(RenderRequest.parse({"prompt": "a"}), spec, settings).strength is None


def test_lone_surrogate_in_a_prompt_is_refused_naming_the_field_and_position():
    import pytest
    from pydantic import ValidationError

    from jobs.schemas import RenderRequest

    with pytest.raises(ValidationError, match="prompt contains a lone surrogate U\\+D800 at character 2"):
        RenderRequest(prompt="a \ud800 b")
    # pydantic itself refuses it there (a length-limited field): still a named 422, never a 500
    with pytest.raises(ValidationError, match="negative_prompt\n.*(?:surrogate|unicode string)"):
        RenderRequest(prompt="ok", negative_prompt="\udfff")
    assert RenderRequest(prompt="\u202eright to left\u202c 灯台").prompt
