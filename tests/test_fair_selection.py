"""benchmarks/fashion_mnist/fair_selection.py: the premise filter, the permutation p-value and the verdict of the fair
teacher-selection experiment (issue 21, item 2), on run folders written here with numbers chosen by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from .scripts import load_script


@pytest.fixture(scope="module")
def fair():
    return load_script("benchmarks/fashion_mnist/fair_selection.py")


def test_permutation_p_counts_orderings(fair):
    def p(entropy, means):
        value, how = fair.permutation_p(entropy, means)
        assert how == f"exact, over the {len(means)}! orderings of the teachers"
        return value
    # 4 teachers in perfect order: only the identity ordering reaches rho = 1, so p = 1/24
    assert p([0.1, 0.2, 0.3, 0.4], [10, 20, 30, 40]) == pytest.approx(1 / 24)
    # 3 teachers can never go below 1/6
    assert p([0.1, 0.2, 0.3], [1, 2, 3]) == pytest.approx(1 / 6)
    # reversed order: every ordering has rho >= -1
    assert p([0.1, 0.2, 0.3, 0.4], [40, 30, 20, 10]) == 1.0
    # swapping the top two (rho = 0.8): the orderings with rho >= 0.8 are the identity and 3 single swaps of
    # neighbours (sum d^2 = 2), so 4/24
    assert p([0.1, 0.2, 0.3, 0.4], [10, 20, 40, 30]) == pytest.approx(4 / 24)


def test_permutation_p_above_eight_teachers_is_monte_carlo_and_close_to_exact(fair):
    """9 teachers (9! = 362,880 orderings: the exact count is done here with numpy's closed form of rho for
    untied ranks, 1 - 6 sum d^2 / (n (n^2 - 1)))."""
    import numpy as np

    entropy = [0.1 * i for i in range(9)]
    means = [3, 1, 4, 0, 5, 8, 2, 6, 7]  # sum d^2 = 9+0+4+9+1+9+16+1+1 = 50: rho = 1 - 300/720 = 7/12
    value, how = fair.permutation_p(entropy, means)
    assert how == f"Monte-Carlo, {fair.DRAWS} random orderings of the 9 teachers, seed 0"
    orders = np.array(list(__import__("itertools").permutations(range(9))))
    rho = 1 - 6 * ((orders - np.arange(9)) ** 2).sum(1) / (9 * 80)
    observed = 1 - 6 * sum((m - i) ** 2 for i, m in enumerate(means)) / (9 * 80)
    assert observed == pytest.approx(7 / 12) == fair.spearman(entropy, means)
    exact = float((rho >= observed - 1e-12).mean())
    assert abs(value - exact) < 0.01  # 10,000 draws: standard error sqrt(p (1 - p) / 10,000) < 0.003 here
    # the observed ordering counts in: perfect order gives 1 / (DRAWS + 1), not 0 (its exact p is 1/9! = 2.8e-6)
    assert fair.permutation_p(entropy, list(range(9)))[0] == pytest.approx(1 / (fair.DRAWS + 1))
    assert fair.permutation_p(entropy, list(range(9))[::-1])[0] == 1.0


def test_bootstrap_interval_of_separated_groups_is_a_point(fair):
    groups = [[0.10, 0.11, 0.12], [0.20, 0.21, 0.22], [0.30, 0.31, 0.32], [0.40, 0.41, 0.42]]
    assert fair.bootstrap([1.0, 2.0, 3.0, 4.0], groups, random.Random(0)) == (1.0, 1.0)


def write_pool(root: Path, teachers: dict[str, tuple[float, float, float]], students: dict[str, list[float]]) -> None:
    """teachers: name -> (clean, S_L confidence, S_U entropy); students: teacher name -> AA per seed."""
    rows = []
    for name, (clean, conf, entropy) in teachers.items():
        run = root / "fair" / "teachers" / name
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"final": {"best": {"clean": clean, "autoattack_apgd": 0.5}}}))
        rows.append({"teacher": f"checkpoint:{run / 'best.pt'}",
                     "learnable": {"entropy": 0.3, "confidence": conf},
                     "unlearnable": {"entropy": entropy, "confidence": 0.4}})
    (root / "fair" / "teacher_scores.json").write_text(json.dumps({"teachers": rows}))
    for name, aas in students.items():
        for seed, aa in enumerate(aas):
            run = root / "fair" / "students" / f"teacher={name},seed={seed}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({"final": {"best": {"autoattack_apgd": aa}}}))
            key = f"checkpoint:{root / 'fair' / 'teachers' / name / 'best.pt'}"
            (run / "config.yaml").write_text(yaml.safe_dump({"teachers": {"robust": {"key": key, "kwargs": {}}}}))


POOL = {"a": (0.80, 0.90, 1.0), "b": (0.81, 0.91, 1.1), "c": (0.80, 0.89, 1.2), "d": (0.79, 0.90, 1.3),
        "e": (0.70, 0.90, 0.5)}  # e: 10 points less accurate than the pool's median: outside the premise


def test_verdict_held_with_the_premise_applied(fair, tmp_path):
    students = {"a": [0.40, 0.41, 0.42], "b": [0.43, 0.44, 0.45], "c": [0.46, 0.47, 0.48], "d": [0.49, 0.50, 0.51],
                "e": [0.10, 0.10, 0.10]}  # e would break the order, but the premise leaves it out
    write_pool(tmp_path, POOL, students)
    text = fair.main(tmp_path)
    assert "| e | 70.0 |" in text and "| out |" in text
    assert ("Over the 4 kept teachers: Spearman (entropy on S_U, mean student AA) +1.00, 95% bootstrap interval "
            "[+1.00, +1.00]") in text
    assert ("permutation p (exact, over the 4! orderings of the teachers) 0.042 for a positive, 1.000 for a "
            "negative") in text
    assert "Verdict: higher entropy on S_U predicts the more robust student: **held**." in text
    # the secondary analysis over every candidate: e has the lowest entropy and the lowest AA, rho +1 over 5! orders
    assert ("Over all 5 candidates, the premise NOT applied (not the paper's test: it mixes S_L confidence into the "
            "comparison): Spearman (entropy on S_U, mean student AA) +1.00, 95% bootstrap interval [+1.00, +1.00]"
            ) in text
    assert "permutation p (exact, over the 5! orderings of the teachers) 0.008 for a positive" in text
    assert text.rstrip().endswith("By the same rule: **held**.")
    assert (tmp_path / "fair" / "fair_selection.md").read_text() == text
    record = json.loads((tmp_path / "fair" / "fair_selection.json").read_text())
    assert record["premise"]["kept"] == ["a", "b", "c", "d"] and record["premise"]["median_clean"] == 0.80
    kept = record["premise_applied"]
    assert kept["verdict"] == "held" and kept["spearman"] == pytest.approx(1.0) and kept["seeds"] == 3
    assert kept["p_positive"] == pytest.approx(1 / 24) and kept["bootstrap_95"] == [1.0, 1.0]
    assert kept["student_aa_mean"] == pytest.approx([0.41, 0.44, 0.47, 0.50])
    assert record["premise_not_applied"]["teachers"] == ["a", "b", "c", "d", "e"]


def test_verdict_did_not_hold_when_entropy_orders_students_backwards(fair, tmp_path):
    students = {"a": [0.49, 0.50, 0.51], "b": [0.46, 0.47, 0.48], "c": [0.43, 0.44, 0.45], "d": [0.40, 0.41, 0.42]}
    write_pool(tmp_path, POOL, students)
    text = fair.main(tmp_path)
    assert "-1.00, 95% bootstrap interval [-1.00, -1.00]" in text
    assert text.rstrip().endswith("**did not hold**.")


def test_overlapping_seeds_leave_it_undecided(fair, tmp_path):
    students = {"a": [0.40, 0.50, 0.45], "b": [0.41, 0.49, 0.44], "c": [0.42, 0.48, 0.46], "d": [0.43, 0.47, 0.45]}
    write_pool(tmp_path, POOL, students)
    assert fair.main(tmp_path).rstrip().endswith("**undecided**.")


def test_fewer_than_three_students_per_teacher_gives_no_verdict(fair, tmp_path):
    students = {"a": [0.40, 0.41], "b": [0.43, 0.44, 0.45], "c": [0.46, 0.47, 0.48], "d": [0.49, 0.50]}
    write_pool(tmp_path, POOL, students)
    text = fair.main(tmp_path)
    assert "Verdict: 2 teachers meet the premise and have 3 students: too few for a verdict" in text
    assert "Spearman" not in text
    assert json.loads((tmp_path / "fair" / "fair_selection.json").read_text())["premise_applied"] is None


def test_three_kept_teachers_give_a_correlation_but_no_verdict(fair, tmp_path):
    pool = {**POOL, "d": (0.79, 0.80, 1.3)}  # d: S_L confidence 10 points under the median: out with e
    students = {"a": [0.40, 0.41, 0.42], "b": [0.43, 0.44, 0.45], "c": [0.46, 0.47, 0.48]}
    write_pool(tmp_path, pool, students)
    text = fair.main(tmp_path)
    assert "Verdict: 3 teachers meet the premise and have 3 students: too few for a verdict" in text
    assert ("Over the 3 kept teachers (no verdict possible): Spearman (entropy on S_U, mean student AA) +1.00" in
            text and "0.167 for a positive" in text)
    assert "Verdict: higher" not in text and "Over all" not in text  # d and e have no students


def test_scores_only_the_teachers_not_scored_yet(fair, tmp_path, monkeypatch):
    """A fresh checkout has the scores file but no teacher checkpoints: adding teachers scores just those, keeps the
    others' rows, drops rows of teachers no longer in the pool and ranks the merged rows by entropy on S_U."""
    write_pool(tmp_path, {"a": (0.8, 0.9, 1.0), "b": (0.8, 0.9, 1.2)}, {})
    old = json.loads((tmp_path / "fair" / "teacher_scores.json").read_text())
    old["teachers"].append({**old["teachers"][0], "teacher": "checkpoint:gone/best.pt"})
    (tmp_path / "fair" / "teacher_scores.json").write_text(json.dumps(old))
    new_run = tmp_path / "fair" / "teachers" / "c"
    new_run.mkdir(parents=True)
    calls = []

    def teacher_score(argv, check):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.write_text(json.dumps({"teachers": [{"teacher": argv[argv.index("--teachers") + 1],
                                                 "learnable": {"entropy": 0.3, "confidence": 0.9},
                                                 "unlearnable": {"entropy": 1.1, "confidence": 0.4}}]}))
    monkeypatch.setattr(fair.subprocess, "run", teacher_score)
    teachers = [tmp_path / "fair" / "teachers" / n for n in "abc"]
    score = fair.scores(tmp_path, teachers)
    assert len(calls) == 1 and calls[0][calls[0].index("--teachers") + 1:calls[0].index("--unlearnable")] == [
        f"checkpoint:{new_run / 'best.pt'}"]
    assert sorted(score) == ["a", "b", "c"] and [score[n]["rank"] for n in "bca"] == [1, 2, 3]
    kept = json.loads((tmp_path / "fair" / "teacher_scores.json").read_text())
    assert len(kept["teachers"]) == 3 and not (tmp_path / "fair" / "teacher_scores.new.json").exists()
    fair.scores(tmp_path, teachers)  # all scored now: no second call
    assert len(calls) == 1
