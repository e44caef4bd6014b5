"""Romanisation as a view: Japanese, Chinese and Korean written in Latin letters.

People evade a policy written in kana, Hangul and Han by typing the same words in Latin letters
(``hadaka``, ``chodeunghaksaeng``, ``luoti``). Romanisations vary (Hepburn, Kunrei and wapuro
romaji; pinyin with or without tones; Revised Romanisation and McCune-Reischauer-ish spellings;
hyphens, spaces, long-vowel marks), so a romanised term and a prompt are compared after
``fold``: both sides are reduced to one canonical spelling, and a term matches with optional
spaces between its syllables (``juuni-sai``, ``juunisai`` and ``juni sai`` read the same).

Two sources of romanised terms:

* Kana, Hangul and Cyrillic terms of the policy are romanised here mechanically
  (``kana_to_romaji``, ``hangul_to_rr``, ``cyrillic_to_latin``), so every such term also matches
  when typed in Latin letters (``golenkaya``).
* Han terms have no reading without a dictionary: their romanisations are listed in the policy
  under term sets named ``<signal>_romanized`` (pinyin, romaji of kanji words).

The fold view is matched ONLY against romanised terms, never against the policy's Latin-script
terms (``teen`` folds to ``ten``).
"""
from __future__ import annotations

import re
import unicodedata

# -- Hangul -> Revised Romanisation -------------------------------------------------------------
_INITIALS = ["g", "kk", "n", "d", "tt", "r", "m", "b", "pp", "s", "ss", "", "j", "jj", "ch", "k", "t", "p", "h"]
_VOWELS = ["a", "ae", "ya", "yae", "eo", "e", "yeo", "ye", "o", "wa", "wae", "oe", "yo", "u", "wo", "we", "wi",
           "yu", "eu", "ui", "i"]
_FINALS = ["", "k", "k", "k", "n", "n", "n", "t", "l", "k", "m", "l", "l", "l", "p", "l", "m", "p", "p", "t", "t",
           "ng", "t", "t", "k", "t", "p", "t"]
#: A final consonant read at the start of a following syllable that has no initial (``벗은`` -> beoseun).
_LIAISON = ["", "g", "kk", "gs", "n", "nj", "nh", "d", "r", "lg", "lm", "lb", "ls", "lt", "lp", "lh", "m", "b",
            "bs", "s", "ss", "ng", "j", "ch", "k", "t", "p", "h"]


def _syllables(text: str):
    for ch in text:
        code = ord(ch) - 0xAC00
        if 0 <= code < 11172:
            yield code // 588, (code % 588) // 28, code % 28
        else:
            yield None, ch, None


def hangul_to_rr(text: str) -> str:
    """Revised Romanisation of Hangul (other characters kept), with liaison of final consonants."""
    sylls = list(_syllables(unicodedata.normalize("NFC", text)))
    out: list[str] = []
    for i, (ini, vow, fin) in enumerate(sylls):
        if ini is None:
            out.append(vow)
            continue
        nxt = sylls[i + 1] if i + 1 < len(sylls) else None
        out.append(_INITIALS[ini] + _VOWELS[vow])
        if fin:
            if nxt is not None and nxt[0] == 11:  # next syllable starts with silent ㅇ: the final moves over
                out.append(_LIAISON[fin])
            else:
                out.append(_FINALS[fin])
    return "".join(out)


# -- kana -> Hepburn romaji ---------------------------------------------------------------------
_KANA = {
    "あ": "a", "い": "i", "う": "u", "え": "e", "お": "o", "か": "ka", "き": "ki", "く": "ku", "け": "ke", "こ": "ko",
    "さ": "sa", "し": "shi", "す": "su", "せ": "se", "そ": "so", "た": "ta", "ち": "chi", "つ": "tsu", "て": "te",
    "と": "to", "な": "na", "に": "ni", "ぬ": "nu", "ね": "ne", "の": "no", "は": "ha", "ひ": "hi", "ふ": "fu",
    "へ": "he", "ほ": "ho", "ま": "ma", "み": "mi", "む": "mu", "め": "me", "も": "mo", "や": "ya", "ゆ": "yu",
    "よ": "yo", "ら": "ra", "り": "ri", "る": "ru", "れ": "re", "ろ": "ro", "わ": "wa", "を": "o", "ん": "n",
    "が": "ga", "ぎ": "gi", "ぐ": "gu", "げ": "ge", "ご": "go", "ざ": "za", "じ": "ji", "ず": "zu", "ぜ": "ze",
    "ぞ": "zo", "だ": "da", "ぢ": "ji", "づ": "zu", "で": "de", "ど": "do", "ば": "ba", "び": "bi", "ぶ": "bu",
    "べ": "be", "ぼ": "bo", "ぱ": "pa", "ぴ": "pi", "ぷ": "pu", "ぺ": "pe", "ぽ": "po", "ゔ": "vu",
    "ぁ": "a", "ぃ": "i", "ぅ": "u", "ぇ": "e", "ぉ": "o",
}
_YOON = {"ゃ": "ya", "ゅ": "yu", "ょ": "yo"}
_KATAKANA = str.maketrans({chr(c): chr(c - 0x60) for c in range(0x30A1, 0x30F7)})


def kana_to_romaji(text: str) -> str:
    """Hepburn romaji of kana (katakana read as hiragana); other characters kept."""
    text = unicodedata.normalize("NFKC", text).translate(_KATAKANA)
    out: list[str] = []
    double = False
    for ch in text:
        if ch == "っ":
            double = True
            continue
        if ch in _YOON and out and out[-1].endswith("i") and len(out[-1]) > 1:
            base = out.pop()[:-1]  # "ki" + "ゃ" -> "kya"; "shi" + "ゃ" -> "sha"
            out.append(base + ("" if base in ("sh", "ch", "j") else "y") + _YOON[ch][1:])
            continue
        if ch == "ー":
            if out and out[-1]:
                out.append(out[-1][-1])
            continue
        roma = _KANA.get(ch, ch)
        if double and roma and roma[0].isalpha():
            roma = roma[0] + roma
        double = False
        out.append(roma)
    return "".join(out)


def group1(m: re.Match[str]) -> str:
    """The first group of a match: ``re.sub(group1, ...)`` is ``re.sub(r"\\1", ...)``, faster (a template
    is expanded in Python for every match)."""
    return m[1]


# -- folding ------------------------------------------------------------------------------------
_FOLDS = [
    # Japanese: Hepburn, Kunrei and wapuro spellings onto one
    ("tsu", "tu"), ("shi", "si"), ("chi", "ti"), ("sh", "sy"), ("ch", "ty"), ("jy", "j"), ("zy", "j"), ("fu", "hu"),
    ("ji", "zi"),
    # Korean: RR and the common informal/McCune-Reischauer spellings (ŏ, ŭ lose their marks upstream)
    ("eo", "o"), ("eu", "u"),
    # pinyin: ü written v or u
    ("v", "u"),
]
_FOLD_RE = re.compile("|".join(re.escape(a) for a, _ in _FOLDS))
_FOLD_MAP = dict(_FOLDS)
_TONE_DIGIT = re.compile(r"(?<=[a-z])[1-5](?=[a-z]|\b)")
_DOUBLE = re.compile(r"([a-z])\1+")
_NON_LATIN = re.compile(r"[^a-z0-9 ]+")


def fold(text: str) -> str:
    """A Latin string reduced to one canonical romanisation (both prompt views and terms).

    Long vowels (``ou``, ``oo``, ``uu``, macrons), doubled consonants, pinyin tone digits,
    Hepburn/Kunrei variants and RR/MR vowel spellings collapse; everything else is dropped.
    """
    if not text.isascii():  # macrons and tone marks: ``jūni``, ``luǒ``
        text = "".join(ch for ch in unicodedata.normalize("NFD", text) if not unicodedata.combining(ch))
    text = _TONE_DIGIT.sub("", text.lower())
    text = _NON_LATIN.sub(" ", text)
    text = _FOLD_RE.sub(lambda m: _FOLD_MAP[m.group(0)], text)
    text = text.replace("ou", "o").replace("oh", "o")
    text = _DOUBLE.sub(group1, text)
    return " ".join(text.split())


def syllables(folded: str) -> list[str]:
    """The pieces of a folded romanised term between which a space may be typed: every letter.

    Romanisations are split by users at syllable (``ju ni sai``), word (``chodeung haksaeng``)
    or arbitrary points; the term still has to start and end on a word boundary.
    """
    return list(folded.replace(" ", ""))


def syllable_regex(folded: str) -> str:
    """Regex source for a folded romanised term: spaces optional inside it, whole words
    (``zyunisai`` -> matches ``zyuni sai``, ``zyu ni sai``, ``zyunisai``)."""
    return r"\b" + r"\s*".join(re.escape(p) for p in syllables(folded)) + r"\b"


# -- Cyrillic -> Latin (the informal transliterations people type) --------------------------------
_CYR_A = {"а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "yo", "ж": "zh", "з": "z", "и": "i",
          "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t",
          "у": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "",
          "э": "e", "ю": "yu", "я": "ya"}
_CYR_B = {**_CYR_A, "ё": "e", "й": "j", "х": "h", "ц": "c", "щ": "sch", "ы": "i", "ю": "ju", "я": "ja"}


def cyrillic_to_latin(text: str) -> list[str]:
    """Two common transliterations of Cyrillic (``голенькая`` -> ``golenkaya``, ``golenkaja``)."""
    t = text.lower()
    return list(dict.fromkeys("".join(table.get(ch, ch) for ch in t) for table in (_CYR_A, _CYR_B)))


_CYRILLIC = re.compile("[\u0400-\u04ff]")
_HANGUL = re.compile("[\uac00-\ud7a3]")
_KANA_RE = re.compile("[\u3041-\u309f\u30a0-\u30ff\uff66-\uff9f]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def romanizations(term: str) -> list[str]:
    """Folded Latin spellings of a kana-only or Hangul-only term (empty for Han, Latin, mixed)."""
    t = unicodedata.normalize("NFKC", term).strip()
    if not t or _HAN.search(t):
        return []
    if _HANGUL.search(t) and not _KANA_RE.search(t):
        if re.search(r"[^\uac00-\ud7a3\s]", t):
            return []
        strict = fold(hangul_to_rr(t))
        plain = fold("".join(_INITIALS[i] + _VOWELS[v] + _FINALS[f] if i is not None else v
                             for i, v, f in _syllables(t)))
        return list(dict.fromkeys((strict, plain)))
    if _KANA_RE.search(t):
        if re.search(r"[^\u3041-\u309f\u30a0-\u30ff\uff66-\uff9f\s]", t):
            return []
        return [fold(kana_to_romaji(t))]
    if _CYRILLIC.search(t):
        if re.search(r"[^\u0400-\u04ff\s]", t):
            return []
        return list(dict.fromkeys(fold(x) for x in cyrillic_to_latin(t)))
    return []
