"""Teacher selection under its own premise (issue 21, item 2): the verdict from the run files of
``fair_teachers_grid.yaml`` and ``fair_students_grid.yaml``.

1. Every candidate teacher's entropy and true-class confidence on S_U and S_L
   (``robust-distill teacher-score`` on ``unlearnable.json``, whose runs are the zoo's convnet_s PGD-AT and TRADES
   runs, disjoint from the teachers), written to ``fair/teacher_scores.json`` (reused when present).
2. The premise ("Why robust teachers fail", Sec. 5: candidates equally good on the learnable set): the teachers
   kept are those whose clean test accuracy and S_L confidence are within ``CLEAN_TOL`` and ``CONF_TOL`` of the
   pool's medians; the table shows every candidate's numbers and whether it is kept.
3. The claim: the higher a teacher's entropy on S_U, the more robust its student. Spearman's rho between entropy
   on S_U and the mean student AA (APGD-CE+T) over the kept teachers, with a 95% bootstrap interval that resamples
   each teacher's student seeds (10,000 draws, seed 0), and the permutation p-value over the teachers' orderings
   (exact up to 8 teachers, Monte-Carlo above). The claim holds when the interval lies above 0 and p < 0.05, fails
   when the interval lies below 0 and the p-value of a negative correlation is < 0.05, and is undecided otherwise;
   with fewer than 4 kept teachers there is no verdict (the exact p of 3 cannot go below 1/6), their correlation is
   shown without one.
4. The same over every candidate with 3 students, the premise not applied, labelled as not the paper's test.

Written: ``fair/fair_selection.md`` (the report) and ``fair/fair_selection.json`` (its numbers, read by
``claims.py``).

    python benchmarks/fashion_mnist/fair_selection.py [benchmarks/results/fashion_mnist]
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from robust_distill.analysis.report import spearman
from robust_distill.files.atomic import atomic_write_json

CLEAN_TOL, CONF_TOL = 0.02, 0.03  # |clean - median| and |S_L confidence - median|, fractions
DRAWS = 10_000
EXACT_UP_TO = 8  # teachers: 8! = 40,320 orderings; 10! (3.6M) would take hours of scipy calls


def final_best(run: Path) -> dict[str, float]:
    return json.loads((run / "summary.json").read_text()).get("final", {}).get("best", {})


def scores(root: Path, teachers: list[Path]) -> dict[str, dict]:
    """Each teacher's entropy and confidence on S_U and S_L (``robust-distill teacher-score``), kept in
    ``fair/teacher_scores.json``: only teachers not scored there yet are scored (their checkpoints must exist; the
    scored ones' checkpoints need not, as on a fresh checkout, where checkpoints are not committed), and scores of
    teachers no longer in the pool are dropped."""
    out = root / "fair" / "teacher_scores.json"
    wanted = {f"checkpoint:{t / 'best.pt'}" for t in teachers}
    before = json.loads(out.read_text())["teachers"] if out.is_file() else []
    rows = [r for r in before if r["teacher"] in wanted]
    missing = sorted(wanted - {r["teacher"] for r in rows})
    if missing:
        new = out.with_name("teacher_scores.new.json")
        subprocess.run([sys.executable, "-m", "robust_distill", "teacher-score", "--teachers", *missing,
                        "--unlearnable", str(root / "unlearnable.json"), "--out", str(new), "--device", "cpu"],
                       check=True)
        rows += json.loads(new.read_text())["teachers"]
        new.unlink()
    if missing or len(rows) != len(before):
        rows.sort(key=lambda r: -r["unlearnable"]["entropy"])
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
        atomic_write_json({"unlearnable": str(root / "unlearnable.json"), "teachers": rows}, out)
    return {Path(r["teacher"].removeprefix("checkpoint:")).parent.name: r for r in rows}


def bootstrap(entropy: list[float], groups: list[list[float]], rng: random.Random) -> tuple[float, float]:
    rhos = []
    for _ in range(DRAWS):
        means = [statistics.mean(rng.choices(g, k=len(g))) for g in groups]
        rho = spearman(entropy, means)
        if rho == rho:  # NaN when every resampled mean ties
            rhos.append(rho)
    if len(rhos) < DRAWS // 2:  # most resampled means tie: no interval worth the name
        return float("nan"), float("nan")
    rhos.sort()
    return rhos[int(0.025 * len(rhos))], rhos[int(0.975 * len(rhos)) - 1]


def permutation_p(entropy: list[float], means: list[float]) -> tuple[float, str]:
    """One-sided permutation p-value of Spearman's rho: the share of orderings of the means whose rho is at least
    the observed one, and how it was computed. Exact over the k! orderings up to ``EXACT_UP_TO`` teachers (3
    teachers in perfect order give 1/6); above that, ``DRAWS`` random orderings (seed 0) with
    the observed one counted in, (hits + 1) / (DRAWS + 1), so that p is never 0 (Phipson and Smyth 2010)."""
    observed = spearman(entropy, means) - 1e-12
    k = len(means)
    if k <= EXACT_UP_TO:
        orders = list(itertools.permutations(means))
        return (sum(spearman(entropy, list(o)) >= observed for o in orders) / len(orders),
                f"exact, over the {k}! orderings of the teachers")
    rng, shuffled, hits = random.Random(0), list(means), 0
    for _ in range(DRAWS):
        rng.shuffle(shuffled)
        hits += spearman(entropy, shuffled) >= observed
    return (hits + 1) / (DRAWS + 1), f"Monte-Carlo, {DRAWS} random orderings of the {k} teachers, seed 0"


def correlation(names: list[str], score: dict[str, dict], students: dict[str, list[float]],
                what: str) -> tuple[str, dict]:
    """Spearman's rho of (S_U entropy, mean student AA) over ``names``, its bootstrap interval and permutation
    p-values, as a sentence and as numbers with the verdict (held / did not hold / undecided)."""
    entropy = [score[t]["unlearnable"]["entropy"] for t in names]
    means = [statistics.mean(students[t]) for t in names]
    rho = spearman(entropy, means)
    low, high = bootstrap(entropy, [students[t] for t in names], random.Random(0))
    (p, how), (p_neg, _) = permutation_p(entropy, means), permutation_p(entropy, [-m for m in means])
    verdict = ("held" if low > 0 and p < 0.05 else "did not hold" if high < 0 and p_neg < 0.05 else "undecided")
    line = (f"{what}: Spearman (entropy on S_U, mean student AA) {rho:+.2f}, 95% bootstrap interval [{low:+.2f}, "
            f"{high:+.2f}] (student seeds resampled, {DRAWS} draws); permutation p ({how}) "
            f"{p:.3f} for a positive, {p_neg:.3f} for a negative correlation.")
    return line, {"teachers": names, "entropy": entropy, "student_aa_mean": means, "spearman": rho,
                  "bootstrap_95": [low, high], "p_positive": p, "p_negative": p_neg, "permutation": how,
                  "seeds": min(len(students[t]) for t in names), "verdict": verdict}


def main(root: Path) -> str:
    teachers = sorted(p.parent for p in (root / "fair" / "teachers").glob("*/summary.json"))
    if len(teachers) < 3:
        raise SystemExit(f"{len(teachers)} finished teachers in {root / 'fair' / 'teachers'}: run the grid first")
    score = scores(root, teachers)
    students: dict[str, list[float]] = {}
    for run in sorted((root / "fair" / "students").glob("*/summary.json")):
        cfg = yaml.safe_load((run.parent / "config.yaml").read_text())
        teacher = Path(cfg["teachers"]["robust"]["key"].removeprefix("checkpoint:")).parent.name
        aa = final_best(run.parent).get("autoattack_apgd")
        if aa is not None:
            students.setdefault(teacher, []).append(aa)
    clean = {t.name: final_best(t).get("clean") for t in teachers}
    conf = {t.name: score[t.name]["learnable"]["confidence"] for t in teachers}
    med_clean, med_conf = statistics.median(clean.values()), statistics.median(conf.values())
    kept = [t.name for t in teachers if abs(clean[t.name] - med_clean) <= CLEAN_TOL
            and abs(conf[t.name] - med_conf) <= CONF_TOL]
    lines = ["# Teacher selection under its premise (Fashion-MNIST)", "",
             "Candidates: convnet_m teachers of `fair_teachers_grid.yaml` (10k images, 6 epochs, eps 0.1). Students: "
             "RSLAD (batchmean KL) convnet_s, `fair_students_grid.yaml`, 3 seeds per teacher, student_base.yaml's "
             "budget; AA = APGD-CE+T of the best checkpoint on 500 test images. S_U and S_L: `unlearnable.json` "
             f"(the zoo's convnet_s PGD-AT and TRADES runs, disjoint from the teachers). Premise: clean within "
             f"{100 * CLEAN_TOL:.0f} points and S_L confidence within {100 * CONF_TOL:.0f} points of the pool's "
             "medians.", "",
             "| teacher | clean | AA (teacher) | S_L conf. | S_U entropy (nats) | S_U conf. | premise | student AA "
             "(seeds) |", "|---|---|---|---|---|---|---|---|"]
    for t in teachers:
        s, st = score[t.name], students.get(t.name, [])
        lines.append(f"| {t.name} | {100 * clean[t.name]:.1f} | {100 * final_best(t).get('autoattack_apgd', 0):.1f} | "
                     f"{100 * conf[t.name]:.1f} | {s['unlearnable']['entropy']:.3f} | "
                     f"{100 * s['unlearnable']['confidence']:.1f} | {'kept' if t.name in kept else 'out'} | "
                     + (", ".join(f"{100 * a:.1f}" for a in st) or "-") + " |")
    ready = [t for t in kept if len(students.get(t, [])) >= 3]
    lines.append("")
    record: dict = {"premise": {"clean_tol": CLEAN_TOL, "conf_tol": CONF_TOL, "median_clean": med_clean,
                                "median_conf": med_conf, "kept": kept, "with_3_students": ready},
                    "premise_applied": None, "premise_not_applied": None}
    if len(ready) < 4:
        lines.append(f"Verdict: {len(ready)} teachers meet the premise and have 3 students: too few for a "
                     f"verdict (the exact permutation p of k teachers cannot go below 1/k!: 1/6 for 3).")
        if len(ready) == 3:
            lines += ["", correlation(ready, score, students, "Over the 3 kept teachers (no verdict possible)")[0]]
    else:
        line, record["premise_applied"] = correlation(ready, score, students, f"Over the {len(ready)} kept teachers")
        lines += [line + " A verdict needs both the interval on one side of 0 and p < 0.05.", "",
                  "Verdict: higher entropy on S_U predicts the more robust student: "
                  f"**{record['premise_applied']['verdict']}**."]
    every = [t.name for t in teachers if len(students.get(t.name, [])) >= 3]
    if len(every) > len(ready) and len(every) >= 4:
        line, record["premise_not_applied"] = correlation(
            every, score, students, f"Over all {len(every)} candidates, the premise NOT applied (not the paper's "
            "test: it mixes S_L confidence into the comparison)")
        lines += ["", line + f" By the same rule: **{record['premise_not_applied']['verdict']}**."]
    text = "\n".join(lines) + "\n"
    atomic_write_json(record, root / "fair" / "fair_selection.json")
    (root / "fair" / "fair_selection.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/fashion_mnist")))
