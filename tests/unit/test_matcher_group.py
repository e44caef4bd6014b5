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
from safety.normalize import _fold_tokens
from safety.prompt_rules import NAME_SIGNAL, MatcherGroup, PromptRules, TermMatcher
from safety.romanize import fold
from safety.term_regex import LiteralIndex, required_literal_sets, required_literals

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
        name = {NAME_SIGNAL} if rules._names and rules._names.matches(text, tokens) else set()
        if rules._set_group.matching(text, tokens) != one_by_one or rules._cat_group.matching(text, tokens) != cats \
                or rules._name_group.matching(text, tokens) != name:
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


def test_every_policy_pattern_match_holds_one_string_of_each_of_its_sets(rules, corpus):
    """The property the prefilter rests on, checked on every view where a pattern matches."""
    matchers = [*rules._sets.values(), *(m for _, m in rules._cats)]
    parts = [(rx, sets) for m in matchers for rx, sets in m.pattern_parts]
    assert parts and sum(bool(sets) for _, sets in parts) >= len(parts) - 2
    assert sum(len(sets) > 1 for _, sets in parts) >= 5  # several patterns need two strings or more
    matched = 0
    for prompt in corpus + ["taking off her clothes", "a girl 12 nude", "ein 12 jähriges mädchen", "13살 소녀",
                            "a 12 y o girl", "12 years old", "white power rally"]:
        text, _ = rules._prepare(prompt)
        for view in text.views:
            for rx, sets in parts:
                if rx.search(view):
                    matched += 1
                    for lits in sets:
                        assert any(lit in view for lit in lits), (rx.pattern, view, lits)
    assert matched > 50


def test_a_pattern_with_inline_flags_is_always_searched():
    m = TermMatcher([], [r"(?i:WHITE)\s*power"])
    [(rx, sets)] = m.pattern_parts
    assert sets == [] and rx.search("white power")
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


@pytest.mark.parametrize("source, expected", [
    # a run goes on into a branch whose alternatives all start with a literal (re factors out "y")
    (r"\b(?:[1-9]|1[0-7])\s*(?:years?\s*olds?|yrs?|yo|y o)\b", [{"year", "yr", "yo", "y o"}, {"ear", "r", "o", " o"}]),
    (r"\bwhite\s*power\b(?!\s*(?:bank|strip))", [{"white"}, {"power"}]),  # both are needed
    (r"\bkid(?:s|dy)\s*model", [{"kids", "kiddy"}, {"model"}]),
    (r"(?:a|\d)x", [{"x"}]),
])
def test_required_literal_sets(source, expected):
    assert [set(s) for s in required_literal_sets(source)] == expected


def test_the_literal_index_finds_exactly_the_strings_in_a_text(rules, corpus):
    """One scan per distinct word (and one per text for strings with spaces) finds what a search
    for each string finds."""
    index = LiteralIndex()
    lits = set(rules._index._lits) | {"y o", "of the", "a"}
    index.add(lits)
    index._MEMO_MAX = 500  # the memo is cleared many times over the corpus
    checked = 0
    for prompt in corpus[::3]:
        text, _ = rules._prepare(prompt)
        for view in text.views:
            assert index.present(view) == {lit for lit in lits if lit in view}, view
            checked += 1
    assert checked > 1000
    assert index.add(None) is None and index.add({"ok", ""}) is None  # none certain: always searched


def test_one_test_over_all_views_answers_what_a_test_per_view_answers(rules, corpus):
    """``_quiet`` and the age search test the strings (and age anchors) of all of a prompt's views at
    once before any view on its own: the answer must be the one testing each view gives."""
    from safety.normalize import NormalizedText

    structural = rules._structural

    def quiet_per_view(text, tokens) -> bool:
        if text.runs or text.compact or not rules._words.isdisjoint(tokens):
            return False
        for view in text.views:
            present = rules._index.present(view)
            if any(g.possible(present) for g in rules._groups) or structural.possible(present):
                return False
        return not structural.unpositioned(text, set())

    def age_per_view(text) -> bool:
        alone = [NormalizedText(views=(v,), tokens=text.tokens) for v in text.views]
        rest = NormalizedText(views=(), tokens=text.tokens, compact=text.compact, romanized=text.romanized)
        return any(map(structural._is_minor_age, alone)) or structural._is_minor_age(rest)

    several = quiet = ages = 0
    for prompt in corpus:
        text, tokens = rules._prepare(prompt)
        assert rules._index.present_in_any(text.views) == frozenset().union(
            *map(rules._index.present, text.views)), prompt
        assert rules._quiet(text, tokens) == quiet_per_view(text, tokens), prompt
        assert structural._is_minor_age(text) == age_per_view(text), prompt
        several += len(text.views) > 1
        quiet += len(text.views) > 1 and rules._quiet(text, tokens)
        ages += len(text.views) > 1 and structural._is_minor_age(text)
    assert several > 500 and quiet > 100 and ages > 10  # both answers, for prompts with several views


def test_a_quiet_prompt_has_no_signal_and_no_term(rules, corpus):
    """``PromptRules._quiet`` skips every matcher: it must only say so when they find nothing."""
    quiet = 0
    for prompt in corpus:
        text, tokens = rules._prepare(prompt)
        if rules._quiet(text, tokens):
            quiet += 1
            assert not rules._signals(text, tokens, None, False), prompt
            assert not rules._cat_group.matching(text, tokens), prompt
    assert quiet > 1000
    catalog = [f"a {c} {m} mug model s1x{i:06d}, studio light, product photo" for i, (c, m) in
               enumerate((c, m) for c in ("grey", "white", "yellow", "red") for m in ("enamel", "glass", "stoneware"))]
    # all but s1x000011: "11" is a string of a named attack's ("9 11"), so that one takes the full path
    assert [p for p in catalog if not rules._quiet(*rules._prepare(p))] == [catalog[11]]


def test_per_word_shortcuts_read_views_as_a_whole_would(rules, corpus):
    """Romanised views folded a word at a time, age anchors looked for a word at a time, and spans
    of the positional term sets behind the index are what the whole view gives."""
    structural = rules._structural
    anchored = 0
    for prompt in corpus[::2]:
        text, _ = rules._prepare(prompt)
        for view in text.views:
            assert _fold_tokens(view.split()) == fold(view), view
            whole = structural._age_anchor.search(view) is not None
            assert any(map(structural._anchored.__getitem__, view.split())) == whole, view
            anchored += whole
            for pos in structural._pos.values():
                if pos.latin is not None:
                    plain = [(view.count(" ", 0, m.start()), view.count(" ", 0, m.end() - 1))
                             for m in pos.latin.finditer(view) if m.end() > m.start()]
                    assert pos.view_spans(view) == plain, view
    assert anchored > 100


@pytest.mark.parametrize("source, expected", [
    (r"\bs\s*a\s*i\b", [{"sai"}]),  # spaces removed from the text: the letters are one run
    (r"\b(?:ju|zyu)\s*(?:ni|san)\s*sai\b", [{"junisai", "jusansai", "zyunisai", "zyusansai"}]),
    (r"(?:ab|c)d(?:e|fg)h", [{"abdeh", "abdfgh", "cdeh", "cdfgh"}]),
    (r"\bwhite\s+power\b", [{"whitepower"}]),
])
def test_required_literal_sets_of_a_text_without_spaces(source, expected):
    assert [set(s) for s in required_literal_sets(source, despaced=True)] == expected


def test_romanised_age_prefilter_lets_through_every_view_an_age_pattern_matches(rules, corpus):
    """``_roman_age_keys`` skips the age search on a romanised view it finds nothing in; over the
    corpus (and romanised ages written with and without spaces), every view where the search
    matches is one it lets through."""
    structural = rules._structural
    keys = structural._roman_age_keys
    assert keys is not None
    matched = 0
    for prompt in corpus + ["juuni sai no shoujo", "shi er sui nvhai", "yeol se sal", "chuugaku ni nensei",
                            "12 sai", "zyu ni sai", "1 hak nyeon"]:
        text, _ = rules._prepare(prompt)
        for view in text.romanized:
            if structural._roman_age.search(view):
                matched += 1
                assert keys.search(view.replace(" ", "")), view
    assert matched > 10
