"""The default output classifier: open_nsfw on the CPU, thresholds from the policy, fail closed.

A fixed-score stand-in drives the decisions (no test image should be NSFW); the packaged model
itself is loaded and run on benign photographs that scikit-image ships.
"""
from __future__ import annotations

import pytest
from PIL import Image

from jobs.errors import ConfigurationError
from safety.chain import ModerationChain
from safety.nsfw_classifier import NsfwClassifierStage, open_nsfw_scorer
from safety.policy import load_policy, parse_policy
from safety.prompt_rules import PromptRules
from safety.verdict import MODERATION_ERROR, Action

IMG = Image.new("RGB", (64, 64), (120, 130, 140))


def chain_with(score, fail_open=()) -> ModerationChain:
    policy = load_policy()

    def scorer(_img):
        if isinstance(score, Exception):
            raise score
        return score

    return ModerationChain(policy, prompt_stages=[PromptRules(policy)],
                           output_stages=[NsfwClassifierStage(policy, scorer=scorer)], fail_open=fail_open)


def test_score_over_the_block_threshold_blocks_as_sexual_explicit():
    d = chain_with(0.93).check_output_image(IMG)
    assert d.blocked and d.blocking_stage == "nsfw_classifier"
    assert "sexual_explicit" in d.categories


def test_score_between_thresholds_flags_nudity():
    d = chain_with(0.6).check_output_image(IMG)
    assert d.action is Action.FLAG and d.categories == ("nudity",)


def test_low_score_is_allowed():
    assert chain_with(0.05).check_output_image(IMG).action is Action.ALLOW


def test_a_failing_classifier_blocks_unless_the_operator_allows_it_to_fail_open():
    closed = chain_with(RuntimeError("onnxruntime died")).check_output_image(IMG)
    assert closed.blocked and MODERATION_ERROR in closed.categories
    opened = chain_with(RuntimeError("onnxruntime died"), fail_open=["nsfw_classifier"]).check_output_image(IMG)
    assert opened.action is Action.FLAG and MODERATION_ERROR in opened.categories


def test_a_score_outside_the_unit_interval_is_a_stage_failure():
    assert chain_with(1.7).check_output_image(IMG).blocked


def test_policy_that_maps_no_category_to_nsfw_fails_at_build():
    policy = parse_policy("""\
version: t
term_sets: {minor: {terms: [child]}, nudity: {terms: [nude]}}
categories:
  minors_sexual: {description: m, severity: 10, action: block, combinations: [[minor, nudity]]}
""")
    with pytest.raises(ConfigurationError, match="nsfw_classifier"):
        NsfwClassifierStage(policy, scorer=lambda img: 0.0)


def test_packaged_model_runs_on_cpu_and_passes_benign_photographs():
    data = pytest.importorskip("skimage.data")
    stage = NsfwClassifierStage(load_policy(), scorer=open_nsfw_scorer())
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = Image.fromarray(getattr(data, name)())
        assert 0.0 <= stage.score(img) < 0.2, name
        assert stage.check(img)[0].action is Action.ALLOW
