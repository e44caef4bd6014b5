"""The chain: construction from settings, stage order, fail closed / fail open, torch-free import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.errors import ConfigurationError, ModerationBlocked
from jobs.settings import Settings
from safety import Action, ModerationChain
from safety.phash import phash, to_hex
from safety.policy import load_policy
from safety.prompt_rules import PromptRules
from tests.unit.test_safety_input_images import drawn_face, encode


class Exploding:
    """A stage that always raises, standing in for a model that crashed or ran out of memory."""

    name = "text_classifier"

    def check(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory")


def chain_with_failing_stage(fail_open: list[str]) -> ModerationChain:
    policy = load_policy()
    return ModerationChain(policy, prompt_stages=[PromptRules(policy), Exploding()], fail_open=fail_open)


def test_failing_stage_blocks_by_default():
    d = chain_with_failing_stage([]).check_prompt("a red car")
    assert d.blocked and d.categories == ("moderation_error",) and d.blocking_stage == "text_classifier"
    assert "could not be completed" in d.message
    with pytest.raises(ModerationBlocked):
        d.raise_for_block()


def test_failing_stage_named_fail_open_flags_and_continues():
    d = chain_with_failing_stage(["text_classifier"]).check_prompt("a red car")
    assert d.action is Action.FLAG and d.categories == ("moderation_error",)


def test_earlier_block_skips_later_stages():
    d = chain_with_failing_stage([]).check_prompt("child, naked")
    assert d.blocking_stage == "prompt_rules" and "moderation_error" not in d.categories


def test_from_settings_fails_at_start_up_on_bad_policy(tmp_path: Path):
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: x\ncategories: []\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="policy.yaml:2"):
        ModerationChain.from_settings(Settings(home=tmp_path, policy_file=bad))


def test_from_settings_refuses_unknown_fail_open_stage(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="unknown stage"):
        ModerationChain.from_settings(Settings(home=tmp_path, moderation_fail_open=["prompt_rule"]))


def test_face_in_reference_image_turns_on_real_person_rules(tmp_path: Path):
    chain = ModerationChain.from_settings(Settings(home=tmp_path))
    ref = chain.check_input_image(encode(drawn_face(), "PNG"), job_id="j1")
    assert ref.decision.action is Action.ALLOW and ref.real_person_context and ref.image is not None
    assert chain.check_prompt("same pose, undressed", real_person_context=ref.real_person_context).blocked
    assert chain.check_prompt("same pose, in a red raincoat", real_person_context=True).action is Action.ALLOW


def test_refused_reference_image_returns_no_image(tmp_path: Path):
    chain = ModerationChain.from_settings(Settings(home=tmp_path), detect_faces=False)
    ref = chain.check_input_image(b"not an image")
    assert ref.decision.blocked and ref.image is None and ref.decision.categories == ("invalid_image",)


def test_output_image_on_blocklist_is_blocked(tmp_path: Path):
    rng = np.random.default_rng(9)
    bad = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((256, 256), Image.Resampling.BICUBIC)
    blocklist = tmp_path / "hashes.txt"
    blocklist.write_text(to_hex(phash(bad)) + " graphic_violence\n", encoding="utf-8")
    chain = ModerationChain.from_settings(Settings(home=tmp_path, phash_blocklist=blocklist), detect_faces=False)
    assert chain.check_output_image(bad).blocked
    assert chain.check_output_image(Image.new("RGB", (256, 256), "white")).action is Action.ALLOW


def test_prompt_only_chain_and_package_import_stay_torch_free():
    code = (
        "import sys; from jobs.settings import Settings; import safety, safety.chain, safety.cli;"
        "c = safety.ModerationChain.prompt_only(Settings(), audit=False); c.check_prompt('a red car');"
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_a_decision_made_moments_ago_is_recorded_not_worked_out_again_unless_it_cannot_be_trusted():
    """``check_prompt(decided=)`` (a campaign's submission reusing its plan's decision): the given
    decision is returned without running a stage, except one from another policy version or one in
    which a stage failed open, which is worked out again."""
    from dataclasses import replace

    policy = load_policy()
    calls = []

    class Counting:
        name = "prompt_rules"

        def __init__(self):
            self.rules = PromptRules(policy)

        def check(self, *a, **kw):
            calls.append(a[0])
            return self.rules.check(*a, **kw)

    chain = ModerationChain(policy, prompt_stages=[Counting()])
    plan = chain.check_prompt("a red car", audit_allowed=False)
    assert chain.check_prompt("a red car", decided=plan) is plan and calls == ["a red car"]
    chain.check_prompt("a red car", decided=replace(plan, policy_version="older-policy"))
    assert calls == ["a red car"] * 2
    failed_open = chain_with_failing_stage(["text_classifier"]).check_prompt("a red car")
    assert "moderation_error" in failed_open.categories
    chain.check_prompt("a red car", decided=failed_open)
    assert calls == ["a red car"] * 3
