"""One scan for many term sets (safety.prompt_rules.MatcherGroup) gives exactly the answer of
matching each set on its own, and a pattern's required strings (safety.term_regex.required_literals)
are in every text it matches: both are shortcuts a plan of thousands of prompts takes (issue 23),
so any difference from the plain path would change a verdict."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from safety.policy import load_policy
from safety.prompt_rules import MatcherGroup, PromptRules, TermMatcher
from safety.term_regex import required_literals

DATA = Path(__file__).resolve().parents[1] / "data" / "moderation"


@pytest.fixture(scope="module")
def rules() -> PromptRules:
    return PromptRules(load_policy())


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """Every prompt of the moderation sets (eleven languages, evasions included), catalog-like
    prompts with SKUs (leetspeak views), and random recombinations of their words."""
    prompts = []
    for f in sorted(DATA.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
    prompts += [f"a {c} ceramic mug model s{i}x{i:06d}, studio light, product photo"
                for i, c in enumerate(["red", "blue", "oak", "slate"] * 50)]
    rng = random.Random(23)
    words = " ".join(prompts).split()
    prompts += [" ".join(rng.choice(words) for _ in range(rng.randint(2, 12))) for _ in range(3000)]
    return prompts


def test_the_group_answers_what_each_matcher_answers(rules, corpus):
    differ = []
    hits = 0
    for prompt in corpus:
        text, tokens = rules._prepare(prompt)
        one_by_one = {name for name, m in rules._sets.items() if m.matches(text, tokens)}
        cats = {c.id for c, m in rules._cats if m and m.matches(text, tokens)}
        if rules._set_group.matching(text, tokens) != one_by_one or rules._cat_group.matching(text, tokens) != cats:
            differ.append(prompt)
        hits += bool(one_by_one or cats)
    assert not differ, differ[:5]
    assert hits > 500  # the corpus exercises the matchers, not just benign text


def test_the_group_finds_phrases_that_overlap_and_patterns(rules):
    group = MatcherGroup([("a", TermMatcher(["red panda"])), ("b", TermMatcher(["panda bear"])),
                          ("c", TermMatcher(["panda*"])), ("d", TermMatcher([], [r"\bbear\s*(?:cub|hug)\b"])),
                          ("e", TermMatcher([], [r"\bcub\b(?!\s*scout)"])), ("f", TermMatcher(["bamboo"]))])
    text, tokens = rules._prepare("a red panda bear cub scout")
    # "red panda" and "panda bear" overlap; "pandas" by prefix; pattern e is refused by its look-ahead
    assert group.matching(text, tokens) == {"a", "b", "c", "d"}


@pytest.mark.parametrize("source, expected", [
    (r"\b(?:fresh\s*)?(?:cuts|scars)\s*on\b", {"cuts", "scars"}),
    (r"\bin\s*(?:the\s*)?(?:first|2nd|[4-8]th)\s*grade\b", {"grade"}),
    (r"\bwhite\s*power\b(?!\s*(?:bank|strip))", {"white"}),  # a look-ahead's words are not required
    (r"(?:[1-9]|1[0-7])\s*(?:살|세)", {"살", "세"}),
    (r"x{2,3}yz", {"yz"}),
])
def test_required_literals(source, expected):
    assert required_literals(source) == expected


@pytest.mark.parametrize("source", [r"(?i)white", r"[a-z]+\d", r"(?:a|\d)", r"\bgrade(?P<x>s)?", r"x?y?"])
def test_no_literals_when_none_are_certain(source):
    assert required_literals(source) is None


def test_every_policy_pattern_match_holds_one_of_its_strings(rules, corpus):
    """The property the prefilter rests on, checked on every view where a pattern matches."""
    parts = [(rx, lits) for _, m in rules._set_group._patterned + rules._cat_group._patterned
             for rx, lits in m]
    assert parts and sum(lits is not None for _, lits in parts) >= len(parts) - 2
    matched = 0
    for prompt in corpus + ["taking off her clothes", "a girl 12 nude", "ein 12 jähriges mädchen", "13살 소녀"]:
        text, _ = rules._prepare(prompt)
        for view in text.views:
            for rx, lits in parts:
                if lits is not None and rx.search(view):
                    matched += 1
                    assert any(lit in view for lit in lits), (rx.pattern, view)
    assert matched > 50


def test_a_pattern_with_inline_flags_is_always_searched():
    m = TermMatcher([], [r"(?i:WHITE)\s*power"])
    [(rx, lits)] = m.pattern_parts
    assert lits is None and rx.search("white power")
    assert re.compile(r"(?i:WHITE)\s*power").search("white power")


def test_romanised_signals_by_one_scan_are_those_of_a_search_per_signal(rules, corpus):
    group = rules._structural._romanized
    seen = 0
    for prompt in corpus + ["chuugakusei no hadaka", "xiao nühai luo ti", "chodeung haksaeng nude"]:
        text, _ = rules._prepare(prompt)
        each = {key for key, rx in group._each if any(rx.search(v) for v in text.romanized)}
        assert group.matching(text.romanized) == each, prompt
        seen += bool(each)
    assert seen > 20
