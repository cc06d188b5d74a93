"""benchmarks/fashion_mnist/claims.py: claim 3 under the paper's premise, stated from fair_selection.json's numbers
(written here by hand)."""

from __future__ import annotations

import json

import pytest

from .scripts import load_script


@pytest.fixture(scope="module")
def claims():
    return load_script("benchmarks/fashion_mnist/claims.py")


def correlation(names, rho, low, high, p, p_neg, verdict):
    return {"teachers": names, "spearman": rho, "bootstrap_95": [low, high], "p_positive": p, "p_negative": p_neg,
            "seeds": 3, "verdict": verdict}


def write(root, applied, not_applied, ready):
    (root / "fair").mkdir(parents=True, exist_ok=True)
    (root / "fair" / "fair_selection.json").write_text(json.dumps({
        "premise": {"clean_tol": 0.02, "conf_tol": 0.03, "median_clean": 0.789, "median_conf": 0.902,
                    "kept": ready, "with_3_students": ready},
        "premise_applied": applied, "premise_not_applied": not_applied}))


def test_claim3_under_the_premise_reads_the_verdict_and_numbers(claims, tmp_path):
    assert claims.claim3_premise(tmp_path) is None  # no fair_selection.json: nothing to state
    five = list("abcde")
    write(tmp_path, correlation(five, -0.564, -1.0, 0.4, 0.85, 0.183, "undecided"),
          correlation(five + list("fghij"), -0.82, -0.93, -0.52, 0.997, 0.003, "did not hold"), five)
    lines, verdict = claims.claim3_premise(tmp_path)
    assert verdict == "**undecided**"
    assert "within 2 and 3 points of the pool's medians (78.9 and 90.2 %)" in lines[0]
    assert lines[2] == ("- premise applied (the paper's test): 5 teachers, 3 student seeds each; Spearman -0.56, "
                        "95% bootstrap interval [-1.00, +0.40], permutation p 0.850 (positive) / 0.183 (negative): "
                        "undecided")
    assert lines[3].startswith("- every candidate, premise NOT applied: 10 teachers") and lines[3].endswith(
        "did not hold")


def test_claim3_under_the_premise_without_enough_teachers_gives_no_verdict(claims, tmp_path):
    write(tmp_path, None, correlation(list("abcd"), 0.8, 0.2, 1.0, 0.04, 0.99, "held"), ["a", "b", "c"])
    lines, verdict = claims.claim3_premise(tmp_path)
    assert verdict == "no verdict"  # the secondary test's "held" does not become the claim's verdict
    assert lines[-1] == "- premise applied: 3 teachers meet it with 3 students, too few for a verdict"
