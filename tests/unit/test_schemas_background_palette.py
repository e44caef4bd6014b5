"""RenderRequest's background and palette fields: normalising, deciding ``auto``, the budget."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from jobs.errors import InvalidRequest
from jobs.schemas import Background, RenderRequest, resolve

SPEC = SimpleNamespace(name="tiny", base_size=64, default_steps=4, default_guidance=5.0, family="sd15")
SETTINGS = SimpleNamespace(max_side=2048, max_pixels=2048 * 2048, max_steps=150, max_images=8,
                           max_prompt_chars=2000, max_job_cost=64 * 64 * 4 * 4)


def test_palette_is_normalised_to_upper_case_six_digits_without_repeats():
    r = RenderRequest.parse({"prompt": "x", "palette": ["#abc", " #1a73e8", "#AABBCC"]})
    assert r.palette == ["#AABBCC", "#1A73E8"] and r.requested_palette == ["#AABBCC", "#1A73E8"]


def test_without_a_palette_the_prompts_hex_codes_are_the_palette():
    r = RenderRequest.parse({"prompt": "a #1a73e8 mug on #FFFFFF, issue #123, #1A73E8 again"})
    assert r.requested_palette == ["#1A73E8", "#FFFFFF"]
    assert RenderRequest.parse({"prompt": "a mug"}).requested_palette == []


@pytest.mark.parametrize("prompt, fmt, transparent", [
    ("a mug on a transparent background", "png", True),
    ("a sticker of a fox, cutout", "webp", True),
    ("a mug, no background", "png", True),
    ("a mug on a transparent background", "jpeg", False),  # auto never asks JPEG for alpha
    ("a mug on a wooden table", "png", False),
])
def test_auto_background_is_decided_at_submission(prompt, fmt, transparent):
    r = resolve(RenderRequest.parse({"prompt": prompt, "output_format": fmt}), SPEC, SETTINGS)
    assert r.background is (Background.TRANSPARENT if transparent else Background.OPAQUE)
    assert r.transparent is transparent


def test_explicit_background_wins_over_the_prompt():
    r = resolve(RenderRequest.parse({"prompt": "a mug on a transparent background", "background": "opaque"}),
                SPEC, SETTINGS)
    assert r.background is Background.OPAQUE and not r.transparent


def test_transparent_jpeg_names_both_fields():
    with pytest.raises(InvalidRequest) as e:
        RenderRequest.parse({"prompt": "x", "background": "transparent", "output_format": "jpeg"})
    (error,) = e.value.errors
    assert error["field"] == "background" and "output_format" in error["message"] and "'jpeg'" in error["message"]


def test_strict_palette_tries_count_in_the_cost_budget():
    base = {"prompt": "x #000000", "width": 64, "height": 64, "steps": 4, "palette_strict": True}
    assert resolve(RenderRequest.parse({**base, "palette_tries": 4}), SPEC, SETTINGS).renders_per_image == 4
    with pytest.raises(InvalidRequest, match="palette_tries 5"):
        resolve(RenderRequest.parse({**base, "palette_tries": 5}), SPEC, SETTINGS)
    # Without palette_strict the tries are not rendered, so they cost nothing.
    assert resolve(RenderRequest.parse({**base, "palette_strict": False, "palette_tries": 8}),
                   SPEC, SETTINGS).renders_per_image == 1
