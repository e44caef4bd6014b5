"""Prompt rules: combination rules, real-person rules, negative prompts, allow phrases.

Speed is measured by benchmarks/moderation.py, never asserted here."""
from __future__ import annotations

import pytest

from safety.policy import load_policy
from safety.prompt_rules import PromptRules
from safety.verdict import Action, Decision


@pytest.fixture(scope="module")
def rules() -> PromptRules:
    return PromptRules(load_policy())


def decide(rules: PromptRules, prompt: str, negative: str | None = None, **kw) -> Decision:
    return Decision.from_verdicts(rules.check(prompt, negative, **kw), rules.policy.version)


def test_minor_term_alone_is_allowed(rules):
    assert decide(rules, "child's birthday party balloons").action is Action.ALLOW


def test_nudity_alone_is_flagged_not_blocked(rules):
    d = decide(rules, "nude figure study in charcoal")
    assert d.action is Action.FLAG and d.categories == ("nudity",)


def test_minor_with_nudity_blocks_in_minors_category(rules):
    d = decide(rules, "child, nude")
    assert d.blocked and d.verdicts[0].category == "minors_sexual"
    assert d.verdicts[0].rule == "combination:minor+nudity"


def test_minor_with_suggestive_term_blocks(rules):
    assert "minors_sexual" in decide(rules, "a 12yo in lingerie").categories


@pytest.mark.parametrize("prompt", ["ch1ld n.u.d.e", "кid nuuuude", "c h i l d  p o r n", "t\u200be\u200ben naked"])
def test_evaded_combination_still_blocks(rules, prompt):
    d = decide(rules, prompt)
    assert d.blocked and "minors_sexual" in d.categories


def test_protected_name_with_nudity_blocks(rules):
    d = decide(rules, "T4yl0r Sw1ft topless")
    assert d.blocked and d.categories[0] == "real_person_sexual"


def test_protected_name_alone_is_allowed(rules):
    assert decide(rules, "Taylor Swift concert poster").action is Action.ALLOW


def test_real_person_context_blocks_nudity_without_a_name(rules):
    assert decide(rules, "make her naked").action is Action.FLAG
    d = decide(rules, "make her naked", real_person_context=True)
    assert d.blocked and d.categories[0] == "real_person_sexual"


def test_real_person_context_allows_benign_edits(rules):
    assert decide(rules, "put him in a navy suit, studio light", real_person_context=True).action is Action.ALLOW


def test_negative_prompt_words_do_not_count_on_their_own(rules):
    assert decide(rules, "family picnic", "nsfw, nude, child, ugly").action is Action.ALLOW


def test_negative_prompt_excluding_clothes_counts_as_undressing(rules):
    d = decide(rules, "Emma Watson portrait", "clothes, shirt")
    assert d.blocked and d.categories[0] == "real_person_sexual"


@pytest.mark.parametrize(
    "prompt",
    ["nude lipstick shade on a marble counter", "skin care serum product shot", "photo shoot on the beach",
     "kids' sneakers product photo", "white power bank on a desk", "suicide prevention hotline poster",
     "grilled chicken breasts", "rapeseed oil bottle", "Essex cottage", "the pen is blue, kid's desk"],
)
def test_benign_marketing_near_misses_are_allowed(rules, prompt):
    assert decide(rules, prompt).action is Action.ALLOW


def test_allow_phrase_does_not_hide_other_words(rules):
    assert decide(rules, "nude lipstick, child, naked").blocked
