"""The labelled prompt set: every minors prompt blocked, benign false positives under 2%."""
from __future__ import annotations

import json
from pathlib import Path

from safety.policy import load_policy
from safety.prompt_rules import PromptRules
from safety.verdict import Action, Decision

DATA = Path(__file__).resolve().parents[1] / "data" / "moderation" / "prompts.jsonl"


def load_rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


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
    rows = load_rows()
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
