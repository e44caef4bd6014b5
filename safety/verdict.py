"""Typed results of moderation: one ``Verdict`` per stage finding, one ``Decision`` per check.

A ``Verdict`` is what a single stage concluded about a single category. A ``Decision`` folds the
verdicts of every stage that ran into one action the caller acts on, plus a message that is safe
to show to the client (it names categories, never the matched words, so it cannot be used as an
oracle to tune an evasion).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from jobs.errors import ModerationBlocked

#: Category used when a stage itself failed; the chain fails closed with it.
MODERATION_ERROR = "moderation_error"
#: Category used for reference images that are refused before any content check (format, size).
INVALID_IMAGE = "invalid_image"


class Action(str, enum.Enum):
    """What to do with a request. Ordered: ``block`` beats ``flag`` beats ``allow``."""

    ALLOW = "allow"
    FLAG = "flag"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Action.ALLOW: 0, Action.FLAG: 1, Action.BLOCK: 2}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One stage's finding for one category.

    ``score`` is in [0, 1]: 1.0 for a rule match, the model probability for classifiers, and
    ``1 - distance/64`` for perceptual-hash matches. ``rule`` says which rule fired (for example
    ``combination:minor+nudity``) without quoting the prompt, so it is safe to audit.
    """

    stage: str
    category: str
    score: float
    action: Action
    policy_version: str
    severity: int = 0
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "stage": self.stage,
            "category": self.category,
            "score": round(float(self.score), 4),
            "action": self.action.value,
            "policy_version": self.policy_version,
            "severity": self.severity,
            "rule": self.rule,
        }


_DEFAULT_MESSAGES = {
    Action.ALLOW: "",
    Action.FLAG: "The request was accepted and flagged for review under the content policy.",
    Action.BLOCK: "The request was refused by the content policy",
}


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one moderation check (a prompt, an input image or an output image).

    ``action`` is the most severe action among ``verdicts``; ``blocking_stage`` is the first
    stage that blocked; ``categories`` lists every category that flagged or blocked.
    """

    action: Action
    verdicts: tuple[Verdict, ...]
    policy_version: str
    blocking_stage: str | None = None
    categories: tuple[str, ...] = ()
    message: str = ""
    #: The highest severity among the verdicts that flagged or blocked (0 when allowed).
    severity: int = 0

    @classmethod
    def from_verdicts(
        cls, verdicts: list[Verdict] | tuple[Verdict, ...], policy_version: str, messages: dict[str, str] | None = None
    ) -> "Decision":
        """Fold verdicts (in stage order) into one decision."""
        verdicts = tuple(verdicts)
        action = max((v.action for v in verdicts), key=lambda a: a.rank, default=Action.ALLOW)
        hits = [v for v in verdicts if v.action is not Action.ALLOW]
        categories = tuple(dict.fromkeys(v.category for v in hits))
        blocking = next((v for v in verdicts if v.action is Action.BLOCK), None)
        message = _DEFAULT_MESSAGES[action]
        if action is Action.BLOCK:
            custom = (messages or {}).get(blocking.category) if blocking else None
            message = custom or f"{message} (category: {', '.join(v.category for v in hits if v.action is Action.BLOCK)})."
        return cls(
            action=action,
            verdicts=verdicts,
            policy_version=policy_version,
            blocking_stage=blocking.stage if blocking else None,
            categories=categories,
            message=message,
            severity=max((v.severity for v in hits), default=0),
        )

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK

    @property
    def flagged(self) -> bool:
        return self.action is Action.FLAG

    def raise_for_block(self) -> None:
        """Raise ``ModerationBlocked`` (a PermanentError) when this decision blocks."""
        if self.blocked:
            raise ModerationBlocked(
                self.message,
                categories=list(self.categories),
                stage=self.blocking_stage,
                policy_version=self.policy_version,
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (what the CLI prints and the job record stores)."""
        return {
            "action": self.action.value,
            "categories": list(self.categories),
            "blocking_stage": self.blocking_stage,
            "severity": self.severity,
            "message": self.message,
            "policy_version": self.policy_version,
            "verdicts": [v.to_dict() for v in self.verdicts],
        }
