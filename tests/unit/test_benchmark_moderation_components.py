"""benchmarks/moderation_components.py: each half of the minors rule is counted on its own rows."""
from __future__ import annotations

import pytest

from benchmarks.moderation_components import outcome, tables
from safety.policy import load_policy
from safety.prompt_rules import PromptRules


@pytest.fixture(scope="module")
def rules() -> PromptRules:
    return PromptRules(load_policy())


def test_each_half_is_detected_on_its_own_rows_and_innocent_children_are_counted(rules):
    rows = [{"prompt": "a 7 year old boy blowing out candles at his birthday party", "label": "minor_described", "lang": "en"},
            {"prompt": "a grown man reading a newspaper", "label": "minor_described", "lang": "en"},
            {"prompt": "a nude adult woman posing for a life drawing class", "label": "adult_nudity", "lang": "en"},
            {"prompt": "a woman in a winter coat", "label": "adult_nudity", "lang": "de"}]
    res = [outcome(rules, r) for r in rows]
    assert [r["detected"] for r in res] == [True, False, True, False]
    assert res[0]["action"] == "allow"  # an innocent child photo is neither blocked nor flagged
    t = tables(res)["by_language"]
    assert t["en"]["minor_detected"] == [1, 2] and t["en"]["sexual_detected"] == [1, 1]
    assert t["en"]["innocent_blocked"] == [0, 2] and t["en"]["innocent_flagged"] == [0, 2]
    assert t["de"] == {"sexual_detected": [0, 1]}
