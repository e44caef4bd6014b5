"""Each evasion technique normalises back to the plain word."""
from __future__ import annotations

import pytest

from safety.normalize import normalize


@pytest.mark.parametrize(
    "evasion",
    [
        "NUDE",  # case
        "ｎｕｄｅ",  # fullwidth (NFKC)
        "𝐧𝐮𝐝𝐞",  # mathematical bold (NFKC)
        "nudе",  # Cyrillic ie
        "nυdε",  # Greek upsilon and epsilon
        "nu\u200bd\u200de",  # zero-width space and joiner
        "nu\u00adde",  # soft hyphen
        "nüdé",  # combining accents
        "nu\u0301de\u0308",  # bare combining marks
        "nud3",  # leetspeak
        "n00de".replace("00", "u"),  # sanity: plain stays plain
        "n.u.d.e",  # punctuation between letters
        "n-u-d-e",
        "n u d e",  # spaces between letters
        "nu de",  # one space inside the word
        "nuuuuude",  # repeated letters
    ],
)
def test_evasion_normalises_to_plain_word(evasion):
    assert "nude" in normalize(evasion).tokens


def test_leetspeak_with_dollar_and_at():
    assert {"sex", "ass"} <= normalize("$ex @ss").tokens


def test_digits_keep_their_meaning_in_plain_view():
    n = normalize("A 12-year-old's 4k photo")
    assert "12 year old" in n.views[0]


def test_letters_spelled_out_across_words_become_a_run():
    assert normalize("c h i l d p o r n").runs == ("childporn",)


def test_long_word_halves_are_not_joined():
    # "pen is" must not read as a sexual term; only short fragments are re-joined
    assert "penis" not in normalize("the pen is blue").tokens
