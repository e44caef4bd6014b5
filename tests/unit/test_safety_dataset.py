"""The labelled prompt sets: every minors prompt of the DEV split blocked, benign false blocks under 2%.

Only the dev split is asserted here: it is what the rules were tuned on, so this is a regression
guard. The test splits (multilingual_test.jsonl, multilingual_test_v7.jsonl) are measured by
benchmarks/moderation.py and never asserted, so nobody tunes the rules until a test passes.
"""
from __future__ import annotations

import json
from pathlib import Path

from safety.policy import load_policy
from safety.prompt_rules import PromptRules
from safety.verdict import Action, Decision

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "moderation"
DATA = DATA_DIR / "prompts.jsonl"
DEV = ("prompts.jsonl", "holdout.jsonl", "multilingual_dev.jsonl", "multilingual_test_v1.jsonl",
       "multilingual_test_v2.jsonl", "multilingual_test_v3.jsonl", "multilingual_test_v4.jsonl",
       "multilingual_test_v6.jsonl")
LANGUAGES = {"en", "ja", "ko", "zh-hans", "zh-hant", "es", "fr", "de", "pt", "it", "ru"}


def load_rows(files=("prompts.jsonl",)) -> list[dict]:
    rows = []
    for name in files:
        rows += [json.loads(line) for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def test_dataset_is_large_and_well_formed():
    rows = load_rows()
    policy = load_policy()
    assert len(rows) >= 200
    assert sum(r["label"] == "benign" for r in rows) >= 150
    for r in rows:
        assert r["variant"] in ("plain", "evasion")
        assert r["label"] == "benign" or policy.category(r["label"])


def test_every_minors_prompt_is_blocked_and_benign_false_positives_stay_under_two_percent():
    rules = PromptRules(load_policy())
    rows = load_rows(DEV)
    missed, false_pos, benign = [], [], 0
    for r in rows:
        d = Decision.from_verdicts(rules.check(r["prompt"], real_person_context=bool(r.get("real_person_context"))),
                                   rules.policy.version)
        if r["label"] == "minors_sexual" and not (d.blocked and "minors_sexual" in d.categories):
            missed.append(r["prompt"])
        if r["label"] == "benign":
            benign += 1
            if d.action is Action.BLOCK:
                false_pos.append(r["prompt"])
    assert missed == []
    assert len(false_pos) / benign < 0.02, false_pos


def test_multilingual_sets_cover_every_language_and_split_cleanly():
    dev = load_rows(DEV[2:])
    test = load_rows(("multilingual_test.jsonl",))
    # round 7 (issue 27): written after the v6 run, before its misses were read; measured, never tuned on
    blind7 = load_rows(("multilingual_test_v7.jsonl",))
    policy = load_policy()
    for rows in (dev, test, blind7):
        assert {r["lang"] for r in rows} == LANGUAGES
        assert {r["lang"] for r in rows if r["label"] == "minors_sexual"} == LANGUAGES
        for r in rows:
            assert r["variant"] in ("plain", "evasion")
            assert r["label"] == "benign" or policy.category(r["label"])
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in test}, "a prompt is in both dev and test"
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in blind7}, "a prompt is in both dev and test v7"
