"""Text normalisation that defeats common filter evasion before terms are matched.

The output is several *views* of one prompt (plain, two leetspeak readings, letter runs squeezed)
and the union of their tokens. Matching a term in any view counts, so each view may be wrong for
some words (``12yo`` read as leetspeak is ``izyo``) as long as another view is right.

Handled: case (casefold), Unicode compatibility forms (NFKC: fullwidth, circled, math letters),
combining marks (``nüdé``), invisible format characters (zero-width space/joiner, soft hyphen,
bidi controls), Cyrillic/Greek/IPA lookalikes, leetspeak (``nud3``, ``$ex``), letters split by
punctuation (``n.u.d.e``, ``nu-de``) or by spaces (``n u d e``, ``nu de``) and repeated letters
(``nuuuude``). Not handled: two-letter doubling (``nuude``), words split into long halves
(``chi ldren``), translation into other languages.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

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

_WORD = re.compile(r"[^\W_]+")
_RUN3 = re.compile(r"([^\W\d_])\1{2,}")


def clean(text: str) -> str:
    """Unicode-level cleanup: NFKC, casefold, drop marks and invisible characters, map lookalikes."""
    text = unicodedata.normalize("NFKC", text).casefold()
    # NFD splits accents off their base letter so they can be dropped; Cf covers zero-width
    # characters, soft hyphens and bidi controls, which render as nothing and split words.
    decomposed = unicodedata.normalize("NFD", text)
    if not decomposed.isascii():
        decomposed = "".join(
            ch for ch in decomposed if unicodedata.category(ch) not in ("Mn", "Me", "Cf")
        ).translate(_CONFUSABLES)
    return decomposed


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


def _view(chunks: list[str], extra: set[str], runs: set[str], remove: re.Pattern[str] | None) -> str:
    pieces: list[str] = []
    for chunk in chunks:
        parts = _WORD.findall(chunk)
        if len(parts) > 1:
            joined = "".join(parts)
            if all(len(p) <= 2 for p in parts):  # "n.u.d.e", "nu.de": one word, not several
                parts = [joined]
            else:
                extra.add(joined)  # "nu-de", "kid's" -> also "nude", "kids"
        pieces.extend(parts)
    text = " ".join(_collapse_single_letters(pieces, extra, runs))
    if remove is not None:
        text = " ".join(remove.sub(" ", text).split())
    toks = text.split()
    for prev, tok in zip(toks, toks[1:]):
        # "nu de", "s ex", "nud e": a word split by one space. Longer halves ("pen is") are
        # real words far more often than evasions, so they are left alone.
        if (len(prev) <= 2 and len(tok) <= 2) or min(len(prev), len(tok)) == 1:
            extra.add(prev + tok)
    return text


def normalize(text: str, remove: re.Pattern[str] | None = None) -> NormalizedText:
    """Normalise ``text`` into matching views; see the module docstring for what is defeated.

    ``remove`` (the policy's allow-phrases) is cut out of every view before tokens are taken, so
    an allowed phrase contributes no words at all.
    """
    base = clean(text)
    chunks = base.split()
    extra: set[str] = set()
    runs: set[str] = set()
    views = [_view(chunks, extra, runs, remove)]
    if any(ch in _LEET_CHARS for ch in base):
        # Only chunks that contain a letter are read as leetspeak: "4k", "1080p" stay digits in
        # the plain view either way, and "12yo" keeps its meaning there.
        for table in (_LEET_I, _LEET_L):
            leet = [c.translate(table) if any(ch.isalpha() for ch in c) else c for c in chunks]
            views.append(_view(leet, extra, runs, remove))
    for v in list(views):
        if _RUN3.search(v):
            for squeezed in (_RUN3.sub(r"\1", v), _RUN3.sub(r"\1\1", v)):  # "nuuude", "boooobs"
                views.append(remove.sub(" ", squeezed) if remove is not None else squeezed)
    views = list(dict.fromkeys(views))
    tokens = set(extra)
    for v in views:
        tokens.update(v.split())
    for tok in list(extra):
        if _RUN3.search(tok):
            tokens.add(_RUN3.sub(r"\1", tok))
    return NormalizedText(views=tuple(views), tokens=frozenset(tokens), runs=tuple(sorted(runs)))


def normalize_term(term: str) -> str:
    """Normalise a policy term the way prompts are (plain view only), so both sides agree."""
    return " ".join(_WORD.findall(clean(term)))
