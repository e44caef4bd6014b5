"""Policy loading: the default loads; every invalid file fails at load time naming the line."""
from __future__ import annotations

from pathlib import Path

import pytest

from jobs.errors import ConfigurationError
from safety.policy import load_policy, parse_policy
from safety.verdict import Action

MINIMAL = """\
version: "t1"
term_sets:
  minor: {terms: [child]}
  nudity: {terms: [nude]}
categories:
  minors_sexual:
    description: minors
    severity: 10
    action: block
    combinations: [[minor, nudity]]
"""


def line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def test_default_policy_loads_and_covers_required_categories():
    p = load_policy()
    ids = {c.id for c in p.categories}
    assert {"minors_sexual", "real_person_sexual", "graphic_violence", "hate_symbols", "self_harm"} <= ids
    assert p.category("minors_sexual").action is Action.BLOCK
    assert p.version and "Taylor Swift" in p.protected_names


@pytest.mark.parametrize(
    ("edit", "needle", "reason"),
    [
        (("action: block", "action: ban"), "action: ban", "action must be 'block' or 'flag'"),
        (("severity: 10", "severity: high"), "severity: high", "severity must be int"),
        (("[[minor, nudity]]", "[[minor, nudes]]"), "[[minor, nudes]]", "unknown signal 'nudes'"),
        (("  nudity: {terms: [nude]}", "  nudity: {terms: [nude], patterns: ['(unclosed']}"), "(unclosed",
         "invalid regular expression"),
        (("    severity: 10\n", "    severity: 10\n    colour: red\n"), "colour: red", "unknown key 'colour'"),
        (("  nudity: {terms: [nude]}", "  nudity: {terms: [nude]}\n  minor: {terms: [kid]}"), "minor: {terms: [kid]}",
         "duplicate key 'minor'"),
    ],
)
def test_invalid_policy_reports_line_and_reason(edit, needle, reason):
    text = MINIMAL.replace(*edit)
    assert text != MINIMAL
    with pytest.raises(ConfigurationError) as exc:
        parse_policy(text, source="p.yaml")
    assert reason in str(exc.value)
    assert f"p.yaml:{line_of(text, needle)}:" in str(exc.value)


def test_yaml_syntax_error_reports_line():
    text = MINIMAL.replace("    severity: 10", "    severity: [10")
    with pytest.raises(ConfigurationError, match=r"p\.yaml:\d+: invalid YAML") as exc:
        parse_policy(text, source="p.yaml")
    assert exc.value.details["line"] >= line_of(text, "severity: [10")


def test_threshold_outside_unit_interval_is_refused():
    text = MINIMAL + "    thresholds: {text_classifier: 1.5}\n"
    with pytest.raises(ConfigurationError, match=rf"p.yaml:{line_of(text, 'thresholds')}: threshold .* between 0 and 1"):
        parse_policy(text, source="p.yaml")


def test_minors_category_cannot_be_relaxed_to_flag():
    with pytest.raises(ConfigurationError, match="minors_sexual.*never relaxed"):
        parse_policy(MINIMAL.replace("action: block", "action: flag"))


def test_protected_names_file_extends_the_list(tmp_path: Path):
    (tmp_path / "names.txt").write_text("# staff\nJane Exampleperson\n\n", encoding="utf-8")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(MINIMAL + "protected_names: [Ann Other]\nprotected_names_file: names.txt\n", encoding="utf-8")
    assert load_policy(policy_file).protected_names == ("Ann Other", "Jane Exampleperson")


def test_missing_protected_names_file_fails_at_load(tmp_path: Path):
    policy_file = tmp_path / "policy.yaml"
    text = MINIMAL + "protected_names_file: nope.txt\n"
    policy_file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=f"policy.yaml:{line_of(text, 'nope.txt')}: cannot read protected_names_file"):
        load_policy(policy_file)


def test_default_policy_has_terms_in_every_required_language():
    p = load_policy()
    assert {"en", "ja", "ko", "zh-hans", "zh-hant", "es", "fr", "de", "pt", "it", "ru"} <= set(p.languages)


def test_terms_by_language_and_name_aliases_are_flattened():
    text = MINIMAL.replace("minor: {terms: [child]}", "minor: {terms: {en: [child], ja: [子供]}}") + """\
protected_names:
  - {name: Jane Doe, aliases: [ジェーン・ドウ]}
  - Plain Name
exceptions:
  ja: [子供服]
"""
    p = parse_policy(text)
    assert p.term_sets["minor"].terms == ("child", "子供")
    assert p.protected_names == ("Jane Doe", "ジェーン・ドウ", "Plain Name")
    assert p.exceptions == ("子供服",) and p.languages == ("en", "ja")


@pytest.mark.parametrize(("edit", "reason"), [
    ("minor: {terms: {english: [child]}}", "'english' in terms of 'minor' is not a language code"),
    ("minor: {terms: {en: child}}", "terms of 'minor'.en must be a list"),
])
def test_bad_language_mapping_names_the_line(edit, reason):
    text = MINIMAL.replace("minor: {terms: [child]}", edit)
    with pytest.raises(ConfigurationError) as e:
        parse_policy(text, source="p.yaml")
    assert reason in str(e.value) and "p.yaml:3:" in str(e.value)


def test_protected_name_entry_with_unknown_key_is_refused():
    text = MINIMAL + "protected_names:\n  - {name: Jane Doe, alias: [x]}\n"
    with pytest.raises(ConfigurationError, match="unknown key 'alias'"):
        parse_policy(text, source="p.yaml")


def test_libyaml_and_the_pure_python_parser_read_the_shipped_policy_alike(monkeypatch):
    """parse_policy composes with PyYAML's libyaml loader where PyYAML has it (ten times faster,
    paid by every process that moderates); the policy it reads is the pure-Python parser's."""
    import yaml

    import safety.policy as policy_mod
    from safety.policy import DEFAULT_POLICY, policy_fingerprint

    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("this PyYAML was built without libyaml")  # then both are the pure-Python loader
    assert policy_mod._FAST_LOADER is yaml.CSafeLoader
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    fast = parse_policy(text, source=str(DEFAULT_POLICY), base_dir=DEFAULT_POLICY.parent)
    monkeypatch.setattr(policy_mod, "_FAST_LOADER", yaml.SafeLoader)
    slow = parse_policy(text, source=str(DEFAULT_POLICY), base_dir=DEFAULT_POLICY.parent)
    assert fast == slow and policy_fingerprint(fast) == policy_fingerprint(slow)
    # a complaint still cites the line: the nodes libyaml builds carry their marks too
    bad = MINIMAL.replace("    severity: 10", "    severity: ten")
    monkeypatch.setattr(policy_mod, "_FAST_LOADER", yaml.CSafeLoader)
    with pytest.raises(ConfigurationError) as exc:
        parse_policy(bad, source="p.yaml")
    assert f"p.yaml:{line_of(bad, 'severity: ten')}:" in str(exc.value)
