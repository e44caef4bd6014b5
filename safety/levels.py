"""Moderation levels: how strictly a request asks to be moderated (OpenAI's ``moderation`` parameter).

``auto`` (the default) applies the policy as written. ``low`` relaxes the *borderline*
categories: a category whose action is ``block`` and whose severity is at most
``LOW_MAX_SEVERITY`` (in the default policy ``sexual_explicit`` and ``graphic_violence``, both
severity 6) is recorded as a ``flag`` instead: the request is accepted and marked for review.
Never relaxed, whatever its severity: ``minors_sexual`` (the policy loader already refuses a policy
that relaxes it), ``moderation_error`` (a stage that failed closed), and every category above the
cut-off (real-person sexual content 9, self-harm 8, hate symbols and dehumanisation 7). A decision
that also contains a block that is not relaxed stays a block.

Operators choose what ``low`` relaxes through the severities in their policy file.
"""
from __future__ import annotations

from dataclasses import replace

from safety.policy import MINORS_CATEGORY, Policy
from safety.verdict import MODERATION_ERROR, Action, Decision, Verdict

LEVELS = ("auto", "low")
#: Under ``low``, blocking categories up to this severity flag instead of block.
LOW_MAX_SEVERITY = 6
_NEVER = frozenset({MINORS_CATEGORY, MODERATION_ERROR})


def relaxable(verdict: Verdict) -> bool:
    """True when ``low`` turns this verdict's block into a flag."""
    return (verdict.action is Action.BLOCK and verdict.category not in _NEVER
            and verdict.severity <= LOW_MAX_SEVERITY)


def apply_level(decision: Decision, level: str | None, policy: Policy) -> Decision:
    """The decision under a moderation level; ``ValueError`` naming the levels for an unknown one.

    ``auto`` and ``None`` return the decision unchanged. Relaxed verdicts keep their category and
    severity and get ``;level:low`` appended to their rule, so the audit log shows why a block
    became a flag.
    """
    level = level or "auto"
    if level not in LEVELS:
        raise ValueError(f"unknown moderation level {level!r}; use one of {', '.join(LEVELS)}")
    if level == "auto" or not any(relaxable(v) for v in decision.verdicts):
        return decision
    verdicts = [replace(v, action=Action.FLAG, rule=f"{v.rule};level:low") if relaxable(v) else v
                for v in decision.verdicts]
    return Decision.from_verdicts(verdicts, decision.policy_version, policy.messages)
