"""Many literal terms compiled into ONE regex shaped like a trie.

Python's ``re`` tries an alternation ``a|b|c|...`` branch by branch at every position, so a
policy with hundreds of phrases in eleven languages cost about a millisecond a prompt. Sharing
prefixes (``self harm``, ``self injury`` -> ``self\\s*(?:harm|injury)``) lets a position fail on
its first character instead, which keeps the rules stage in the tens of microseconds.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from re import _constants as _sre, _parser as _sre_parse  # the parser re itself uses (3.11+)

#: How a phrase may end: at a word boundary, anywhere (substring), or with any word ending.
WORD, ANY, PREFIX = r"\b", "", r"\w*"
_END = ""  # trie key of the end markers (no real atom is empty)


#: After each word of a phrase: an optional plural ending ("pools of blood", "charcos de sangre").
PLURAL = r"(?:e?s)?"


def _atoms(words: list[str], plural: bool) -> list[str]:
    """One atom per character; the gap between words is ``\\s*`` (spaces optional)."""
    atoms: list[str] = []
    for i, word in enumerate(words):
        if i:
            atoms.append(r"\s*")
        atoms.extend(re.escape(ch) for ch in word)
        if plural and len(words) > 1 and word[-1:].isalpha():
            atoms.append(PLURAL)
    return atoms


def _serialise(node: dict) -> str:
    alts = []
    for atom in sorted(k for k in node if k != _END):
        alts.append(atom + _serialise(node[atom]))
    alts.extend(sorted(node.get(_END, ())))
    if len(alts) == 1:
        return alts[0]
    return "(?:" + "|".join(alts) + ")"


def trie_pattern(phrases: Iterable[tuple[list[str], str]], *, start: str = r"\b", plural: bool = False) -> str | None:
    """Regex source matching any phrase. Each phrase is (words, end) with end WORD/ANY/PREFIX;
    ``plural``: every word of a multi-word phrase may take an ``s``/``es`` ending."""
    root: dict = {}
    for words, end in phrases:
        if not words:
            continue
        node = root
        for atom in _atoms(words, plural):
            node = node.setdefault(atom, {})
        node.setdefault(_END, set()).add(end)
    if not root:
        return None
    return start + _serialise(root)


def compile_terms(phrases: Iterable[tuple[list[str], str]], *, start: str = r"\b",
                  plural: bool = False) -> re.Pattern[str] | None:
    source = trie_pattern(phrases, start=start, plural=plural)
    return re.compile(source) if source else None


def phrase_literals(phrases: Iterable[tuple[list[str], str]]) -> frozenset[str]:
    """A string every match of a phrase trie contains, per phrase: its longest word. The words of
    a phrase are joined by optional spaces and may take an ending, but every letter is matched."""
    return frozenset(max(words, key=len) for words, _ in phrases if words)


class LiteralIndex:
    """Which of many literal strings occur in a text, found a word at a time.

    Every matcher of one policy (``safety.prompt_rules``, ``safety.structural``) registers strings
    every match of its regex must contain (the words of its phrases, ``required_literal_sets``,
    ``phrase_literals``) and, before a search, asks whether the view holds them: a view of an
    ordinary prompt does not for most matchers, so most searches are skipped.

    A string without whitespace can only occur inside one whitespace-separated word of a text, so
    the strings in a text are the union of those in its words, and each distinct word is scanned
    once (a catalog's prompts share most of their words): one trie-shaped regex, ``(?=(trie))``,
    stops at each position where a string starts and reports the longest there; the shorter ones it
    starts with are there too (two strings that both match at one position are one a prefix of the
    other). The few strings with whitespace in them are each looked for in the whole text. The
    memos are plain dicts cleared when full: a value depends only on its key, so concurrent use
    recomputes at worst."""

    _MEMO_MAX = 2048
    _RECENT = 64

    def __init__(self) -> None:
        self._lits: set[str] = set()
        self._compiled: re.Pattern[str] | None = None
        self._spaced: tuple[str, ...] = ()
        self._within: dict[str, frozenset[str]] = {}
        self._words: dict[str, frozenset[str]] = {}
        self._recent: dict[str, frozenset[str]] = {}

    def add(self, literals: Iterable[str] | None) -> frozenset[str] | None:
        """Register ``literals`` (None, or a set holding an empty string: none certain) and return
        the set to test against ``present`` (None: nothing certain, always search)."""
        if literals is None:
            return None
        lits = frozenset(literals)
        if not lits or not all(lits):
            return None
        self._lits |= lits
        self._compiled = None
        self._words, self._recent = {}, {}
        return lits

    def _compile(self) -> re.Pattern[str]:
        self._spaced = tuple(sorted(lit for lit in self._lits if any(ch.isspace() for ch in lit)))
        lits = sorted(lit for lit in self._lits if lit not in self._spaced)
        self._within = {lit: frozenset(lit[:i] for i in range(1, len(lit) + 1) if lit[:i] in self._lits)
                        for lit in lits}
        source = trie_pattern([([lit], ANY) for lit in lits], start="")
        self._compiled = re.compile(f"(?=({source}))" if source else "(?!)")
        return self._compiled

    def _scan(self, rx: re.Pattern[str], word: str) -> frozenset[str]:
        found: set[str] = set()
        for at in rx.finditer(word):
            found |= self._within[at.group(1)]
        return frozenset(found)

    def _in_words(self, words: Iterable[str]) -> set[str]:
        """The registered strings without whitespace that occur in one of ``words``."""
        rx = self._compiled or self._compile()
        memo = self._words
        found: set[str] = set()
        for word in words:
            in_word = memo.get(word)
            if in_word is None:
                in_word = self._scan(rx, word)
                if len(memo) >= self._MEMO_MAX:
                    memo = self._words = {}
                memo[word] = in_word
            if in_word:
                found |= in_word
        return found

    def present(self, text: str) -> frozenset[str]:
        """The registered strings that occur in ``text``."""
        hit = self._recent.get(text)
        if hit is None:
            found = self._in_words(text.split())
            found.update(lit for lit in self._spaced if lit in text)
            hit = frozenset(found)
            if len(self._recent) >= self._RECENT:
                self._recent = {}
            self._recent[text] = hit
        return hit

    def present_in_any(self, texts: Iterable[str], words: Iterable[str] | None = None) -> frozenset[str]:
        """The registered strings that occur in one of ``texts``: the union of ``present`` of each,
        with each distinct word looked up once (a prompt's views share most of their words).
        ``words``: every word of ``texts``, when the caller has them (``NormalizedText.view_words``)."""
        texts = tuple(texts)
        found = self._in_words(words if words is not None else {word for text in texts for word in text.split()})
        found.update(lit for lit in self._spaced if any(lit in text for text in texts))
        return frozenset(found)


class TrieGroup:
    """Which of several phrase tries match any of some texts, with one scan of each text for all.

    The phrases of every trie are merged into one more, searched zero-width: it stops at each
    position where some phrase of some trie matches, and only there is each trie tried, anchored
    (``regex.match(text, pos)``: a word boundary still sees the text before ``pos``). A trie matches
    somewhere exactly when it matches at one of those positions, so the answer is the one a
    ``search`` per trie gives, for one scan per text instead of one per trie. With an ``index``
    (``LiteralIndex``), a trie is only tried in a text that holds every word of one of its phrases,
    and a text where no trie is left is not scanned at all."""

    def __init__(self, tries: Iterable[tuple[str, Iterable[tuple[list[str], str]]]], *, plural: bool = False,
                 index: LiteralIndex | None = None, despaced_gate: bool = False) -> None:
        self._each: list[tuple[str, re.Pattern[str]]] = []
        self._index = index
        #: with an index: under each phrase's longest word, its trie and all of the phrase's words
        self._by_lit: dict[str, list[tuple[str, re.Pattern[str], frozenset[str]]]] = {}
        every: list[tuple[list[str], str]] = []
        for key, phrases in tries:
            phrases = [(words, end) for words, end in phrases if words]
            rx = compile_terms(phrases, plural=plural)
            if rx is not None:
                self._each.append((key, rx))
                for words, _ in phrases if index is not None else ():
                    need = index.add(words)
                    if need is not None:
                        self._by_lit.setdefault(max(words, key=len), []).append((key, rx, need))
                every.extend(phrases)
        self._keyed = frozenset(self._by_lit)
        source = trie_pattern(every, plural=plural)
        self._starts = re.compile(f"(?={source})") if source else None
        #: ``despaced_gate`` (phrases without endings): every match, spaces removed, holds its phrase's
        #: words joined; a text that, spaces removed, holds none of them is not scanned
        self._gate = None
        if despaced_gate and not plural and every:
            self._gate = re.compile(trie_pattern([(["".join(words)], ANY) for words, _ in every], start="") or "(?!)")

    def _candidates(self, text: str, done: set[str]) -> list[tuple[str, re.Pattern[str]]]:
        """The tries, other than those in ``done``, that may match ``text``."""
        if self._index is None:
            return [(key, rx) for key, rx in self._each if key not in done]
        return self._held(self._index.present(text), done)

    def _held(self, present: frozenset[str], done: set[str]) -> list[tuple[str, re.Pattern[str]]]:
        """The tries, other than those in ``done``, with a phrase every word of which is among the
        strings ``present`` (each word is matched letter for letter, so a text without them all
        cannot match the phrase)."""
        seen = set(done)
        out = []
        for lit in self._keyed.intersection(present):
            for key, rx, need in self._by_lit[lit]:
                if key not in seen and need <= present:
                    seen.add(key)
                    out.append((key, rx))
        return out

    def possible(self, present: frozenset[str]) -> bool:
        """False when no trie can match a text holding just the strings ``present`` (from the
        index; True without one)."""
        return self._index is None or bool(self._held(present, set()))

    def matching(self, texts: Iterable[str], skip: Iterable[str] = ()) -> set[str]:
        """The keys, other than those in ``skip``, whose trie matches one of ``texts``."""
        done = set(skip)
        hit: set[str] = set()
        if self._starts is None:
            return hit
        left = len([key for key, _ in self._each if key not in done])
        for text in texts:
            if not left:
                break
            if self._gate is not None and not self._gate.search(text.replace(" ", "")):
                continue
            here = self._candidates(text, done)
            if not here:
                continue
            if len(here) <= 2:
                found = {key for key, rx in here if rx.search(text)}
            else:
                found = set()
                for at in self._starts.finditer(text):
                    pos = at.start()
                    found |= {key for key, rx in here if key not in found and rx.match(text, pos)}
                    if len(found) == len(here):
                        break
            if found:
                hit |= found
                done |= found
                left -= len(found)
        return hit


def literal_prefilter(sources: Iterable[str], *, despaced: bool = False) -> re.Pattern[str] | None:
    """One regex that finds, in a text, a string of the most selective required set of every one
    of ``sources`` (``required_literal_sets``): a text it finds nothing in is matched by none of
    them. None when a source has no such set (the text must be searched)."""
    keys: set[str] = set()
    for source in sources:
        sets = required_literal_sets(source, despaced=despaced)
        if not sets:
            return None
        keys |= _best(sets) or ()
    return re.compile("|".join(re.escape(k) for k in sorted(keys, key=lambda k: (-len(k), k)))) if keys else None


def required_literals(source: str) -> frozenset[str] | None:
    """Strings one of which every match of the regex ``source`` contains, or None when no such
    set is found (case-insensitive flags, a branch without a literal, ...): the most selective set
    of ``required_literal_sets`` (longest shortest string)."""
    sets = required_literal_sets(source)
    return _best(sets) if sets else None


def required_literal_sets(source: str, *, despaced: bool = False) -> list[frozenset[str]]:
    """Sets of strings such that every match of the regex ``source`` contains one string of each
    set; empty when none is found (case-insensitive flags, a branch without a literal, ...).

    A prefilter: when a text lacks all the strings of one set the regex cannot match it, so a
    ``search`` (which for ``\\b(?:take|takes|...)``-shaped policy patterns tries the alternation at
    every word) can be skipped for an ``in`` test. From the parsed regex, each part of its top-level
    sequence gives a set: a run of literals is one string, and runs on into a branch whose every
    alternative starts with a literal (``y(?:ears|o)``: ``year``, ``yo``) and through one whose
    every alternative is a literal (``(?:ju|zyu)ni``: ``juni``, ``zyuni``); a group or a repeat of at
    least one gives its content's best set; a branch needs a set from every alternative (their
    union); optional parts, classes and look-arounds require nothing.

    ``despaced``: the strings are to be looked for in the text with its whitespace removed, so
    whitespace in the regex (``\\s*``, ``\\s+``, a space) does not end a run: ``s\\s*a\\s*i`` needs
    ``sai``. (Every match's letters are in the text in order with only whitespace between them.)"""
    if "(?" in source.replace("(?:", "").replace("(?=", "").replace("(?!", "").replace("(?<", ""):
        return []  # inline flags (?i) etc.: literals no longer match as written
    try:
        parsed = _sre_parse.parse(source)
    except re.error:
        return []
    if parsed.state.flags & re.IGNORECASE:
        return []
    return _seq_sets(list(parsed), despaced)


def _best(sets: list[frozenset[str]]) -> frozenset[str] | None:
    best = None
    for cand in sets:
        if best is None or (min(map(len, cand)), -len(cand)) > (min(map(len, best)), -len(best)):
            best = cand
    return best


def _seq_literals(items: list, despaced: bool = False) -> frozenset[str] | None:
    sets = _seq_sets(items, despaced)
    return _best(sets) if sets else None


#: The most strings a run that goes on into a branch may stand for.
_MAX_RUNS = 64


def _whitespace(op, av) -> bool:
    """Whether a parsed item matches whitespace only (a space, ``\\s``, or a repeat of either)."""
    c = _sre
    if op is c.LITERAL:
        return chr(av).isspace()
    if op is c.IN:
        return bool(av) and all((o is c.CATEGORY and a is c.CATEGORY_SPACE) or (o is c.LITERAL and chr(a).isspace())
                                for o, a in av)
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
        return len(av[2]) == 1 and _whitespace(*av[2][0])
    return False


def _lead(items: list, despaced: bool = False) -> tuple[str, bool]:
    """The literal run an alternative starts with, and whether that is all of it."""
    run = []
    for op, av in items:
        if despaced and _whitespace(op, av):
            continue
        if op is not _sre.LITERAL:
            return "".join(run), False
        run.append(chr(av))
    return "".join(run), True


def _seq_sets(items: list, despaced: bool = False) -> list[frozenset[str]]:
    c = _sre
    sets: list[frozenset[str]] = []
    run: set[str] = set()  # the literal strings one of which is matched just before here

    def keep(cand: frozenset[str] | None) -> None:
        if cand and all(cand):
            sets.append(cand)

    for op, av in items:
        if despaced and _whitespace(op, av):
            continue  # removed from the text: the run goes on
        if op is c.LITERAL:
            ch = chr(av)
            run = {r + ch for r in run} if run else {ch}
            continue
        alts = None
        if op is c.BRANCH:
            alts = [list(b) for b in av[1]]
        elif op is c.SUBPATTERN and len(av[-1]) == 1 and av[-1][0][0] is c.BRANCH:
            alts = [list(b) for b in av[-1][0][1][1]]
        if alts is not None:
            leads = [_lead(b, despaced) for b in alts]
            if all(lead for lead, _ in leads) and max(len(run), 1) * len(leads) <= _MAX_RUNS:
                if run or all(whole for _, whole in leads):
                    run = {r + lead for r in run or {""} for lead, _ in leads}
                if all(whole for _, whole in leads):
                    continue  # every alternative was its lead: the run goes on
        keep(frozenset(run))
        run = set()
        if alts is not None:
            subs = [_seq_literals(b, despaced) for b in alts]
            if all(subs):
                keep(frozenset().union(*subs))
        elif op is c.SUBPATTERN:
            keep(_seq_literals(list(av[-1]), despaced))
        elif op is c.IN and 0 < len(av) <= 16 and all(o is c.LITERAL for o, _ in av):  # (?:歳|才) is [歳才]
            keep(frozenset(chr(v) for _, v in av))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
            keep(_seq_literals(list(av[2]), despaced))
    keep(frozenset(run))
    return sets
