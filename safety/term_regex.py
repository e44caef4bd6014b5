"""Many literal terms compiled into ONE regex shaped like a trie.

Python's ``re`` tries an alternation ``a|b|c|...`` branch by branch at every position, so a
policy with hundreds of phrases in eleven languages cost about a millisecond a prompt. Sharing
prefixes (``self harm``, ``self injury`` -> ``self\\s*(?:harm|injury)``) lets a position fail on
its first character instead, which keeps the rules stage in the tens of microseconds.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

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
