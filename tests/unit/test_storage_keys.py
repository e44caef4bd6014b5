"""Object keys from the template never escape their prefix."""
from __future__ import annotations

import pytest

from jobs.errors import ConfigurationError, UnsafeKey
from storage.keys import build_key, check_key, quarantine_key

TEMPLATE = "{batch_id}/{job_id}/{index}.{ext}"


def test_default_template_renders_relative_key():
    assert build_key(TEMPLATE, batch_id="b-1", job_id="j_2", index=0, ext="png") == "b-1/j_2/0.png"


@pytest.mark.parametrize("bad", ["../etc", "..", ".", "a/b", "/abs", "a\x00b", "tab\tx", "", "ü", "a b", "x" * 129])
def test_unsafe_custom_id_is_refused_naming_the_field(bad):
    with pytest.raises(UnsafeKey) as e:
        build_key("{custom_id}.{ext}", custom_id=bad, ext="png")
    assert "custom_id" in str(e.value) and "[A-Za-z0-9._-]" in str(e.value)
    assert e.value.errors[0]["field"] == "custom_id"


def test_unknown_template_field_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="unsupported field {prompt}"):
        build_key("{prompt}/{index}.{ext}", prompt="x", index=0, ext="png")


def test_template_making_absolute_or_empty_segments_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        build_key("/{job_id}.{ext}", job_id="j", ext="png")
    with pytest.raises(ConfigurationError):
        build_key("{job_id}//{ext}", job_id="j", ext="png")


def test_missing_value_for_template_field_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="job_id"):
        build_key(TEMPLATE, batch_id="b", index=0, ext="png")


@pytest.mark.parametrize("key", ["../x", "a/../b", "/a", "a//b", "a\\b", "a/./b", ""])
def test_finished_keys_with_traversal_are_refused(key):
    with pytest.raises(UnsafeKey):
        check_key(key)


def test_quarantine_key_is_under_the_private_prefix():
    assert quarantine_key("_quarantine", "b/j/0.png") == "_quarantine/b/j/0.png"
