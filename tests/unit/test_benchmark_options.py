"""benchmarks/options.py: the ``--options`` syntax of the throughput benchmark and its gain table."""
import pytest

from benchmarks.options import OptionSet, parse_options, summarise, table
from jobs.settings import Settings


def test_each_option_maps_to_its_worker_setting_or_dtype():
    sets = {s.name: s for s in parse_options(
        "default,bf16,channels-last,compile,sdpa=flash,prompt-cache,vae-slicing=always")}
    assert sets["default"] == OptionSet("default")
    assert sets["bf16"].dtype == "bfloat16" and sets["bf16"].env == {}
    assert sets["channels-last"].env == {"BATCHRENDER_CHANNELS_LAST": "true"}
    assert sets["compile"].env == {"BATCHRENDER_COMPILE_UNET": "true", "BATCHRENDER_COMPILE_VAE": "true"}
    assert sets["sdpa=flash"].env == {"BATCHRENDER_SDPA_BACKEND": "flash"}
    assert sets["prompt-cache"].env == {"BATCHRENDER_PROMPT_CACHE_SIZE": "1024"}
    assert sets["vae-slicing=always"].env == {"BATCHRENDER_VAE_SLICING": "always"}


def test_options_combine_with_plus_and_compile_takes_mode_and_backend():
    (_, s), = [(d.name, d) for d in parse_options("bf16+channels-last+compile", "max-autotune", "inductor")
               if d.name != "default"]
    assert s.dtype == "bfloat16"
    assert s.env == {"BATCHRENDER_CHANNELS_LAST": "true", "BATCHRENDER_COMPILE_UNET": "true",
                     "BATCHRENDER_COMPILE_VAE": "true", "BATCHRENDER_COMPILE_MODE": "max-autotune",
                     "BATCHRENDER_COMPILE_BACKEND": "inductor"}


def test_default_is_measured_first_even_when_not_named():
    assert [s.name for s in parse_options("bf16,prompt-cache=64")] == ["default", "bf16", "prompt-cache=64"]
    assert [s.name for s in parse_options("bf16,default")] == ["default", "bf16"]


@pytest.mark.parametrize("spec, says", [
    ("fp8", "unknown option 'fp8'"), ("vae-slicing=sometimes", "unknown option"), ("sdpa", "unknown option"),
    ("bf16,,compile", "empty set"), ("bf16,bf16", "twice"), ("bf16+fp16", "twice"),
    ("prompt-cache=0", "positive"), ("default+bf16", "cannot be combined"),
])
def test_a_bad_option_is_refused_naming_it(spec, says):
    with pytest.raises(ValueError, match=says):
        parse_options(spec)


def test_missing_names_the_variables_this_checkout_does_not_define():
    s = OptionSet("x", {"BATCHRENDER_CHANNELS_LAST": "true", "BATCHRENDER_NO_SUCH_KNOB": "1"})
    assert s.missing(Settings.model_fields) == ["BATCHRENDER_NO_SUCH_KNOB"]


def test_gains_are_against_default_and_the_best_set_against_bare_b():
    results = {"default": {"c": 4.0, "idle": 0.1, "calls": 4, "rows_rendered": 128, "images_delivered": 128},
               "bf16": {"c": 5.0, "idle": 0.05, "calls": 4, "rows_rendered": 128, "images_delivered": 128},
               "sdpa=flash": {"skipped": "BATCHRENDER_SDPA_BACKEND not in this checkout's jobs/settings.py"}}
    best, over_b = summarise(results, b=4.0)
    assert (best, over_b, results["bf16"]["gain"], results["default"]["gain"]) == ("bf16", 1.25, 1.25, 1.0)
    text = table(results, best, "batch 32", 4.0)
    assert "1.25x" in text and "not measured: BATCHRENDER_SDPA_BACKEND" in text and "= 1.25" in text
