"""Stage 1: policy terms, patterns and combination rules matched against normalised prompts.

Everything is compiled once at construction: single-word terms become frozensets (matching is a
set intersection with the prompt's tokens), phrases and prefix terms one trie-shaped regex per
term set (``safety.term_regex``), terms of unspaced scripts another, matched inside the
prompt's compact views, and the policy's patterns one alternation. A prompt is normalised once (``safety.normalize``) and every
signal is computed from that; ``safety.structural`` adds the signals of classes that combine (ages and
grades, romanised terms, words within a window of each other) and lowers flags a medical or art context
explains. A check costs a few hundred microseconds at most.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from safety.normalize import (NormalizedText, has_unspaced_script, normalize, normalize_compact, normalize_pattern,
                              normalize_term)
from safety.policy import Category, Policy
from safety.structural import ROMANIZED_SUFFIX, StructuralRules
from safety.term_regex import ANY, PREFIX, WORD, compile_terms
from safety.verdict import Action, Verdict

STAGE = "prompt_rules"


def _substring_regex(terms: Iterable[str]) -> re.Pattern[str] | None:
    """Terms of unspaced scripts as one trie regex, matched anywhere inside compact views."""
    return compile_terms((([normalize_compact(t.rstrip("*"))], ANY) for t in terms), start="")


def _phrase_regex(terms: Iterable[str]) -> re.Pattern[str] | None:
    """Phrases with optional spaces (``taylorswift``, ``selfharm``), whole words or prefixes."""
    return compile_terms((normalize_term(t).split(), WORD) for t in terms)


class TermMatcher:
    """Matches one list of terms and patterns against a ``NormalizedText``.

    Terms of scripts written without spaces (CJK, kana, Hangul, Thai) are matched as substrings
    of the compact views; one-word terms by token; phrases and ``prefix*`` terms by one trie
    regex over the views; the policy's own patterns by one alternation.
    """

    def __init__(self, terms: Iterable[str], patterns: Iterable[str] = ()) -> None:
        words: set[str] = set()
        phrases: list[tuple[list[str], str]] = []
        terms = list(terms)
        self.substrings = _substring_regex(t for t in terms if has_unspaced_script(t))
        for term in terms:
            if has_unspaced_script(term):
                continue
            prefix = term.endswith("*")
            norm = normalize_term(term.rstrip("*")).split()
            if not norm:
                continue
            if len(norm) == 1 and not prefix:
                words.add(norm[0])
            else:
                phrases.append((norm, PREFIX if prefix else WORD))
        self.words = frozenset(words)
        # Only words of 3+ letters are searched inside spelled-out runs; shorter ones would
        # match by accident far too often.
        self._run_words = tuple(sorted(w for w in words if len(w) >= 3))
        self.phrases = compile_terms(phrases, plural=True)
        pats = [f"(?:{normalize_pattern(p)})" for p in patterns]
        self.patterns = re.compile("|".join(pats)) if pats else None

    def __bool__(self) -> bool:
        return bool(self.words) or any(r is not None for r in (self.phrases, self.patterns, self.substrings))

    def matches(self, text: NormalizedText, tokens: frozenset[str]) -> bool:
        """True when any term is a token of ``tokens`` or any phrase/pattern is in a view."""
        if not self.words.isdisjoint(tokens):
            return True
        if text.runs and any(w in run for run in text.runs for w in self._run_words):
            return True
        if self.substrings is not None and any(self.substrings.search(c) for c in text.compact):
            return True
        if self.phrases is not None and any(self.phrases.search(v) for v in text.views):
            return True
        return self.patterns is not None and any(self.patterns.search(v) for v in text.views)


def _with_stems(tokens: frozenset[str]) -> frozenset[str]:
    """Add naive singulars so a term "kid" also matches "kids" and "kid's" -> "kids"."""
    stems = {t[:-1] for t in tokens if len(t) > 3 and t.endswith("s") and not t.endswith("ss")}  # not "nuss" -> "nus"
    stems |= {t[:-2] for t in tokens if len(t) > 4 and t.endswith("es")}
    return tokens | stems


class PromptRules:
    """Matches a policy's categories against a prompt (and its negative prompt).

    The negative prompt cannot *request* content, so its words never count on their own; only
    the policy's ``negative_prompt`` mapping applies (asking to avoid "clothes" asks for nudity).
    """

    name = STAGE

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # A term set raises a signal here only when something reads it: a combination, the
        # negative-prompt mapping or a lowering context. Sets that only feed the structural rules
        # (``protected_group``, ``metaphor_link``...) and ``<signal>_romanized`` sets are matched
        # there, by position or against romanised views.
        used = {sig for c in policy.categories for combo in c.combinations for sig in combo}
        used |= {*policy.negative_prompt, *policy.negative_prompt.values(), *StructuralRules.SIGNALS_READ}
        self._sets = {name: TermMatcher(s.terms, s.patterns) for name, s in policy.term_sets.items()
                      if name in used and not name.endswith(ROMANIZED_SUFFIX)}
        self._structural = StructuralRules(policy.term_sets, used)
        self._cats: list[tuple[Category, TermMatcher]] = [
            (c, TermMatcher(c.terms, c.patterns)) for c in policy.categories
        ]
        # Names (and their aliases in other scripts) are one more term list; a name matches as a
        # phrase with optional spaces, an alias in an unspaced script as a substring.
        self._names = TermMatcher(policy.protected_names)
        self._negative_seen: dict[str, frozenset[str]] = {}
        self._allow = _phrase_regex(p for p in policy.allow_phrases if not has_unspaced_script(p))
        # Exceptions, and allow-phrases written in unspaced scripts, are cut out of compact views.
        self._exceptions = _substring_regex([*policy.exceptions,
                                             *(p for p in policy.allow_phrases if has_unspaced_script(p))])

    def signals(self, prompt: str, negative_prompt: str | None = None, *, real_person_context: bool = False) -> set[str]:
        """The term sets and special signals present in a prompt (exposed for tests and tooling)."""
        return self._signals(*self._prepare(prompt), negative_prompt, real_person_context)

    def _prepare(self, prompt: str) -> tuple[NormalizedText, frozenset[str]]:
        text = normalize(prompt, self._allow, self._exceptions)
        return text, _with_stems(text.tokens)

    def _signals(self, text: NormalizedText, tokens: frozenset[str], negative_prompt: str | None,
                 real_person_context: bool) -> set[str]:
        found = {name for name, m in self._sets.items() if m.matches(text, tokens)}
        found |= self._structural.signals(text, found)
        if self._names and self._names.matches(text, tokens):
            found.add("$protected_name")
        if real_person_context:
            found.add("$real_person_context")
        if negative_prompt and self.policy.negative_prompt:
            found |= self._negative_signals(negative_prompt)
        return found

    def _negative_signals(self, negative_prompt: str) -> frozenset[str]:
        """The signals of a negative prompt, remembered (a catalog's cells usually share one)."""
        hit = self._negative_seen.get(negative_prompt)
        if hit is None:
            neg, neg_tokens = self._prepare(negative_prompt)
            hit = frozenset(signal for set_name, signal in self.policy.negative_prompt.items()
                            if self._sets[set_name].matches(neg, neg_tokens))
            if len(self._negative_seen) >= 1024:
                self._negative_seen.clear()
            self._negative_seen[negative_prompt] = hit
        return hit

    def check(self, prompt: str, negative_prompt: str | None = None, *, real_person_context: bool = False) -> list[Verdict]:
        """One verdict per matching category; a single ``allow`` verdict when none match."""
        text, tokens = self._prepare(prompt)
        signals = self._signals(text, tokens, negative_prompt, real_person_context)
        out: list[Verdict] = []
        for cat, matcher in self._cats:
            rule = ""
            if matcher and matcher.matches(text, tokens):
                rule = "term"
            else:
                combo = next((c for c in cat.combinations if all(s in signals for s in c)), None)
                if combo is not None:
                    rule = "combination:" + "+".join(combo)
            if rule:
                out.append(Verdict(STAGE, cat.id, 1.0, cat.action, self.policy.version, cat.severity, rule))
        out = StructuralRules.lower(out, signals, self.policy.version, STAGE)
        return out or [Verdict(STAGE, "none", 0.0, Action.ALLOW, self.policy.version)]
