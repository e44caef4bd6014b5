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


class TrieGroup:
    """Which of several phrase tries match any of some texts, with one scan of each text for all.

    The phrases of every trie are merged into one more, searched zero-width: it stops at each
    position where some phrase of some trie matches, and only there is each trie tried, anchored
    (``regex.match(text, pos)``: a word boundary still sees the text before ``pos``). A trie matches
    somewhere exactly when it matches at one of those positions, so the answer is the one a
    ``search`` per trie gives, for one scan per text instead of one per trie."""

    def __init__(self, tries: Iterable[tuple[str, Iterable[tuple[list[str], str]]]], *, plural: bool = False) -> None:
        self._each: list[tuple[str, re.Pattern[str]]] = []
        every: list[tuple[list[str], str]] = []
        for key, phrases in tries:
            phrases = list(phrases)
            rx = compile_terms(phrases, plural=plural)
            if rx is not None:
                self._each.append((key, rx))
                every.extend(phrases)
        source = trie_pattern(every, plural=plural)
        self._starts = re.compile(f"(?={source})") if source else None

    def matching(self, texts: Iterable[str], skip: Iterable[str] = ()) -> set[str]:
        """The keys, other than those in ``skip``, whose trie matches one of ``texts``."""
        skip = set(skip)
        todo = [(key, rx) for key, rx in self._each if key not in skip]
        hit: set[str] = set()
        if self._starts is None:
            return hit
        for text in texts:
            for at in self._starts.finditer(text):
                pos = at.start()
                found = {key for key, rx in todo if rx.match(text, pos)}
                if found:
                    hit |= found
                    todo = [(key, rx) for key, rx in todo if key not in found]
                    if not todo:
                        return hit
        return hit


def required_literals(source: str) -> frozenset[str] | None:
    """Strings one of which every match of the regex ``source`` contains, or None when no such
    set is found (case-insensitive flags, a branch without a literal, ...).

    A prefilter: when a text contains none of them the regex cannot match it, so a ``search`` (which
    for ``\\b(?:take|takes|...)``-shaped policy patterns tries the alternation at every word) can be
    skipped for an ``in`` test. From the parsed regex: a run of literals is one string; a group or a
    repeat of at least one passes its content's set on; a branch needs a set from every branch
    (their union); optional parts, classes and look-arounds require nothing. Of a sequence's sets the
    most selective (longest shortest string) is kept."""
    if "(?" in source.replace("(?:", "").replace("(?=", "").replace("(?!", "").replace("(?<", ""):
        return None  # inline flags (?i) etc.: literals no longer match as written
    try:
        parsed = _sre_parse.parse(source)
    except re.error:
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    return _seq_literals(list(parsed))


def _seq_literals(items: list) -> frozenset[str] | None:
    c = _sre
    best: frozenset[str] | None = None

    def better(cand: frozenset[str] | None) -> None:
        nonlocal best
        if cand and all(cand) and (best is None or (min(map(len, cand)), -len(cand)) > (min(map(len, best)), -len(best))):
            best = cand

    run: list[str] = []
    for op, av in items:
        if op is c.LITERAL:
            run.append(chr(av))
            continue
        if run:
            better(frozenset(["".join(run)]))
            run = []
        if op is c.SUBPATTERN:
            better(_seq_literals(list(av[-1])))
        elif op is c.BRANCH:
            sets = [_seq_literals(list(b)) for b in av[1]]
            if all(sets):
                better(frozenset().union(*sets))
        elif op is c.IN and 0 < len(av) <= 16 and all(o is c.LITERAL for o, _ in av):  # (?:歳|才) is [歳才]
            better(frozenset(chr(v) for _, v in av))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
            better(_seq_literals(list(av[2])))
    if run:
        better(frozenset(["".join(run)]))
    return best

