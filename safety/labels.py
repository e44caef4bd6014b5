"""Map a classifier's label names onto policy categories and turn probabilities into verdicts.

Shared by the text and image classifier stages. The mapping is resolved once at construction,
so a model whose labels match no category in the policy is a start-up error, not a stage that
silently never fires.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from jobs.errors import ConfigurationError
from safety.policy import Category, Policy
from safety.verdict import Action, Verdict


def _key(label: str) -> str:
    return label.strip().casefold()


class LabelMap:
    """For one stage: which model output indices feed which category, and at what threshold."""

    def __init__(self, policy: Policy, stage: str, id2label: Mapping[int, str], model_dir: str) -> None:
        self.policy = policy
        self.stage = stage
        by_name = {_key(name): int(i) for i, name in id2label.items()}
        self.entries: list[tuple[Category, tuple[int, ...]]] = []
        for cat in policy.categories:
            wanted = cat.labels.get(stage, ())
            idx = tuple(by_name[_key(w)] for w in wanted if _key(w) in by_name)
            if idx:
                self.entries.append((cat, idx))
        if not self.entries:
            raise ConfigurationError(
                f"{stage}: none of the labels of {model_dir} ({', '.join(sorted(id2label.values()))}) "
                f"is mapped to a category; add them under 'labels: {{{stage}: [...]}}' in {policy.source}"
            )

    def verdicts(self, probs: Sequence[float]) -> list[Verdict]:
        """One verdict per category whose best mapped probability reaches its threshold."""
        out = []
        for cat, idx in self.entries:
            score = max(float(probs[i]) for i in idx)
            if score >= cat.thresholds[self.stage]:
                out.append(Verdict(self.stage, cat.id, score, cat.action, self.policy.version, cat.severity,
                                   f"label>={cat.thresholds[self.stage]}"))
        return out or [Verdict(self.stage, "none", 0.0, Action.ALLOW, self.policy.version)]
