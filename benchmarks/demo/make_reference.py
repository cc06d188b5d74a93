"""Write ``robust_distill/assets/demo_reference.yaml`` from the committed demo runs (issue 14).

The demo prints the teacher's numbers and those of PGD-AT of the same student at the same budget from this
file instead of measuring them (the teacher's APGD-T alone takes longer than the whole demo on a CPU). Every
number here is copied from a committed output under ``benchmarks/results/demo/`` (see its README.md for the
commands); ``tests/test_demo_reference.py`` checks that they agree.

    .venv/bin/python benchmarks/demo/make_reference.py
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path("benchmarks/results/demo")
OUT = ROOT / "robust_distill" / "assets" / "demo_reference.yaml"
ATTACKS = ("clean", "pgd20", "autoattack_apgd")


def teacher_numbers(path: Path) -> dict:
    result = json.loads((ROOT / path).read_text())
    acc = {r["attack"]: r["accuracy"] for r in result["results"]}
    return {"n_test": result["n_examples"], "params": "288k", **{k: round(acc[k], 6) for k in ATTACKS},
            "path": str(path)}


def student_numbers(folder: Path) -> dict:
    demo = json.loads((ROOT / folder / "demo.json").read_text())
    row = demo["rows"][-1]  # the run's own student
    return {"params": row["params"], **{k: round(row[k], 6) for k in ATTACKS}, "path": str(folder),
            "minutes": round(demo["minutes"], 1), "cpu_minutes": round(demo["cpu_minutes"], 1)}, demo["budget"]


def main() -> None:
    students, budgets = {}, []
    for folder in sorted(p for p in (ROOT / RESULTS).iterdir() if (p / "demo.json").is_file()):
        numbers, budget = student_numbers(folder.relative_to(ROOT))
        students[json.loads((folder / "demo.json").read_text())["method"]] = numbers
        budgets.append(budget)
    if not budgets or any(b != budgets[0] for b in budgets):
        raise SystemExit(f"the committed demo runs must share one budget, got {budgets}")
    reference = {"budget": budgets[0], "teacher": teacher_numbers(RESULTS / "teacher" / "eval.json"),
                 "students": students}
    header = ("# Reference numbers of `robust-distill demo` (Fashion-MNIST, eps 0.1, first test images; clean,\n"
              "# PGD-20, AutoAttack's APGD-CE + APGD-T). Written by benchmarks/demo/make_reference.py from the\n"
              "# committed outputs under benchmarks/results/demo/ (commands in its README.md); do not edit by hand.\n")
    OUT.write_text(header + yaml.safe_dump(reference, sort_keys=False))
    print(f"wrote {OUT.relative_to(ROOT)}: teacher + {sorted(students)}")


if __name__ == "__main__":
    main()
