"""Text normalisation that defeats common filter evasion before terms are matched.

The output is several *views* of one prompt (plain, two leetspeak readings, letter runs squeezed)
and the union of their tokens. Matching a term in any view counts, so each view may be wrong for
some words (``12yo`` read as leetspeak is ``izyo``) as long as another view is right.

Handled: case (casefold), Unicode compatibility forms (NFKC: fullwidth, circled, math letters,
half-width katakana), Latin combining marks (``nüdé``), Cyrillic/Greek/IPA lookalikes, leetspeak
(``nud3``, ``$ex``), letters split by punctuation (``n.u.d.e``, ``nu-de``) or by spaces
(``n u d e``, ``nu de``) and repeated letters (``nuuuude``).

Separators that render as nothing or as a dot (format characters such as zero-width space/joiner,
soft hyphen, bidi controls; middle dots ``·・‧•``; combining enclosures): one view reads them as a
word break (``nude<ZWSP>child`` is two words) and another deletes them (``nu<ZWSP>de`` is one),
and both are matched.

Scripts written without spaces (Han, kana, Hangul, Thai...): kana are folded to hiragana
(katakana and half-width katakana read the same), Hangul is kept as NFC syllables, and each view
also has a *compact* form with every space removed, in which such terms are matched as substrings
(``safety.prompt_rules``).

Doubled letters (``nuude``, ``nakked``): a token with a doubled letter also reads with every
doubled letter once, when that leaves 4+ letters. Romanised Japanese, Chinese and Korean: each view
also has a *romanized* form folded to one spelling (``safety.romanize.fold``), matched only against
romanised terms (``safety.structural``).

Not handled: words split into long halves (``chi ldren``), synonyms and euphemisms the policy does
not list, meaning expressed without any listed word.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from safety.romanize import fold, group1

# Lowercase lookalikes only: casefold runs first, so capital Cyrillic/Greek letters arrive here
# lowercased. Sources: Unicode confusables.txt, restricted to letters that render like ASCII.
_CONFUSABLES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ɡ": "g", "ь": "b", "г": "r", "п": "n", "и": "u",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w", "ς": "c", "σ": "o", "μ": "u", "ϲ": "c",
    # IPA / Latin extended lookalikes NFKC leaves alone
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɩ": "i", "ɪ": "i", "ʏ": "y", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d",
    "ᴇ": "e", "ᴋ": "k", "ᴍ": "m", "ᴏ": "o", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w",
    "ᴢ": "z", "ʀ": "r", "ɴ": "n", "ʜ": "h", "ʟ": "l", "ꜱ": "s", "ø": "o", "đ": "d", "ł": "l",
    "ß": "ss", "æ": "ae", "œ": "oe",
})
_LEET_BASE = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
              "@": "a", "$": "s", "€": "e", "+": "t", "!": "i"}
_LEET_I = str.maketrans({**_LEET_BASE, "1": "i", "|": "i"})
_LEET_L = str.maketrans({**_LEET_BASE, "1": "l", "|": "l"})
_LEET_CHARS = frozenset("013457 89@$€+!|") - {" "}


def _twice(m: re.Match[str]) -> str:
    """A run's letter twice (``boooobs`` -> ``boobs``)."""
    return m[1] * 2


_WORD = re.compile(r"[^\W_]+")
_RUN3 = re.compile(r"([^\W\d_])\1{2,}")
_DOUBLE = re.compile(r"([a-z])\1")
_LATIN = re.compile(r"[a-z]")

#: Visible separators people put between letters or words to split a term. Format characters
#: (category Cf) and combining enclosures (Me) are separators too; see ``_is_separator``.
_DOTS = frozenset("\u00b7\u0387\u2027\u2022\u2219\u22c5\u30fb\uff65\u2e31\ua78f\u16eb\u318d\u119e")
#: Combining marks dropped from their base letter: the diacritics of Latin, Greek and Cyrillic
#: (``nüdé``). Marks of other scripts (kana voicing, Indic vowel signs) are part of the letter.
_DROPPED_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_KATAKANA = str.maketrans({chr(c): chr(c - 0x60) for c in range(0x30A1, 0x30F7)})
#: Scripts written without spaces between words: their terms are matched as substrings.
_UNSPACED_RANGES = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u1100-\u11ff\u3040-\u30ff\u3130-\u318f"
                    "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uf900-\ufaff"
                    "\U00020000-\U0003134f")
_UNSPACED = re.compile(f"[{_UNSPACED_RANGES}]")
#: Where an unspaced script meets another word character ("kkkの", "luo照"): a word break, so
#: Latin, Cyrillic and digit terms embedded in Japanese or Chinese text are still whole tokens.
_SCRIPT_EDGE = re.compile(f"(?<=[{_UNSPACED_RANGES}])(?=[^\\W{_UNSPACED_RANGES}])|"
                          f"(?<=[^\\W{_UNSPACED_RANGES}])(?=[{_UNSPACED_RANGES}])")


def _is_separator(ch: str) -> bool:
    return ch in _DOTS or unicodedata.category(ch) in ("Cf", "Me", "Cs", "Co", "Cn")


def _fold(text: str) -> str:
    """Drop Latin/Greek/Cyrillic diacritics, recompose (Hangul, kana), fold kana, map lookalikes."""
    if text.isascii():
        return text
    text = _DROPPED_MARKS.sub("", unicodedata.normalize("NFD", text))
    text = unicodedata.normalize("NFC", text).translate(_KATAKANA).translate(_CONFUSABLES)
    return _SCRIPT_EDGE.sub(" ", text) if _UNSPACED.search(text) else text


def clean_views(text: str) -> tuple[str, ...]:
    """Unicode-level cleanup, as one or two strings: separators read as a space, and deleted.

    NFKC, casefold, Latin diacritics dropped, kana folded to hiragana, lookalikes mapped. Lone
    surrogates and unassigned code points count as separators, so no input makes this raise.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    if text.isascii():
        return (text,)
    if not any(_is_separator(ch) for ch in text):
        return (_fold(text),)
    spaced = "".join(" " if _is_separator(ch) else ch for ch in text)
    joined = "".join(ch for ch in text if not _is_separator(ch))
    return tuple(dict.fromkeys((_fold(spaced), _fold(joined))))


def clean(text: str) -> str:
    """The cleaned text with separators deleted (the form policy terms are written in)."""
    return clean_views(text)[-1]


def has_unspaced_script(text: str) -> bool:
    """True when ``text`` has letters of a script written without spaces (CJK, Hangul, Thai...)."""
    return _UNSPACED.search(text) is not None


def _collapse_single_letters(tokens: list[str], extra: set[str], runs: set[str]) -> list[str]:
    """Join runs of three or more one-character tokens: ``n u d e`` -> ``nude``."""
    out: list[str] = []
    run: list[str] = []
    for tok in tokens + [""]:
        if len(tok) == 1:
            run.append(tok)
            continue
        if len(run) >= 3:
            word = "".join(run)
            out.append(word)
            extra.update((word[1:], word[:-1]))  # "a n u d e": the article joined the word
            if len(word) >= 6:
                runs.add(word)  # "c h i l d p o r n": several words spelled out as one
        else:
            out.extend(run)
        run = []
        if tok:
            out.append(tok)
    return out


@dataclass(frozen=True, slots=True)
class NormalizedText:
    """Views of one prompt, each a space-joined token string, plus every token of every view."""

    views: tuple[str, ...]
    tokens: frozenset[str]
    #: Words spelled out letter by letter lose their boundaries; terms are searched INSIDE these.
    runs: tuple[str, ...] = ()
    #: Each view with every space removed, for terms of scripts written without spaces; empty
    #: when the prompt has no such letters.
    compact: tuple[str, ...] = ()
    #: Each view's Latin letters folded to one canonical romanisation (``safety.romanize.fold``),
    #: for romanised Japanese, Chinese and Korean terms only; empty when there are no Latin letters.
    romanized: tuple[str, ...] = ()
    #: Every word of every view (``tokens`` less the joined and doubled-letter extras), as
    #: ``normalize`` found them; None: worked out from ``views`` when asked (``view_words``).
    words: frozenset[str] | None = None

    def view_words(self) -> frozenset[str]:
        """Every word of every view: a prompt's views share most of their words, and what is
        looked up per word (``LiteralIndex``, the age anchors) is looked up once per distinct one."""
        if self.words is not None:
            return self.words
        return frozenset(w for v in self.views for w in v.split())


#: How many entries a ``Memo`` holds before it starts again. A catalog's words that recur are few
#: (each row's SKU is new), and 16,384 cost an API process 34 MB over a 10,000-row plan.
_MEMO_MAX = 2048


class Memo(dict):
    """``fn(key)`` of one word or chunk, remembered: a catalog's prompts share most of their words, so
    the per-chunk and per-word steps of normalisation (and ``safety.structural``'s age anchors) are
    worked out once per distinct one. Looked up with ``map(memo.__getitem__, ...)``. A value depends
    only on its key, so the memo is cleared when it holds ``size`` entries and concurrent use at worst
    works a value out twice."""

    __slots__ = ("fn", "size")

    def __init__(self, fn, size: int = _MEMO_MAX) -> None:
        super().__init__()
        self.fn, self.size = fn, size

    def __missing__(self, key):
        if len(self) >= self.size:
            self.clear()
        value = self[key] = self.fn(key)
        return value


def _chunk_parts(chunk: str) -> tuple[tuple[str, ...], str | None, int]:
    """A chunk's words; the joined form, added as an extra token, when it is several words
    (``n.u.d.e`` and ``nu.de`` are one word; ``nu-de`` and ``kid's`` are two and also ``nude``,
    ``kids``); and how many of its words are one character long."""
    parts = _WORD.findall(chunk)
    joined = None
    if len(parts) > 1:
        joined = "".join(parts)
        if all(len(p) <= 2 for p in parts):
            parts, joined = [joined], None
    return tuple(parts), joined, sum(len(p) == 1 for p in parts)


def _leet_chunk(chunk: str) -> tuple[str, str]:
    """A chunk read as leetspeak with ``1``/``|`` as ``i`` and as ``l``; unchanged when it has no
    letter ("4k", "1080p" stay digits, and "12yo" keeps its meaning)."""
    if any(ch.isalpha() for ch in chunk):
        return chunk.translate(_LEET_I), chunk.translate(_LEET_L)
    return chunk, chunk


def _single_letters(tok: str) -> str | None:
    """``nuude`` -> ``nude``: every doubled letter once, when 4+ letters are left (None otherwise)."""
    if not _DOUBLE.search(tok):
        return None
    single = _DOUBLE.sub(group1, tok)
    return single if len(single) >= 4 else None


_PARTS = Memo(_chunk_parts)
_LEET_CHUNKS = Memo(_leet_chunk)
_SINGLE = Memo(_single_letters)
#: ``fold`` of one token. Every step of ``fold`` stays inside a token (letters, a digit between
#: letters, runs of one letter), so a view's fold is its tokens' folds joined.
_FOLDED = Memo(fold)


def _fold_tokens(tokens: list[str]) -> str:
    """``fold`` of a view, from its tokens, a token at a time (``_FOLDED``)."""
    return " ".join(filter(None, map(_FOLDED.__getitem__, tokens)))


def _view(chunks: list[str], extra: set[str], runs: set[str], remove: re.Pattern[str] | None) -> str:
    pieces: list[str] = []
    singles = 0  # one-letter words
    for parts, joined, ones in map(_PARTS.__getitem__, chunks):
        if joined is not None:
            extra.add(joined)
        pieces += parts
        singles += ones
    # a run of three or more one-letter words is spelled out ("n u d e"): needs three of them
    text = " ".join(_collapse_single_letters(pieces, extra, runs) if singles >= 3 else pieces)
    if remove is not None:
        cut = remove.sub(" ", text)
        if cut is not text:  # ``sub`` returns its argument itself when nothing matched
            text = " ".join(cut.split())
    toks = text.split()
    for prev, tok in zip(toks, toks[1:]):
        # "nu de", "s ex", "nud e": a word split by one space. Longer halves ("pen is") are
        # real words far more often than evasions, so they are left alone.
        if (len(prev) <= 2 and len(tok) <= 2) or min(len(prev), len(tok)) == 1:
            extra.add(prev + tok)
    return text


def normalize(text: str, remove: re.Pattern[str] | None = None,
              exceptions: re.Pattern[str] | None = None) -> NormalizedText:
    """Normalise ``text`` into matching views; see the module docstring for what is defeated.

    ``remove`` (the policy's allow-phrases) is cut out of every view before tokens are taken, so
    an allowed phrase contributes no words at all. ``exceptions`` (benign compounds of unspaced
    scripts) are cut out of the compact views, leaving a break so no new word forms across them.
    """
    extra: set[str] = set()
    runs: set[str] = set()
    views: list[str] = []
    for base in clean_views(text):
        chunks = base.split()
        views.append(_view(chunks, extra, runs, remove))
        if not _LEET_CHARS.isdisjoint(base):
            # Only chunks that contain a letter are read as leetspeak (``_leet_chunk``); a reading
            # that changes no chunk is the plain view again and is skipped.
            read = list(map(_LEET_CHUNKS.__getitem__, chunks))
            for i in (0, 1):
                leet = [r[i] for r in read]
                if leet != chunks and (i == 0 or leet != [r[0] for r in read]):
                    views.append(_view(leet, extra, runs, remove))
    for v in list(views):
        if _RUN3.search(v):
            for squeezed in (_RUN3.sub(group1, v), _RUN3.sub(_twice, v)):  # "nuuude", "boooobs"
                views.append(remove.sub(" ", squeezed) if remove is not None else squeezed)
    views = list(dict.fromkeys(views))
    split = [v.split() for v in views]
    words = frozenset().union(*split)
    tokens = extra | words
    for tok in list(extra):
        if _RUN3.search(tok):
            tokens.add(_RUN3.sub(group1, tok))
    # "nuude", "nakked", "sexxy": a doubled letter read once (``_single_letters``)
    singles = set(map(_SINGLE.__getitem__, tokens))
    singles.discard(None)
    tokens |= singles
    compact: tuple[str, ...] = ()
    if has_unspaced_script(views[0]) or (len(views) > 1 and any(map(has_unspaced_script, views[1:]))):
        compact = tuple(dict.fromkeys(v.replace(" ", "") for v in views))
        if exceptions is not None:
            compact = tuple(exceptions.sub("|", c) for c in compact)
    romanized: tuple[str, ...] = ()
    if any(_LATIN.search(v) for v in views):
        romanized = tuple(dict.fromkeys(f for toks in split if (f := _fold_tokens(toks))))
    return NormalizedText(views=tuple(views), tokens=frozenset(tokens), runs=tuple(sorted(runs)), compact=compact,
                          romanized=romanized, words=words)


def normalize_term(term: str) -> str:
    """Normalise a policy term the way prompts are (plain view only), so both sides agree."""
    return " ".join(_WORD.findall(clean(term)))


def normalize_compact(term: str) -> str:
    """A term of an unspaced script as it appears in ``NormalizedText.compact``: no spaces."""
    return "".join(_WORD.findall(clean(term)))


def normalize_pattern(pattern: str) -> str:
    """A policy regex with its non-ASCII letters normalised like prompts (``голая`` -> ``roлaя``).

    ASCII is left alone so escapes such as ``\\b`` and ``\\S`` keep their meaning.
    """
    if pattern.isascii():
        return pattern
    return "".join(ch if ch.isascii() else re.escape(clean(ch)) if clean(ch) else "" for ch in pattern)
