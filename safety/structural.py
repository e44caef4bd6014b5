"""Structural rules: classes of words that combine, so the policy generalises by class, not phrase.

The keyword policy raises a *signal* per term set (``minor``, ``nudity``...) and a category fires
when all the signals of one of its ``combinations`` are present. This module adds what a flat
term list cannot say:

* **Ages and school grades, generated** (``AGE_RULES``): an age under 18 in digits or in words in
  every supported language and in romaji, pinyin and Revised Romanisation (``twelve years old``,
  ``zwölfjährig``, ``dodici anni``, ``двенадцати лет``, ``十二歳``, ``juuni-sai``, ``shi er sui``,
  ``yeoldu sal``), and school grades (``6th grade``, ``CM2``, ``7. Klasse``, ``6º ano``,
  ``terza media``, ``5 класса``, ``小5``, ``初二``, ``5학년``, ``초6``). They raise ``minor``.
* **Romanised views** (``safety.romanize``): every kana or Hangul term of a term set, and the
  terms of a set named ``<signal>_romanized``, also match the prompt typed in Latin letters;
  they raise ``<signal>``.
* **Co-occurrence within a window** (``NEAR_RULES``): two classes close to each other, optionally
  with a linking word between them (``<protected group> ... as ... <vermin>``), raise a *derived*
  signal. A policy declares a derived signal as an empty term set so categories can combine it
  (``dehumanizing_pair: {}``); if a rule's input sets are missing from a policy it never fires.
* **Boolean rules** (``attack_depiction``): a named real attack with its victims' bodies, or with
  its victims in a photographic style, unless the prompt is about a memorial.
* **Contexts that lower a flag** (``lower``): a medical/anatomy or fine-art context turns a
  ``nudity`` flag raised only by nudity or anatomy words into an allow. Never with a minor, a
  real person, or a sexual, explicit, undressing or suggestive signal; never ``minors_sexual``.

Everything is compiled once per policy; a check adds a few regex searches over the prompt's views.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from safety.normalize import (Memo, NormalizedText, has_unspaced_script, normalize_compact, normalize_pattern,
                              normalize_term)
from safety.romanize import fold, kana_to_romaji, romanizations, syllable_regex, syllables
from safety.term_regex import (ANY, PREFIX, WORD, LiteralIndex, TrieGroup, compile_terms, literal_prefilter,
                               phrase_literals, required_literals)
from safety.verdict import Action, Verdict

ROMANIZED_SUFFIX = "_romanized"
#: Signals whose kana and Hangul terms are also matched romanised (the content signals people
#: type in Latin letters to evade; contexts and links are not worth the time).
ROMANIZED_SIGNALS = frozenset({"minor", "nudity", "undress", "sexual", "explicit", "suggestive", "anatomy",
                               "real_person_ref"})
#: Romanised forms generated from kana/Hangul terms shorter than this are too likely to be other
#: words (``agi``, ``ero``); list such forms by hand in ``<signal>_romanized`` where needed.
MIN_GENERATED_ROMANIZATION = 5


_CYRILLIC = re.compile("[\u0400-\u04ff]")


# -- ages and school grades --------------------------------------------------------------------
def _alt(words: Iterable[str]) -> str:
    return "(?:" + "|".join(sorted(set(words), key=len, reverse=True)) + ")"


_DIG = r"(?:[1-9]|1[0-7])"
#: After "girl 12", "niña de 12": not a size, a weight, an amount, a time or a count.
_NOT_UNIT = (r"(?!\s*(?:cm|mm|kg|g|m|ft|feet|foot|inch\w*|lbs?|pounds?|%|percent|dollars?|euros?|usd|eur|reais|"
             r"pesos|metros?|metri|metres?|meter|minutes?|minutos?|minuti|hours?|horas?|ore|heures?|stunden?|days?|"
             r"d[ií]as|giorni|jours?|tage?|weeks?|months?|times|veces|vezes|volte|fois|mal|pm|am|px|k|mp|st|nd|rd|th)\b)")

_NUM = {
    "en": ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"],
    "es": ["dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez", "once", "doce", "trece",
           "catorce", "quince", "dieciséis", "diecisiete", "dieci seis", "dieci siete"],
    "pt": ["dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove", "dez", "onze", "doze", "treze",
           "catorze", "quatorze", "quinze", "dezesseis", "dezasseis", "dezessete", "dezassete"],
    "it": ["due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove", "dieci", "undici", "dodici",
           "tredici", "quattordici", "quindici", "sedici", "diciassette"],
    "fr": ["deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "onze", "douze", "treize",
           "quatorze", "quinze", "seize", "dix sept"],
    "de": ["zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf", "zwölf",
           "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn"],
    "ru": ["два", "две", "двух", "три", "трёх", "четыре", "четырёх", "пять", "пяти", "шесть",
           "шести", "семь", "семи", "восемь", "восьми", "девять", "девяти", "десять", "десяти", "одиннадцать",
           "одиннадцати", "двенадцать", "двенадцати", "тринадцать", "тринадцати", "четырнадцать", "четырнадцати",
           "пятнадцать", "пятнадцати", "шестнадцать", "шестнадцати", "семнадцать", "семнадцати"],
}
#: Russian compound stems: "двенадцатилетняя", "пятилетний".
_RU_STEMS = ["двух", "трёх", "трех", "четырёх", "четырех", "пяти", "шести", "семи", "восьми", "девяти",
             "десяти", "одиннадцати", "двенадцати", "тринадцати", "четырнадцати", "пятнадцати", "шестнадцати",
             "семнадцати"]
_PERSON = {
    "en": ["girl", "boy", "daughter", "son", "sister", "brother", "niece", "nephew", "kid", "child", "stepdaughter",
           "stepsister", "stepson", "stepbrother", "cousin", "pupil", "student"],
    "es": ["niña", "niño", "nena", "nene", "chica", "chico", "chamaca", "chamaco", "chava", "chavo", "morra",
           "morro", "piba", "pibe", "chamaquita", "chamaquito", "chamakita", "chamakito", "hija", "hijo", "hermana", "hermano", "hermanita", "hermanito", "sobrina",
           "sobrino", "alumna", "alumno", "prima", "primo"],
    "pt": ["menina", "menino", "garota", "garoto", "guria", "guri", "filha", "filho", "irmã", "irmãzinha",
           "irmão", "sobrinha", "sobrinho", "aluna", "aluno", "novinha", "novinho", "mina", "moleca", "moleque"],
    "it": ["bambina", "bambino", "ragazzina", "ragazzino", "ragazza", "ragazzo", "figlia", "figlio", "sorella",
           "sorellina", "fratello", "fratellino", "nipote", "alunna", "alunno", "cugina", "cugino"],
    "fr": ["fille", "fillette", "garçon", "gamine", "gamin", "gosse", "fils", "sœur", "soeur", "frère", "nièce",
           "neveu", "élève", "cousine", "petite", "petit", "ado"],
    "de": ["mädchen", "junge", "tochter", "sohn", "schwester", "bruder", "nichte", "neffe", "schülerin", "schüler",
           "kleine", "kleiner", "cousine", "enkelin"],
}


def _plural(words: Iterable[str]) -> list[str]:
    return [w + "(?:s|es)?" for w in words]


def _view_age_patterns() -> list[str]:
    """Ages and grades in the spaced views (Latin and Cyrillic; already normalised)."""
    en = _alt([_DIG, *_NUM["en"]])
    es, pt, it, fr, de = (_alt([_DIG, *_NUM[k]]) for k in ("es", "pt", "it", "fr", "de"))
    ru = _alt([_DIG, *_NUM["ru"]])
    person = _alt(_plural(w for k in _PERSON for w in _PERSON[k]))
    ordinal_en = _alt(["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
                       "eleventh", "twelfth", "1st", "2nd", "3rd", "[4-9]th", "1[0-2]th"])
    ord_es = _alt(["primero", "primer", "segundo", "tercero", "tercer", "cuarto", "quinto", "sexto", "[1-6]\\s*(?:o|a|ro|do|to|er)?"])
    ord_it = _alt(["prima", "seconda", "terza", "quarta", "quinta", "[1-5]\\s*a?"])
    ord_pt = _alt(["primeiro", "segundo", "terceiro", "quarto", "quinto", "sexto", "sétimo", "oitavo", "nono",
                   "primeira", "segunda", "terceira", "quarta", "quinta", "sexta", "sétima", "oitava"])
    fr_grade = _alt(["cp", "ce1", "ce2", "cm1", "cm2", "sixième", "cinquième", "quatrième", "troisième", "6e", "5e",
                     "4e", "3e", "6ème", "5ème", "4ème", "3ème"])
    pats = [
        # en: "12 years old", "twelve-year-old", "12yo", "aged 12", "a girl of eleven", "she's nine"
        rf"\b{en}\s*(?:years?|yrs?|yr)\s*olds?\b",  # "12 year olds" too
        rf"\b{_DIG}\s*(?:yo|y o|yrs?)\b",
        rf"\b(?:aged?|age of|turned|turning)\s*{en}\b{_NOT_UNIT}",
        rf"\b{person}\s*(?:of|de|d|di|da|von|aged|age|mit|com|con)?\s*{_alt([en, es, pt, it, fr, de])}\b{_NOT_UNIT}",
        rf"\b(?:she|he)\s*(?:s|is|was)\s*(?:only|just|barely)?\s*{en}\b{_NOT_UNIT}",
        # school grades
        rf"\b{ordinal_en}\s*(?:grade|grader|graders)\b",
        rf"\bgrade\s*(?:[1-9]|1[0-2]|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b(?!\s*(?:steel|oil|beef|paper|quality|level))",
        r"\b(?:middle|high|elementary|primary|grade|junior high)\s*schoolers?\b",
        r"\b(?:middle|high|elementary|primary|grade)\s*school\s*(?:girl|boy|student|pupil|cheerleader|kid)s?\b",
        # es / pt / it / fr / de / ru ages: "once años", "doze anos", "dodici anni", "douze ans", "zwölf Jahre"
        rf"\b{es}\s*(?:años|añitos|anitos)\b",
        rf"\b{pt}\s*(?:anos|aninhos)\b",
        rf"\b{it}\s*(?:anni|annetti|anno)\b",
        rf"\b{fr}\s*(?:ans|piges|berges|printemps)\b",
        rf"\b{de}\s*(?:jahre|jahren|jahr|jährig\w*|jaehrig\w*|jahrig\w*)\b",
        rf"\b{ru}\s*(?:лет|года|год|годик\w*|годков|летн\w*|летк\w*)",
        rf"\b{_alt(_RU_STEMS)}\s*(?:летн\w*|летк\w*)",
        rf"\b{_DIG}\s*(?:let|goda|godik\w*)\b",
        # grades
        rf"\b{ord_es}\s*(?:de|grado de|año de)?\s*(?:primaria|secundaria|básica|basica|eso)\b",
        rf"\b{ord_es}\s*grado\b",
        r"\b(?:alumn[ao]s?|estudiantes?|colegial\w*)\s*de\s*(?:primaria|secundaria|kinder)\b",
        rf"\b[1-9]\s*[oa]\s*(?:ano|série|serie)\b",
        rf"\b{ord_pt}\s*(?:ano|série|serie)\s*(?:do|de)\s*(?:fundamental|ensino|primário|colegial)\b",
        r"\b(?:do|no|ensino)\s*fundamental\b",
        rf"\b{ord_it}\s*(?:elementare|elementari|media|medie)\b",
        r"\b(?:scuola|scuole)\s*(?:elementare|elementari|media|medie)\b",
        r"\b(?:ce1|ce2|cm1|cm2)\b",
        rf"\b(?:élève|élèves|eleve|eleves|classe|collégien\w*|fille\w*|garçon\w*|gamin\w*|gosse\w*|ado\w*|écoli\w*)\s*(?:de|du|en)\s*{fr_grade}\b",
        rf"\ben\s*(?:sixième|cinquième|quatrième|cm1|cm2|ce1|ce2)\b",
        # "élève de primaire", "fillette de maternelle" (not "école primaire" alone: its teachers are adults)
        r"\b(?:élève|élèves|eleve|eleves|écoli\w*|ecoli\w*|enfant\w*|fille\w*|garçon\w*|gamin\w*|gosse\w*)\s*(?:de|du|en|à la|à l)\s*(?:primaire|maternelle)\b",
        r"\b(?:[1-9]|1[0-2])\s*klasse\b",
        # "Junge aus der sechsten Klasse", "geht in die achte Klasse": an inflected ordinal with a pupil or
        # a school verb (alone "zweiter Klasse" is a train or a flight)
        r"\b(?:schüler\w*|schulkind\w*|mädchen|junge|jungen|kind|kinder|tochter|sohn|klassenkamerad\w*)\s*(?:aus\s*)?(?:der|die)\s*(?:erst|zweit|dritt|viert|fünft|sechst|siebt|acht|neunt)(?:e|en|er)\s*klasse\b",
        r"\b(?:geht|gehen|ging|gingen|kommt|kam)\s*in\s*die\s*(?:erst|zweit|dritt|viert|fünft|sechst|siebt|acht|neunt)e\s*klasse\b",
        r"\b(?:erst|zweit|dritt|viert|fünft|sechst|siebt|acht|neunt|zehnt)kl(?:ä|a|ae)ssler\w*",
        r"\b(?:[1-9]|1[01])\s*(?:го\s*|ого\s*)?класс\w*",
        r"\b(?:перв|втор|трет|четвёрт|четверт|пят|шест|седьм|восьм|девят)\w*\s*класс\w*",
        r"\b(?:перво|второ|третье|четверо|пяти|шести|семи|восьми|девяти)классни\w*",
        r"\b[1-9]\s*(?:klass|klassa)\b",
    ]
    return [normalize_pattern(p) for p in pats]


_AGE_HINT_WORDS = [*(w for k in _NUM for w in _NUM[k]), *_RU_STEMS, "grade", "grader", "graders", "schooler",
                   "schoolers", "aged", "age", "turned", "turning", "primaria", "secundaria", "basica", "básica",
                   "eso", "grado", "fundamental", "elementare", "elementari", "media", "medie", "sixième",
                   "cinquième", "quatrième", "troisième", "première", "primero", "segundo", "tercero", "cuarto",
                   "quinto", "sexto", "primer", "tercer", "prima", "seconda", "terza", "quarta", "quinta",
                   "primeiro", "terceiro", "quarto", "sétimo", "oitavo", "nono", "primeira", "segunda",
                   "terceira", "sexta", "sétima", "oitava", "perv", "класс", "класса", "классе", "классов",
                   "cm1", "cm2", "ce1", "ce2", "cp", "primaire", "maternelle"]
_AGE_HINT_FRAGMENTS = r"\b(?:1[0-7]|[1-9])(?![0-9]|(?:k|p|x|px|mp|fps|mm|d)\b)|j(?:ä|a|ae)hrig|kl(?:ä|a|ae)ssler|klass|класс|летн|летк|enne\b|grade"


def _compact_age_patterns() -> list[str]:
    """Ages and grades inside compact views (Han, kana, Hangul with spaces removed)."""
    kanji = r"(?:十[一二三四五六七]|[一二三四五六七八九十两兩])"
    kana = (r"(?:じゅう(?:いち|に|さん|よん|し|ご|ろく|なな|しち)?|いち|さん|よん|ろく|なな|しち|はち|きゅう"
            r"|いっ|はっ|じゅっ|じっ)")
    pats = [
        # not the end of a larger number: 二十歳 and 21歳 are adults
        rf"(?<![0-9０-９一二三四五六七八九十百千])(?:{_DIG}|{kanji})(?:歳|才|さい|岁|歲|周岁|週歲)",
        rf"{kana}さい",
        # grades: 小5, 中2, 小学5年, 中学2年, 高校1年 / 五年级, 初二, 國二 / 5학년, 초등학교 5학년
        r"小(?:学校?)?(?:[1-6]|[一二三四五六])(?:年生?)?(?![0-9０-９月日時分号])",
        r"中(?:学校?)?(?:[1-3]|[一二三])(?:年生?)?(?![0-9０-９月日時分号階])",
        r"高校(?:[1-3]|[一二三])年",
        r"(?:[1-6]|[一二三四五六])年[级級]",
        r"(?:初|國|国)[一二三](?=女|男|学|學|生|的|小|妹)",
        r"(?:国小|國小)(?:[1-6]|[一二三四五六])?",
        r"(?<!대학교)(?<!대학)(?<!대)[1-6]학년",
        r"십[일이삼사오육칠]?세(?![상대기계금트])",
    ]
    return [normalize_pattern(p) for p in pats]


#: Japanese slang for primary/middle/high-school girls, typed in Latin letters (one list for the
#: patterns below and ``StructuralRules.signals``).
_ROMAJI_SCHOOLGIRL = frozenset({"jc", "js", "jk"})
_SCHOOLGIRL_ALT = "|".join(sorted(_ROMAJI_SCHOOLGIRL))
#: In spaced views: Korean grade abbreviations ("초6", "중 2": script edges put a space before the digit).
_VIEW_CJK_PATTERNS = [r"(?:^|\s)(?:초|중|고)\s*[1-6](?=\s|$)", rf"(?:^|\s)(?:{_SCHOOLGIRL_ALT})(?=\s|$)"]
_CJK_GRADE_TOKEN = re.compile(rf"(?:초|중|고)[1-6]|{_SCHOOLGIRL_ALT}")


def _romanized_age_patterns() -> list[str]:
    """Ages and grades typed in romaji, pinyin or Revised Romanisation, over fold views."""
    def alts(forms: Iterable[str]) -> str:
        return _alt(syllable_regex(fold(f))[2:-2] for f in forms)

    ja_nums = ["いち", "に", "さん", "よん", "し", "ご", "ろく", "なな", "しち", "はち", "きゅう", "く", "じゅう",
               "じゅういち", "じゅうに", "じゅうさん", "じゅうよん", "じゅうし", "じゅうご", "じゅうろく", "じゅうなな",
               "じゅうしち"]
    ja = alts(kana_to_romaji(n) for n in ja_nums)
    ja_special = alts(kana_to_romaji(n) for n in ("いっさい", "はっさい", "じゅっさい", "じっさい"))
    zh = alts(["yi", "er", "liang", "san", "si", "wu", "liu", "qi", "ba", "jiu", "shi", "shiyi", "shier", "shisan",
               "shisi", "shiwu", "shiliu", "shiqi"])
    ko_words = ["한", "두", "세", "네", "다섯", "여섯", "일곱", "여덟", "아홉", "열", "열한", "열두", "열세", "열네",
                "열다섯", "열여섯", "열일곱"]
    ko = _alt(syllable_regex(r)[2:-2] for w in ko_words for r in romanizations(w))
    return [
        rf"\b(?:{_DIG}|{ja})\s*sai\b", rf"\b{ja_special}\b",
        rf"\b(?:{_DIG}|{zh})\s*(?:zho\s*)?sui\b",
        rf"\b(?:{_DIG}|{ko})\s*sal\b",
        rf"\b{alts(['shou', 'chuu', 'shougaku', 'chuugaku'])}\s*(?:[1-6]|{alts(['ichi', 'ni', 'san', 'yon', 'go', 'roku'])})"
        rf"\s*{alts(['nensei', 'nen'])}\b",
        rf"\b(?:[1-6]|{alts(['yi', 'er', 'san', 'si', 'wu', 'liu'])})\s*{alts(['nianji'])}\b",
        rf"\b{alts(['chu', 'gao', 'guo'])}\s*{alts(['yi', 'er', 'san'])}\s*{alts(['nusheng', 'nansheng', 'xuesheng'])}\b",
        rf"\b[1-6]\s*{alts(['haknyeon', 'hangnyeon'])}\b",
    ]


# -- positional matching of term sets ------------------------------------------------------------
class _Positions:
    """One term set matched for positions: Latin/Cyrillic terms in views, unspaced-script terms in
    compact views."""

    def __init__(self, terms: Iterable[str], patterns: Iterable[str] = (), index: LiteralIndex | None = None) -> None:
        phrases: list[tuple[list[str], str]] = []
        unspaced: list[tuple[list[str], str]] = []
        for term in terms:
            if has_unspaced_script(term):
                unspaced.append(([normalize_compact(term.rstrip("*"))], ANY))
                continue
            words = normalize_term(term.rstrip("*")).split()
            if not words:
                continue
            if term.endswith("*"):
                phrases.append((words, PREFIX))
            elif len(words) == 1:
                phrases += [(words, WORD), ([words[0] + "s"], WORD), ([words[0] + "es"], WORD)]
            else:
                phrases.append((words, WORD))
        latin = compile_terms(phrases, plural=True)
        pats = [f"(?:{normalize_pattern(p)})" for p in patterns]
        if latin is not None:
            pats.insert(0, latin.pattern)
        self.latin = re.compile("|".join(pats)) if pats else None
        self.compact = compile_terms(unspaced, start="")
        # The strings one of which every match of ``latin`` holds (None: not known; always searched)
        self._index = index
        self._lits: frozenset[str] | None = None
        if index is not None and self.latin is not None:
            pat_lits = [required_literals(p) for p in pats[1 if latin is not None else 0:]]  # one of each
            if all(ls is not None for ls in pat_lits):
                self._lits = index.add(phrase_literals(phrases).union(*pat_lits))

    def may_hold(self, present: frozenset[str]) -> bool:
        """False when no Latin term or pattern can match a view holding just the strings ``present``."""
        if self.latin is None:
            return False
        return self._lits is None or self._index is None or not self._lits.isdisjoint(present)

    def _may_be_in(self, view: str) -> bool:
        """False when no Latin term or pattern can match ``view`` (``may_hold`` of its strings)."""
        return self.may_hold(self._index.present(view)) if self._index is not None else self.latin is not None

    def in_view(self, view: str) -> bool:
        """True when a Latin term or pattern matches somewhere in a spaced view."""
        return self._may_be_in(view) and self.latin.search(view) is not None

    def view_spans(self, view: str) -> list[tuple[int, int]]:
        """Matches in a spaced view as (first token, last token) indexes."""
        if not self._may_be_in(view):
            return []
        out = []
        for m in self.latin.finditer(view):
            if m.end() > m.start():
                out.append((view.count(" ", 0, m.start()), view.count(" ", 0, m.end() - 1)))
        return out

    def compact_spans(self, compact: str) -> list[tuple[int, int]]:
        """Matches in a compact view as (start, end) character offsets."""
        if self.compact is None:
            return []
        return [(m.start(), m.end()) for m in self.compact.finditer(compact) if m.end() > m.start()]


@dataclass(frozen=True)
class Near:
    """``a`` and ``b`` within ``window`` tokens (``cjk_window`` characters in compact views).

    With ``link``: a linking word must sit between them (its end at most ``max_gap`` short
    tokens before the later of the two), or in compact views anywhere from the pair's start to
    two characters after its end (Japanese and Korean put the link after the noun:
    ``ゴキブリとして``, ``바퀴벌레로 그린``). ``signal``: what it raises.
    """

    signal: str
    a: str
    b: str
    window: int
    cjk_window: int
    link: str | None = None
    max_gap: int = 2
    #: ``a`` must come first, and every word between ``a`` and ``b`` must be one of these
    #: (in spaced views; compact views only use the window).
    fillers: frozenset[str] | None = None


#: The windowed rules. Inputs are term-set names of the policy; a rule whose inputs are missing
#: never fires.
NEAR_RULES = (
    # a protected group drawn or described as vermin, insects, apes, a disease
    Near("dehumanizing_pair", "protected_group", "dehumanizing_metaphor", window=8, cjk_window=20,
         link="metaphor_link"),
    # ... or named with a word that is dehumanising whenever it is applied to people
    Near("dehumanizing_pair", "protected_group", "dehumanizing_noun", window=6, cjk_window=16),
    # cuts or scars where self-harm leaves them
    Near("selfharm_wound", "wound_site", "wound_mark", window=4, cjk_window=8),
    # "without any clothes on", "sin nada de ropa", "ohne jegliche Kleidung": the absence word first,
    # then only determiners before the garment ("no text, clothes rack" is not nudity)
    Near("nudity", "clothing_absence", "clothing_all", window=3, cjk_window=6, fillers=frozenset(
        normalize_term(w) for w in
        "a an any her his their my your the single one piece of de la el los las ningún ninguna nada "
        "le les des ses sa son aucun aucune die der den ihre seine jegliche jeglicher jegliches irgendwelche "
        "o os as uma um nenhuma nenhum il lo i gli alcun alcuna alcuno nessun nessuna niente di "
        "всякой всякого никакой никакого какой либо своей своего su sus mi tu seu sua seus suas suo suoi sue "
        "sein seine seinen ihr ihren mon ma mes".split())),
)
#: Derived signals of boolean rules (``_attack_depiction``).
ATTACK_DEPICTION = "attack_depiction"
#: Contexts that lower a nudity flag, the signals that may be lowered, and those that forbid it.
LOWERING_CONTEXTS = ("medical_context", "art_context")
LOWERABLE_SIGNALS = frozenset({"nudity", "anatomy"})
LOWERABLE_CATEGORIES = frozenset({"nudity"})
AGGRAVATING = frozenset({"minor", "sexual", "explicit", "undress", "suggestive", "real_person_ref",
                         "$protected_name", "$real_person_context"})
NEVER_LOWERED = "minors_sexual"
_SHORT_FILLER = 6


def _token_gap_ok(view: str, lo: int, hi: int) -> bool:
    """Tokens strictly between indexes lo and hi are short, non-verb fillers ("a", "filthy")."""
    toks = view.split()[lo + 1:hi]
    return all(len(t) <= _SHORT_FILLER and not t.endswith("ing") for t in toks)


class StructuralRules:
    """The structural rules compiled against one policy's term sets."""

    #: Signals of term sets these rules read from the prompt's signals (not by position).
    SIGNALS_READ = frozenset({*LOWERING_CONTEXTS, *AGGRAVATING} - {"$protected_name", "$real_person_context"})

    def __init__(self, term_sets: Mapping[str, object], signals_used: Iterable[str] | None = None,
                 index: LiteralIndex | None = None) -> None:
        """``signals_used``: the signals the policy's categories read; romanised matching is
        built only for those (default: every term set). ``index``: the policy's ``LiteralIndex``,
        which lets a view that holds none of a term set's strings skip its search."""
        used = set(term_sets) if signals_used is None else set(signals_used)
        self._view_age = re.compile("|".join(f"(?:{p})" for p in _view_age_patterns()))
        # The age patterns are long alternations, slow to try at every position: they run only
        # on a short stretch of text around each *anchor* (a digit, a number or grade word, a
        # fragment of an age or grade compound), found by one trie-shaped regex.
        words = sorted({t for w in _AGE_HINT_WORDS for t in normalize_term(w).split()})
        trie = compile_terms(([w], WORD) for w in words)
        self._age_anchor = re.compile(f"(?:{trie.pattern})|{normalize_pattern(_AGE_HINT_FRAGMENTS)}")
        #: whether a word holds an age anchor, remembered per word (``_is_minor_age``)
        self._anchored = Memo(lambda word: self._age_anchor.search(word) is not None)
        self._view_cjk = [re.compile(p) for p in _VIEW_CJK_PATTERNS]
        self._compact_age = re.compile("|".join(f"(?:{p})" for p in _compact_age_patterns()))
        self._roman_age = re.compile("|".join(f"(?:{p})" for p in _romanized_age_patterns()))
        #: finds, in a romanised view with its spaces removed, a string one of the age patterns needs:
        #: a view it finds nothing in is not searched (most views: the search tries every pattern
        #: at every word)
        self._roman_age_keys = literal_prefilter(_romanized_age_patterns(), despaced=True)
        # romanised terms: generated from kana/Hangul terms, plus <signal>_romanized sets
        forms: dict[str, set[tuple[tuple[str, ...], str]]] = {}
        #: one-word terms of the sexual-side <signal>_romanized sets (folded): what may stand beside
        #: "jc"/"js"/"jk" (``_romaji_beside``)
        self._romaji_words = frozenset(
            f for name, ts in term_sets.items() if name.endswith(ROMANIZED_SUFFIX) and name != "minor" + ROMANIZED_SUFFIX
            for t in getattr(ts, "terms", ()) if (f := fold(t.rstrip("*"))) and " " not in f)
        for name, ts in term_sets.items():
            terms = getattr(ts, "terms", ())
            if name.endswith(ROMANIZED_SUFFIX):
                base = name[: -len(ROMANIZED_SUFFIX)]
                forms.setdefault(base, set()).update((tuple(syllables(f)), WORD) for t in terms
                                                     if (f := fold(t.rstrip("*"))))
                continue
            if name not in used or name not in ROMANIZED_SIGNALS:
                continue
            for t in terms:
                cyrillic = _CYRILLIC.search(t) is not None
                for f in romanizations(t.rstrip("*")):
                    if len(f.replace(" ", "")) >= MIN_GENERATED_ROMANIZATION:
                        # a prefix term ("обнажен*") keeps matching any ending when romanised;
                        # a transliterated Russian word is typed whole ("pen is" is not "penis")
                        words = tuple(f.split()) if cyrillic else tuple(syllables(f))
                        forms.setdefault(name, set()).add((words, PREFIX if t.endswith("*") else WORD))
        # one trie per signal; spaces are optional between the letters of a romanised kana, Hangul
        # or pinyin term (``chodeung haksaeng``, ``luo ti``)
        self._romanized = TrieGroup(
            ((sig, [(list(w), end) for w, end in sorted(fs)]) for sig, fs in forms.items() if fs), despaced_gate=True)
        needed = {n for r in NEAR_RULES for n in (r.a, r.b, r.link) if n}
        needed |= {"real_attack", "attack_event", "victim_body", "victims_word", "photoreal", "memorial_context"}
        self._pos = {n: _Positions(getattr(term_sets[n], "terms", ()), getattr(term_sets[n], "patterns", ()), index)
                     for n in needed if n in term_sets}
        self._near = tuple(r for r in NEAR_RULES if all(n in self._pos for n in (r.a, r.b, r.link) if n))

    # -- signals ---------------------------------------------------------------------------------
    def signals(self, text: NormalizedText, found: set[str]) -> set[str]:
        """Signals the structural rules add to ``found`` (the term sets' own signals)."""
        out = self.unpositioned(text, found)
        for rule in self._near:
            if rule.signal not in found and rule.signal not in out and self._near_match(rule, text):
                out.add(rule.signal)
        if self._attack_depiction(text, found):
            out.add(ATTACK_DEPICTION)
        return out

    def unpositioned(self, text: NormalizedText, found: set[str]) -> set[str]:
        """The signals of ``signals`` that no term set's position gives: ages and grades, romanised
        terms. The rest (``_near``, ``_attack_depiction``) need a term of a set in ``_pos`` in a
        view, which no view for which ``possible`` is False holds."""
        out: set[str] = set()
        if "minor" not in found and self._is_minor_age(text):
            out.add("minor")
        if text.romanized:
            out |= self._romanized.matching(text.romanized, skip=found)
            # "jc", "js", "jk" (Japanese slang for middle/primary/high-school girls): only with a
            # word of a <signal>_romanized set within two words ("jc zenra"), never alone
            # (JavaScript, JC Penney, JK Rowling) nor beside an English word ("topless")
            if "minor" not in found and not text.tokens.isdisjoint(_ROMAJI_SCHOOLGIRL) and self._romaji_beside(text):
                out.add("minor")
        return out

    def possible(self, present: frozenset[str]) -> bool:
        """False when neither a windowed rule (``_near``: both of its sets) nor an attack rule (a
        named attack or an attack event) can find its terms in a spaced view holding just the
        strings ``present`` (``LiteralIndex.present``). Compact views are not covered."""
        pos = self._pos
        return any(pos[r.a].may_hold(present) and pos[r.b].may_hold(present) for r in self._near) or \
            any(n in pos and pos[n].may_hold(present) for n in ("real_attack", "attack_event"))

    def _romaji_beside(self, text: NormalizedText) -> bool:
        """A romanised-set word (folded) within two words of ``jc``/``js``/``jk`` in a spaced view."""
        for view in text.views:
            toks = view.split()
            for i, t in enumerate(toks):
                if t in _ROMAJI_SCHOOLGIRL and any(fold(w) in self._romaji_words
                                                   for w in toks[max(0, i - 2):i] + toks[i + 1:i + 3]):
                    return True
        return False

    def _is_minor_age(self, text: NormalizedText) -> bool:
        views = text.views
        if len(views) > 1 and not any(map(self._anchored.__getitem__, text.view_words())):
            views = ()  # no word of any view holds an anchor (the views share most of their words)
        for v in views:
            # Every anchor lies inside one word (a listed word, whole; a number; a fragment of a
            # compound), so a view none of whose words holds one has none: most views of a catalog.
            if not any(map(self._anchored.__getitem__, v.split())):
                continue
            for m in self._age_anchor.finditer(v):
                # from the start of the word three words back to the end of the word after the next
                lo = m.start()
                for _ in range(4):
                    lo = v.rfind(" ", 0, max(lo - 1, 0)) + 1 if lo > 0 else 0
                hi = m.end()
                for _ in range(3):
                    nxt = v.find(" ", hi + 1)
                    hi = len(v) if nxt < 0 else nxt
                if self._view_age.search(v, lo, hi):
                    return True
        if text.compact and (any(self._compact_age.search(c) for c in text.compact)
                             or any(rx.search(v) for rx in self._view_cjk for v in text.views)
                             or any(_CJK_GRADE_TOKEN.fullmatch(t) for t in text.tokens)):
            return True
        keys = self._roman_age_keys
        return any(self._roman_age.search(v) for v in text.romanized
                   if keys is None or keys.search(v.replace(" ", "")))

    def _near_match(self, rule: Near, text: NormalizedText) -> bool:
        a, b = self._pos[rule.a], self._pos[rule.b]
        link = self._pos[rule.link] if rule.link else None
        for view in text.views:
            sa = a.view_spans(view)
            if not sa:
                continue
            sb = b.view_spans(view)
            if not sb:
                continue
            sl = link.view_spans(view) if link else []
            for x in sa:
                for y in sb:
                    if x == y:
                        continue
                    first, second = (x, y) if x[0] <= y[0] else (y, x)
                    if second[0] - first[1] - 1 > rule.window:
                        continue
                    if rule.fillers is not None:
                        if first is x and x[1] < y[0] and all(
                                t in rule.fillers for t in view.split()[x[1] + 1:y[0]]):
                            return True
                        continue
                    if link is None:
                        return True
                    for l0, l1 in sl:
                        if first[1] < l0 and l1 < second[0] and second[0] - l1 - 1 <= rule.max_gap \
                                and _token_gap_ok(view, l1, second[0]):
                            return True
        for comp in text.compact:
            sa = a.compact_spans(comp)
            if not sa:
                continue
            sb = b.compact_spans(comp)
            if not sb:
                continue
            sl = link.compact_spans(comp) if link else []
            for x in sa:
                for y in sb:
                    lo, hi = min(x[0], y[0]), max(x[1], y[1])
                    if x == y or hi - lo > rule.cjk_window:
                        continue
                    if link is None or any(lo <= l0 and l0 <= hi + 2 and (l0, l1) not in (x, y) for l0, l1 in sl):
                        return True
        return False

    def _any(self, name: str, text: NormalizedText) -> bool:
        pos = self._pos.get(name)
        if pos is None:
            return False
        if any(pos.in_view(v) for v in text.views):
            return True
        return pos.compact is not None and any(pos.compact.search(c) for c in text.compact)

    def _attack_depiction(self, text: NormalizedText, found: set[str]) -> bool:
        """A real attack's victims shown: their bodies, or the victims in a photographic style
        (unless the prompt is about a memorial); or any attack's bodies, photographed."""
        named = self._any("real_attack", text)
        if not named and not self._any("attack_event", text):
            return False
        bodies = self._any("victim_body", text)
        photo = self._any("photoreal", text)
        if not named:
            return bodies and photo
        if bodies:
            return True
        return photo and self._any("victims_word", text) and not self._any("memorial_context", text)

    # -- lowering --------------------------------------------------------------------------------
    @staticmethod
    def lower(verdicts: list[Verdict], signals: set[str], version: str, stage: str) -> list[Verdict]:
        """Drop flags that a medical/anatomy or fine-art context explains (see module docstring)."""
        context = next((c for c in LOWERING_CONTEXTS if c in signals), None)
        if context is None or signals & AGGRAVATING:
            return verdicts
        kept, lowered = [], []
        for v in verdicts:
            combo = v.rule.removeprefix("combination:").split("+") if v.rule.startswith("combination:") else None
            if (v.category in LOWERABLE_CATEGORIES and v.category != NEVER_LOWERED and v.action is Action.FLAG
                    and combo is not None and set(combo) <= LOWERABLE_SIGNALS):
                lowered.append(v.category)
            else:
                kept.append(v)
        if not lowered:
            return verdicts
        return kept or [Verdict(stage, "none", 0.0, Action.ALLOW, version, 0,
                                f"lowered:{'+'.join(lowered)}:{context}")]
