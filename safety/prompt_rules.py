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
from safety.term_regex import ANY, PREFIX, WORD, TrieGroup, compile_terms, required_literals, trie_pattern
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
        self.phrase_list = tuple((tuple(words), end) for words, end in phrases)
        self.phrases = compile_terms(phrases, plural=True)
        pats = [f"(?:{normalize_pattern(p)})" for p in patterns]
        self.patterns = re.compile("|".join(pats)) if pats else None
        # Each pattern with the strings one of which a view must hold for it to match (None: any
        # view may): most views hold none, and the search is skipped for an ``in`` test.
        self.pattern_parts = tuple((re.compile(p), required_literals(p)) for p in pats)

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


class MatcherGroup:
    """Which of many ``TermMatcher``s match one text, with one trie scan of each view for all of
    their phrases (a plan moderates thousands of prompts: campaigns, issue 23).

    The answer is the one ``TermMatcher.matches`` gives each matcher: words are looked up in one
    index, the phrases of all matchers are found with one scan of each view (``TrieGroup``), and a
    policy pattern is searched only in a view that holds one of the strings every match of it
    contains (``required_literals``), which one more scan finds for all patterns at once."""

    def __init__(self, matchers: Iterable[tuple[str, TermMatcher]]) -> None:
        self._all = [(key, m) for key, m in matchers if m]
        self._by_word: dict[str, list[str]] = {}
        for key, m in self._all:
            for w in m.words:
                self._by_word.setdefault(w, []).append(key)
        self._runs = [(key, m) for key, m in self._all if m._run_words]
        self._compact = [(key, m) for key, m in self._all if m.substrings is not None]
        self._phrases = TrieGroup(((key, m.phrase_list) for key, m in self._all), plural=True)
        self._patterned = [(key, m.pattern_parts) for key, m in self._all if m.patterns is not None]
        # Every pattern's required strings in one trie: a view's scan says which occur in it, and a
        # pattern none of whose strings occurs is not searched. At one position the trie reports
        # the longest string found; the shorter ones it starts with are there too (``_within``).
        lits = sorted({lit for _, parts in self._patterned for _, ls in parts for lit in ls or ()})
        source = trie_pattern([([lit], ANY) for lit in lits], start="")
        self._literals = re.compile(f"(?=({source}))") if source else None
        self._within = {lit: frozenset(x for x in lits if lit.startswith(x)) for lit in lits}

    def matching(self, text: NormalizedText, tokens: frozenset[str]) -> set[str]:
        """The keys of the matchers whose ``matches(text, tokens)`` is true."""
        hit: set[str] = set()
        for tok in tokens:
            keys = self._by_word.get(tok)
            if keys:
                hit.update(keys)
        if text.runs:
            hit.update(key for key, m in self._runs if key not in hit
                       and any(w in run for run in text.runs for w in m._run_words))
        if text.compact:
            hit.update(key for key, m in self._compact if key not in hit
                       and any(m.substrings.search(c) for c in text.compact))
        hit |= self._phrases.matching(text.views, skip=hit)
        todo = [(key, parts) for key, parts in self._patterned if key not in hit]
        for view in text.views if todo else ():
            present: set[str] = set()
            if self._literals is not None:
                for at in self._literals.finditer(view):
                    present |= self._within[at.group(1)]
            found = {key for key, parts in todo
                     if any(rx.search(view) for rx, ls in parts if ls is None or not ls.isdisjoint(present))}
            if found:
                hit |= found
                todo = [(key, parts) for key, parts in todo if key not in found]
        return hit


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
        self._set_group = MatcherGroup(self._sets.items())
        self._cat_group = MatcherGroup((c.id, m) for c, m in self._cats)
        # Names (and their aliases in other scripts) are one more term list; a name matches as a
        # phrase with optional spaces, an alias in an unspaced script as a substring.
        self._names = TermMatcher(policy.protected_names)
        self._negative_seen: dict[str, frozenset[str]] = {}
        self._allow = _phrase_regex(p for p in policy.allow_phrases if not has_unspaced_script(p))
        # Exceptions, and allow-phrases written in unspaced scripts, are cut out of compact views.
        self._exceptions = _substring_regex([*policy.exceptions,
                                             *(p for p in policy.allow_phrases if has_unspaced_script(p))])
        self._check_allow_phrases()

    def _check_allow_phrases(self) -> None:
        """An allow-phrase is cut out of a prompt before anything is matched, so one that holds a
        sign of a minor ("sex of the baby") would hide the child from the minors rule: refused."""
        from jobs.errors import ConfigurationError

        for phrase in self.policy.allow_phrases:
            text = normalize(phrase, None, self._exceptions)
            tokens = _with_stems(text.tokens)
            found = self._set_group.matching(text, tokens)
            if "minor" in found or "minor" in self._structural.signals(text, found):
                raise ConfigurationError(
                    f"policy {self.policy.version}: allow-phrase {phrase!r} names a minor; an allow-phrase is cut "
                    "out before matching, so it would hide the child from the minors rule: remove it")

    def signals(self, prompt: str, negative_prompt: str | None = None, *, real_person_context: bool = False) -> set[str]:
        """The term sets and special signals present in a prompt (exposed for tests and tooling)."""
        return self._signals(*self._prepare(prompt), negative_prompt, real_person_context)

    def _prepare(self, prompt: str) -> tuple[NormalizedText, frozenset[str]]:
        text = normalize(prompt, self._allow, self._exceptions)
        return text, _with_stems(text.tokens)

    def _signals(self, text: NormalizedText, tokens: frozenset[str], negative_prompt: str | None,
                 real_person_context: bool) -> set[str]:
        found = self._set_group.matching(text, tokens)
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
        by_term = self._cat_group.matching(text, tokens)
        for cat, _ in self._cats:
            rule = ""
            if cat.id in by_term:
                rule = "term"
            else:
                combo = next((c for c in cat.combinations if all(s in signals for s in c)), None)
                if combo is not None:
                    rule = "combination:" + "+".join(combo)
            if rule:
                out.append(Verdict(STAGE, cat.id, 1.0, cat.action, self.policy.version, cat.severity, rule))
        out = StructuralRules.lower(out, signals, self.policy.version, STAGE)
        return out or [Verdict(STAGE, "none", 0.0, Action.ALLOW, self.policy.version)]
