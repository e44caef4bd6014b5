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

from safety.normalize import (Memo, NormalizedText, has_unspaced_script, normalize, normalize_compact,
                              normalize_pattern, normalize_term)
from safety.policy import Category, Policy
from safety.structural import ROMANIZED_SUFFIX, StructuralRules
from safety.term_regex import ANY, PREFIX, WORD, LiteralIndex, TrieGroup, compile_terms, required_literal_sets
from safety.verdict import Action, Verdict

STAGE = "prompt_rules"
#: The signal a protected name raises.
NAME_SIGNAL = "$protected_name"


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
        # Each pattern with the sets of strings a view must hold one of each of for it to match
        # (empty: any view may): most views hold none, and the search is skipped.
        self.pattern_parts = tuple((re.compile(p), required_literal_sets(p)) for p in pats)

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
    """Which of many ``TermMatcher``s match one text, with one scan of each view for all of them
    (a plan moderates thousands of prompts: campaigns, issue 23).

    The answer is the one ``TermMatcher.matches`` gives each matcher: words are looked up in one
    index; a phrase trie is only tried in a view that holds every word of one of its phrases, and a
    policy pattern is only searched in a view that holds a string of each of its required sets
    (``required_literal_sets``). Which strings a view holds is found once for everything registered
    in ``index`` (``LiteralIndex``: pass the one shared by all the groups of a policy); the phrases
    left are found with one scan of each view (``TrieGroup``)."""

    def __init__(self, matchers: Iterable[tuple[str, TermMatcher]], index: LiteralIndex | None = None) -> None:
        self._index = index = index if index is not None else LiteralIndex()
        self._all = [(key, m) for key, m in matchers if m]
        self._by_word: dict[str, list[str]] = {}
        for key, m in self._all:
            for w in m.words:
                self._by_word.setdefault(w, []).append(key)
        self._words = frozenset(self._by_word)
        self._runs = [(key, m) for key, m in self._all if m._run_words]
        self._compact = [(key, m) for key, m in self._all if m.substrings is not None]
        self._phrases = TrieGroup(((key, m.phrase_list) for key, m in self._all), plural=True, index=index)
        # each pattern under the strings of its most selective required set, with all of its sets
        # (a view must hold a string of each for it to be searched there)
        self._by_lit: dict[str, list[tuple[str, re.Pattern[str], tuple[frozenset[str], ...]]]] = {}
        self._always: list[tuple[str, re.Pattern[str]]] = []
        for key, m in self._all:
            for rx, sets in m.pattern_parts:
                need = tuple(lits for lits in map(index.add, sets) if lits is not None)
                best = max(need, key=lambda ls: (min(map(len, ls)), -len(ls)), default=None)
                for lit in best or ():
                    self._by_lit.setdefault(lit, []).append((key, rx, need))
                if best is None:
                    self._always.append((key, rx))
        self._keyed = frozenset(self._by_lit)

    @property
    def words(self) -> frozenset[str]:
        """Every one-word term of every matcher: a token among these is a match."""
        return self._words

    def possible(self, present: frozenset[str]) -> bool:
        """False when no phrase or pattern can match a view holding just the strings ``present``
        (``LiteralIndex.present``). With that for every view, no word of ``words`` among the tokens,
        and no spelled-out run or unspaced-script view, ``matching`` finds nothing."""
        return bool(self._always) or bool(self._patterns_in(present)) or self._phrases.possible(present)

    def _patterns_in(self, present: frozenset[str], done: set[str] = frozenset()) -> list[tuple[str, re.Pattern[str]]]:
        """The patterns, of matchers not in ``done``, that a view holding ``present`` may match."""
        return [(key, rx) for lit in self._keyed.intersection(present) for key, rx, need in self._by_lit[lit]
                if key not in done and all(not lits.isdisjoint(present) for lits in need)]

    def matching(self, text: NormalizedText, tokens: frozenset[str]) -> set[str]:
        """The keys of the matchers whose ``matches(text, tokens)`` is true."""
        hit: set[str] = set()
        for tok in self._words.intersection(tokens):
            hit.update(self._by_word[tok])
        if text.runs:
            hit.update(key for key, m in self._runs if key not in hit
                       and any(w in run for run in text.runs for w in m._run_words))
        if text.compact:
            hit.update(key for key, m in self._compact if key not in hit
                       and any(m.substrings.search(c) for c in text.compact))
        hit |= self._phrases.matching(text.views, skip=hit)
        if not self._by_lit and not self._always:
            return hit
        for view in text.views:
            for key, rx in self._patterns_in(self._index.present(view), hit):
                if key not in hit and rx.search(view):
                    hit.add(key)
            for key, rx in self._always:
                if key not in hit and rx.search(view):
                    hit.add(key)
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
        # One scan of each view says which strings of every matcher below are in it (LiteralIndex).
        self._index = LiteralIndex()
        self._structural = StructuralRules(policy.term_sets, used, index=self._index)
        self._cats: list[tuple[Category, TermMatcher]] = [
            (c, TermMatcher(c.terms, c.patterns)) for c in policy.categories
        ]
        self._combos = {c.id: [(combo, frozenset(combo)) for combo in c.combinations] for c in policy.categories}
        #: a combination of no signals holds for every prompt (check: no shortcut for a quiet one)
        self._unconditional = any(not need for combos in self._combos.values() for _, need in combos)
        self._set_group = MatcherGroup(self._sets.items(), self._index)
        self._cat_group = MatcherGroup(((c.id, m) for c, m in self._cats), self._index)
        # Names (and their aliases in other scripts) are one more term list; a name matches as a
        # phrase with optional spaces, an alias in an unspaced script as a substring.
        self._names = TermMatcher(policy.protected_names)
        self._name_group = MatcherGroup([(NAME_SIGNAL, self._names)], self._index)
        # ``_quiet``: a prompt none of whose tokens is one of these words, and none of whose views
        # holds the strings a phrase, pattern or positional term set needs, raises no signal by them.
        self._groups = (self._set_group, self._cat_group, self._name_group)
        self._words = frozenset().union(*(g.words for g in self._groups))
        #: whether a view holding just these strings may match a phrase, pattern or positional term
        #: set (a catalog's views hold the same few sets of strings: worked out once per set)
        self._possible = Memo(lambda present: any(g.possible(present) for g in self._groups)
                              or self._structural.possible(present), size=256)
        self._negative_seen: dict[str, frozenset[str]] = {}
        self._allow = _phrase_regex(p for p in policy.allow_phrases if not has_unspaced_script(p))
        # Exceptions, and allow-phrases written in unspaced scripts, are cut out of compact views.
        self._exceptions = _substring_regex([*policy.exceptions,
                                             *(p for p in policy.allow_phrases if has_unspaced_script(p))])
        self._check_allow_phrases()
        #: The verdict of a prompt that matches nothing.
        self.allow = Verdict(STAGE, "none", 0.0, Action.ALLOW, policy.version)

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

    def _quiet(self, text: NormalizedText, tokens: frozenset[str]) -> bool:
        """True when no term set, category term, name or structural rule can match the prompt: what
        most prompts of a catalog are, told by one lookup per view (``LiteralIndex``) instead of a
        pass of every matcher. Ages, grades and romanised terms are still looked for (they need no
        listed string); a prompt with any of them takes the full path."""
        if text.runs or text.compact or not self._words.isdisjoint(tokens):
            return False
        # ``possible`` is monotone (a gate a set of strings opens, a larger set opens too), so when
        # the strings of all the views together open none, no view's strings do: one test for the
        # prompt instead of one per view. When they do, each view is tested on its own.
        views = text.views
        if len(views) > 1 and not self._possible[self._index.present_in_any(views, text.view_words())]:
            views = ()
        for view in views:
            if self._possible[self._index.present(view)]:
                return False
        return not self._structural.unpositioned(text, set())

    def _signals(self, text: NormalizedText, tokens: frozenset[str], negative_prompt: str | None,
                 real_person_context: bool, quiet: bool = False) -> set[str]:
        if quiet:
            found: set[str] = set()
        else:
            found = self._set_group.matching(text, tokens)
            found |= self._structural.signals(text, found)
            found |= self._name_group.matching(text, tokens)
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
        quiet = self._quiet(text, tokens)
        signals = self._signals(text, tokens, negative_prompt, real_person_context, quiet)
        out: list[Verdict] = []
        by_term = set() if quiet else self._cat_group.matching(text, tokens)
        if not by_term and not signals and not self._unconditional:
            return [self.allow]
        for cat, _ in self._cats:
            rule = ""
            if cat.id in by_term:
                rule = "term"
            else:
                combo = next((c for c, need in self._combos[cat.id] if need <= signals), None)
                if combo is not None:
                    rule = "combination:" + "+".join(combo)
            if rule:
                out.append(Verdict(STAGE, cat.id, 1.0, cat.action, self.policy.version, cat.severity, rule))
        out = StructuralRules.lower(out, signals, self.policy.version, STAGE)
        return out or [self.allow]
