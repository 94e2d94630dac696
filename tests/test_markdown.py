"""The one set of number formatters (selfrec_ft.markdown) every table uses."""

import math

from selfrec_ft import markdown as md


def test_numbers_intervals_estimates_and_percentages():
    assert md.num(0.12345) == "0.123" and md.num(0.12345, "+.2f") == "+0.12"
    assert md.num(None) == md.num(math.nan) == md.num(math.inf) == "–"
    assert md.num(-0.0004) == "0.000" and md.num(-0.001, "+.2f") == "+0.00"  # never a negative zero
    assert md.num(-0.0006) == "-0.001" and md.num(-2.5, ".1f") == "-2.5"
    assert md.ci([0.1, 0.25]) == "[0.100, 0.250]" and md.ci([1, 2], ".2f") == "[1.00, 2.00]"
    assert md.ci(None) == md.ci([]) == "–"
    block = {"mean": 0.5, "ci95": [0.4, 0.6], "position_biased": True}
    assert md.estimate(block) == "0.500 [0.400, 0.600]"
    assert md.estimate(block, biased=" †") == "0.500 [0.400, 0.600] †"
    assert md.estimate({**block, "position_biased": False}, biased=" †") == "0.500 [0.400, 0.600]"
    assert md.estimate({"delta": 0.1, "ci95": None}, "+.3f", key="delta") == "+0.100"
    assert md.estimate(None) == md.estimate({"mean": None}) == "–"
    assert md.pct(0.125) == "+12.5%" and md.pct(-0.5) == "-50.0%" and md.pct(None) == "–"
    assert md.table(["a", "b"], [["1", "2"]], ["---", "---:"]) == ["| a | b |", "|---|---:|", "| 1 | 2 |"]
