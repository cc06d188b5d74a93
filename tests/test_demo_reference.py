"""The demo's reference numbers (``robust_distill/assets/demo_reference.yaml``) are those of the committed runs.

The demo prints the teacher's and PGD-AT's numbers from that file; these tests tie every number to a file under
``benchmarks/results/demo/`` and the committed runs' configs to what ``robust-distill demo`` trains today, so
that changing the demo's budget or options without re-running its references fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from robust_distill.cli.demo import BUDGET, EVIDENCE, METHOD, REFERENCE, SHIPPED_TEACHERS, _bought, demo_config
from robust_distill.config import config_differences, config_to_dict

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("clean", "pgd20", "autoattack_apgd")
TRAINING_KEYS = ("method", "seed", "student", "data", "threat", "inner_attack", "outer_loss", "teacher_updater",
                 "optim", "eval", "channels_last")

pytestmark = pytest.mark.skipif(not (ROOT / "benchmarks/results/demo").is_dir(), reason="needs the source tree")


def reference() -> dict:
    return yaml.safe_load(REFERENCE.read_text())


def test_reference_covers_the_demo_and_its_baseline() -> None:
    ref = reference()
    assert ref["budget"] == BUDGET
    assert {METHOD, "pgd_at"} <= set(ref["students"])
    assert ref["teacher"]["n_test"] == BUDGET["n_test"]


def test_teacher_numbers_are_the_committed_evaluation() -> None:
    teacher = reference()["teacher"]
    result = json.loads((ROOT / teacher["path"]).read_text())
    assert result["n_examples"] == BUDGET["n_test"] and result["eps"] == pytest.approx(0.1)
    assert Path(result["model"]).name == SHIPPED_TEACHERS["robust"].name
    acc = {r["attack"]: r["accuracy"] for r in result["results"]}
    for k in ATTACKS:
        assert teacher[k] == pytest.approx(acc[k], abs=1e-6), k


@pytest.mark.parametrize("method", sorted(yaml.safe_load(REFERENCE.read_text())["students"])
                         if REFERENCE.is_file() else [])
def test_student_numbers_are_the_committed_demo_runs(regs, method: str) -> None:
    numbers = reference()["students"][method]
    folder = ROOT / numbers["path"]
    demo = json.loads((folder / "demo.json").read_text())
    assert demo["method"] == method and demo["budget"] == BUDGET
    row = demo["rows"][-1]
    for k in ATTACKS:
        assert numbers[k] == pytest.approx(row[k], abs=1e-6), k
    # the committed run trained what `robust-distill demo --method <method>` trains today
    committed = yaml.safe_load((folder / f"student_{method}" / "config.yaml").read_text())
    teachers = {role: ROOT / "robust_distill/assets" / Path(t["key"]).name
                for role, t in committed.get("teachers", {}).items()}
    today = config_to_dict(demo_config(method, folder / f"student_{method}", train_subset=BUDGET["train_subset"],
                                       epochs=BUDGET["epochs"], teachers=teachers, regs=regs))
    # (keys a later version added count as equal at their default, as on resume)
    plain = json.loads(json.dumps({k: today[k] for k in TRAINING_KEYS}))
    assert config_differences({k: committed[k] for k in TRAINING_KEYS}, plain, may_differ=()) == []


def test_the_demo_says_what_distillation_bought_by_the_numbers() -> None:
    pgd_at = {"pgd20": 0.604, "autoattack_apgd": 0.578}
    behind = _bought({"pgd20": 0.580, "autoattack_apgd": 0.556}, pgd_at, 500)
    assert behind.startswith("What distillation bought at this budget: -2.4 PGD-20 and -2.2 AA points, behind PGD-AT")
    assert "first 500 test images: a point is 5 images" in behind
    assert ", ahead of PGD-AT" in _bought({"pgd20": 0.61, "autoattack_apgd": 0.58}, pgd_at, 500)
    assert ", level with PGD-AT" in _bought({"pgd20": 0.61, "autoattack_apgd": 0.57}, pgd_at, 500)


def test_the_demo_evidence_is_the_committed_claims_table() -> None:
    """The numbers the demo quotes are those of claims.md's batchmean claim-1 table (mean AA over 2 seeds)."""
    claims = (ROOT / "benchmarks/results/fashion_mnist/claims.md").read_text()
    table = claims.split("## 1 with batchmean.")[1].split("##")[0]
    aa = {row.split("|")[1].strip(): row.split("|")[4].strip() for row in table.splitlines() if row.startswith("| ")}
    assert aa["rslad"].startswith("46.50") and aa["adaad"].startswith("47.50") and aa["pgd_at"] == "46.50 ± 0.99"
    assert "reach 46.5 and 47.5 AA against PGD-AT's 46.5 +- 1.0" in EVIDENCE


def test_the_demo_evidence_on_overfitting_is_the_committed_verdict() -> None:
    """The overfitting numbers the demo quotes: PGD-AT's best/last APGD at 40% label noise (seed 0, the teacher of
    the self-distillation students) and those students' mean last APGD, from overfit_verdict.md."""
    verdict = (ROOT / "benchmarks/results/fashion_mnist/overfit_verdict.md").read_text()
    row = next(r for r in verdict.splitlines() if r.startswith("| label_noise=0.4,seed=0 |"))
    assert row.split("|")[9].strip() == "53.0 / 36.7 (16.3)"
    assert "best-teacher students: APGD gap 0.2, last checkpoint 52.5;" in verdict
    assert "from 53.0 AA at its best epoch to 36.7 at its last" in EVIDENCE and "end at 52.5 (2 seeds)" in EVIDENCE
    assert "15.8 points above" in EVIDENCE  # 52.5 - 36.7
