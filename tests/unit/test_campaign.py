"""The campaign document (jobs/campaign.py): sandboxed templates, sweeps, cells and content keys."""
from __future__ import annotations

import pytest

from jobs.campaign import CampaignSpec, check_slots, content_key, expand_row, fill, slots
from jobs.errors import InvalidRequest
from jobs.registry import ModelSpec
from jobs.schemas import RenderRequest, resolve
from jobs.settings import Settings

TINY = ModelSpec(name="tiny", source="/models/tiny", default_steps=4, default_guidance=5.0, base_size=64, tiny=True)


def spec(**over) -> CampaignSpec:
    doc = {"name": "spring", "catalog": {"rows": [{"sku": "a"}], "key": "sku"},
           "template": {"prompt": "a {colour} mug, {style}", "fields": {"model": "tiny"}},
           "sweeps": {"axes": {"style": ["studio", "watercolour"]}}}
    doc.update(over)
    return CampaignSpec.parse(doc)


@pytest.mark.parametrize("text", ["{a.__class__}", "{a[0]}", "{a!r}", "{a:>10}", "{__import__('os')}", "{}"])
def test_a_slot_that_is_not_a_plain_name_is_refused_by_name(text):
    with pytest.raises(InvalidRequest) as e:
        slots(text, "template.prompt")
    assert "template.prompt" in e.value.message and "plain column name" in e.value.message


def test_fill_substitutes_text_only_and_keeps_doubled_braces():
    assert fill("{a} {{b}} {a}", {"a": "{x.__class__}"}) == "{x.__class__} {b} {x.__class__}"
    assert slots("{{literal}} {name}", "p") == ["name"]


def test_an_unknown_slot_names_it_and_the_columns():
    with pytest.raises(InvalidRequest) as e:
        check_slots(spec(), ["sku", "color"])
    assert "unknown slot {colour}" in e.value.message and "color" in e.value.message


def test_a_sweep_axis_that_shadows_a_column_is_refused():
    with pytest.raises(InvalidRequest, match="also a catalog column|column 'style' too"):
        check_slots(spec(), ["sku", "colour", "style"])


def test_cartesian_and_zip_sweeps():
    s = spec(sweeps={"axes": {"style": ["x", "y"], "seed": [1, 2, 3]}})
    assert s.cells_per_row == 6
    z = spec(sweeps={"mode": "zip", "axes": {"style": ["x", "y"], "seed": [1, 2]}})
    cells = list(expand_row(z, 1, {"sku": "a", "colour": "red"}, "sku"))
    assert [(c.request["prompt"], c.request["seed"]) for c in cells] == [("a red mug, x", 1), ("a red mug, y", 2)]
    with pytest.raises(InvalidRequest, match="equal lengths"):
        spec(sweeps={"mode": "zip", "axes": {"style": ["x", "y"], "seed": [1]}})


def test_fields_from_columns_are_converted_and_errors_name_row_and_column():
    s = spec(template={"prompt": "{colour}", "fields": {"seed": "{seed}", "palette": "{pal}", "custom_id": "{sku}-x"}},
             sweeps=None)
    (cell,) = expand_row(s, 3, {"sku": "a", "colour": "red", "seed": "42", "pal": "#FF0000, #00FF00"}, "sku")
    assert cell.request["seed"] == 42 and cell.request["palette"] == ["#FF0000", "#00FF00"]
    assert cell.request["custom_id"] == "a-x" and cell.request["metadata"]["row"] == 3
    with pytest.raises(InvalidRequest) as e:
        list(expand_row(s, 7, {"sku": "a", "colour": "red", "seed": "forty", "pal": ""}, "sku"))
    assert e.value.errors[0] == {"row": 7, "column": "seed", "field": "seed", "message": "'forty' is not a whole number"}


def test_every_cell_has_an_explicit_seed_stable_across_applies():
    s = spec()
    first = [c.request["seed"] for c in expand_row(s, 1, {"sku": "a", "colour": "red"}, "sku")]
    again = [c.request["seed"] for c in expand_row(s, 9, {"sku": "a", "colour": "blue"}, "sku")]
    assert first == again and first[0] != first[1]


def test_template_fields_cannot_set_campaign_fields_or_unknown_ones():
    for bad in ({"webhook": "http://x"}, {"renditions": []}, {"colour": "red"}):
        with pytest.raises(InvalidRequest):
            spec(template={"prompt": "x", "fields": bad})


@pytest.mark.parametrize("budget", [{"max_cost": "ten"}, {"max_gpu_seconds": True}, {"max_cost": -1}])
def test_a_budget_that_is_not_a_positive_number_is_refused(budget):
    with pytest.raises(InvalidRequest) as e:
        spec(budget=budget)
    assert e.value.errors[0]["field"].startswith("budget.")


def test_content_key_changes_with_pixels_and_seed_but_not_with_custom_id_or_metadata():
    settings = Settings()

    def key(**over):
        req = RenderRequest.parse({"prompt": "a mug", "seed": 5, "custom_id": "x", **over})
        return content_key(resolve(req, TINY, settings), TINY)

    base = key()
    assert key(custom_id="y", metadata={"a": 1}) == base
    assert key(seed=6) != base
    assert key(steps=3) != base
    assert key(renditions=[{"name": "sq", "width": 64, "height": 64}]) != base
    moved = TINY.model_copy(update={"source": "/models/tiny-v2"})
    req = resolve(RenderRequest.parse({"prompt": "a mug", "seed": 5}), TINY, settings)
    assert content_key(req, moved) != content_key(req, TINY)


def test_content_key_is_the_hash_of_one_canonical_document_however_the_model_is_given():
    """Keys already stored (``cache:{tenant}:{key}``) must keep matching: the key is the SHA-256 of
    ``{"v":1,"model":...,"request":...}`` with sorted keys and no spaces, whether the model comes as
    the registry entry, its JSON form or ``canonical_spec`` (what a plan passes, once per model)."""
    import hashlib
    import json

    from jobs.campaign import _NOT_PIXELS, canonical_spec

    req = resolve(RenderRequest.parse({"prompt": "une tasse émaillée, 東京", "seed": 5,
                                       "renditions": [{"name": "sq", "width": 64, "height": 64}]}), TINY, Settings())
    body = req.model_dump(mode="json", exclude=_NOT_PIXELS)
    whole = json.dumps({"v": 1, "model": TINY.model_dump(mode="json"), "request": body}, sort_keys=True,
                       separators=(",", ":"))
    expected = hashlib.sha256(whole.encode()).hexdigest()
    assert content_key(req, TINY) == expected
    assert content_key(req, TINY.model_dump(mode="json")) == expected
    assert content_key(req, canonical_spec(TINY)) == expected


def test_document_version_and_unknown_fields_are_named():
    with pytest.raises(InvalidRequest, match="version 2"):
        spec(v=2)
    with pytest.raises(InvalidRequest) as e:
        CampaignSpec.parse({"name": "x", "catalog": {"rows": []}, "template": {"prompt": "x"}, "colour": 1})
    assert e.value.errors[0]["field"] == "colour"


def test_a_custom_id_pattern_filled_with_spaces_becomes_a_valid_custom_id():
    s = spec(template={"prompt": "{colour}", "fields": {"custom_id": "{sku}-{style}"}})
    ids = [c.request["custom_id"] for c in expand_row(s, 1, {"sku": "mug 01/a", "colour": "red"}, "sku")]
    assert ids == ["mug_01_a-studio", "mug_01_a-watercolour"]
    for cid in ids:
        RenderRequest.parse({"prompt": "x", "custom_id": cid})


def test_without_a_key_column_a_row_keeps_its_seed_when_rows_before_it_go():
    s = spec(catalog={"rows": [{"a": 1}]})
    rows = [{"colour": "red"}, {"colour": "blue"}]
    before = [c.request["seed"] for c in expand_row(s, 2, rows[1], None)]
    after = [c.request["seed"] for c in expand_row(s, 1, rows[1], None)]
    assert before == after


def test_a_jsonl_row_without_a_prompt_column_is_named():
    with pytest.raises(InvalidRequest) as e:
        list(expand_row(spec(), 4, {"sku": "a"}, "sku"))
    assert "row 4 has no column 'colour'" in e.value.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_budget_that_is_not_finite_is_refused(bad):
    with pytest.raises(InvalidRequest):
        spec(budget={"max_cost": bad})
