"""benchmarks/fashion_mnist/overfit_verdict.py: the best/last gap rule, and S_U at the peak epoch against the last,
on run folders written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .scripts import load_script


@pytest.fixture(scope="module")
def ov():
    return load_script("benchmarks/fashion_mnist/overfit_verdict.py")


def write_run(folder: Path, best: dict, last: dict, records: dict[int, list[int]] | None = None) -> None:
    """A 4-epoch run validated at epochs 2 and 4 (1-based), peaking at epoch 2 (index 1); the lr falls at epoch 3."""
    folder.mkdir(parents=True)
    rows = [{"epoch": 0, "lr": 0.1, "train_loss": 1.0},
            {"epoch": 1, "lr": 0.1, "train_loss": 0.8, "val_pgd20": 0.70},
            {"epoch": 2, "lr": 0.01, "train_loss": 0.5},
            {"epoch": 3, "lr": 0.01, "train_loss": 0.25, "val_pgd20": 0.64}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.yaml").write_text("optim: {epochs: 4}\n")
    (folder / "summary.json").write_text(json.dumps({"best_epoch": 1, "final": {"best": best, "last": last}}))
    if records is not None:
        torch.save({"indices": torch.arange(10, 15), "labels": torch.arange(5),
                    "records": {str(e): torch.tensor(c, dtype=torch.bool) for e, c in records.items()}},
                   folder / "train_records.pt")


def test_a_gap_of_3_points_on_both_attacks_is_overfitting(ov, tmp_path):
    root = tmp_path / "regime"
    write_run(root / "seed=0", {"clean": 0.8, "pgd20": 0.66, "autoattack_apgd": 0.64},
              {"clean": 0.82, "pgd20": 0.62, "autoattack_apgd": 0.605},
              # peak (index 1): samples 0-2 wrong; last (index 3): only 2 wrong
              {1: [0, 0, 0, 1, 1], 3: [1, 1, 0, 1, 1]})
    write_run(root / "seed=1", {"clean": 0.8, "pgd20": 0.66, "autoattack_apgd": 0.64},
              {"clean": 0.8, "pgd20": 0.62, "autoattack_apgd": 0.615})  # APGD gap 2.5: not overfitting
    lines, overfit = ov.regime(root, "a regime")
    text = "\n".join(lines)
    assert overfit == ["regime/seed=0"]
    assert ("| seed=0 | 4 | 0.25 | 2 | 70.0 / 64.0 | 70.0 -> 64.0-64.0 | 80.0 / 82.0 | 66.0 / 62.0 (4.0) | "
            "64.0 / 60.5 (3.5) | yes |") in text
    assert "(2.5) | no |" in text
    # S_U from the one run with records: {10, 11, 12} at its peak, {12} at its last epoch; Jaccard 1/3
    assert "| peak (the paper's) | 3 | 2 |" in text and "| last | 1 | 4 |" in text
    assert "keeps 1 of the peak's 3 (33.3%) and adds 0; Jaccard 0.333" in text
    assert "**changes S_U**" in text


def test_the_curve_after_the_first_lr_decay(ov):
    rows = [{"epoch": e, "lr": lr, **({"val_pgd20": v} if v is not None else {})}
            for e, (lr, v) in enumerate([(0.1, 0.5), (0.1, 0.6), (0.01, None), (0.01, 0.7), (0.001, 0.55)])]
    assert ov.after_first_decay(rows) == (0.6, 0.55, 0.7)  # at the decay 60.0; after it 70.0 then 55.0
    assert ov.after_first_decay([{**r, "lr": 0.1} for r in rows]) is None  # a constant lr: no decay
    assert ov.decay_cell((0.6, 0.55, 0.7)) == "60.0 -> 55.0-70.0" and ov.decay_cell(None) == "-"


def test_no_overfitting_no_verdict_on_the_epoch_rule(ov, tmp_path):
    root = tmp_path / "regime"
    same = {"clean": 0.8, "pgd20": 0.66, "autoattack_apgd": 0.64}
    write_run(root / "seed=0", same, same, {1: [0, 0, 0, 1, 1], 3: [0, 0, 0, 1, 1]})
    text = "\n".join(ov.regime(root, "a regime")[0])
    assert "no run shows a best/last gap" in text and "Jaccard 1.000" in text
    assert "does not test the paper's reason" in text


def write_student(folder: Path, teacher: str, best_aa: float, last_aa: float) -> None:
    write_run(folder, {"pgd20": best_aa + 0.01, "autoattack_apgd": best_aa},
              {"pgd20": last_aa + 0.01, "autoattack_apgd": last_aa})
    (folder / "config.yaml").write_text(
        f"optim: {{epochs: 4}}\nteachers: {{robust: {{key: 'checkpoint:runs/t/{teacher}'}}}}\n")


def test_self_distillation_best_teacher_keeps_students_near_their_peak(ov, tmp_path):
    sd = tmp_path / "overfit_sd"
    # best-teacher students: gaps 1.0 and 2.0 (mean 1.5), last-checkpoint AA 0.60 and 0.62 (mean 0.61);
    # last-teacher students: gaps 4.0 and 5.0 (mean 4.5), last AA 0.56 and 0.57 (mean 0.565)
    write_student(sd / "teachers.robust=best,seed=0", "best.pt", 0.61, 0.60)
    write_student(sd / "teachers.robust=best,seed=1", "best.pt", 0.64, 0.62)
    write_student(sd / "teachers.robust=last,seed=0", "last.pt", 0.60, 0.56)
    write_student(sd / "teachers.robust=last,seed=1", "last.pt", 0.62, 0.57)
    text = "\n".join(ov.self_distillation(sd))
    assert "the best and the last checkpoint of `runs/t`" in text
    assert ("best-teacher students: APGD gap 1.5, last checkpoint 61.0; last-teacher students: gap 4.5, last "
            "checkpoint 56.5. Peak (best checkpoint) APGD: 62.5 and 61.0.") in text
    assert "Self-Distill (Last): moderate peak, significant decline" in text
    assert "**hold**" in text


def test_self_distillation_verdict_fails_and_waits(ov, tmp_path):
    sd = tmp_path / "overfit_sd"
    write_student(sd / "a", "best.pt", 0.64, 0.58)  # the best teacher's students overfit more: gap 6
    write_student(sd / "b", "best.pt", 0.64, 0.58)
    write_student(sd / "c", "last.pt", 0.60, 0.59)
    assert "No runs in" in ov.self_distillation(tmp_path / "empty")[-1]
    assert "not every student has finished" in ov.self_distillation(sd)[-1]  # one last-teacher seed only
    write_student(sd / "d", "last.pt", 0.60, 0.59)
    assert "**do not hold**" in ov.self_distillation(sd)[-1]


def test_a_second_teacher_run_with_one_student_seed_per_checkpoint(ov, tmp_path):
    sd = tmp_path / "overfit_sd_t1"
    write_student(sd / "robust=best,seed=0", "best.pt", 0.61, 0.60)
    assert "(1 seed(s) per teacher): no verdict" in ov.self_distillation(sd, min_seeds=1)[-1]
    write_student(sd / "robust=last,seed=0", "last.pt", 0.60, 0.56)
    text = "\n".join(ov.self_distillation(sd, min_seeds=1))
    assert "## Self-distillation: best vs last teacher (overfit_sd_t1)" in text
    assert "`benchmarks/fashion_mnist/overfit_sd_t1_grid.yaml`" in text and "**hold**" in text
    assert "(2 seed(s) per teacher): no verdict" in ov.self_distillation(sd)[-1]  # the default asks for 2


def test_s_u_is_taken_per_setting_and_counts_the_noisy_labels(ov, tmp_path):
    root = tmp_path / "overfit_noise"
    gap = ({"clean": 0.8, "pgd20": 0.66, "autoattack_apgd": 0.64},
           {"clean": 0.7, "pgd20": 0.60, "autoattack_apgd": 0.6})
    # label_noise=0.4: S_U {10, 11, 12} at the peak, {12} at the last epoch; images 11 and 12 carry noisy labels
    write_run(root / "label_noise=0.4,seed=0", *gap, {1: [0, 0, 0, 1, 1], 3: [1, 1, 0, 1, 1]})
    rec = torch.load(root / "label_noise=0.4,seed=0" / "train_records.pt")
    torch.save({**rec, "noisy": torch.tensor([False, True, True, False, False])},
               root / "label_noise=0.4,seed=0" / "train_records.pt")
    # label_noise=0.2 (clean records file): S_U {14} at both epochs; taken apart from the 0.4 run, not intersected
    write_run(root / "label_noise=0.2,seed=0", gap[0], gap[0], {1: [1, 1, 1, 1, 0], 3: [1, 1, 1, 1, 0]})
    text = "\n".join(ov.regime(root, "a regime")[0])
    assert "### S_U at the peak epoch vs the last (label_noise=0.4)" in text
    assert "### S_U at the peak epoch vs the last (label_noise=0.2)" in text
    assert "5 images recorded, 2 of them with a noisy label" in text
    assert "| peak (the paper's) | 3 | 2 | 2 |" in text and "| last | 1 | 4 | 1 |" in text
    noise_02 = text.split("(label_noise=0.2)")[1].split("###")[0]
    assert "Jaccard 1.000" in noise_02 and "does not test the paper's reason" in noise_02
    noise_04 = text.split("(label_noise=0.4)")[1]
    assert "Jaccard 0.333" in noise_04 and "**changes S_U**" in noise_04


def test_teacher_entropy_on_s_u_best_against_last(ov, tmp_path):
    path = tmp_path / "teacher_entropy.json"
    assert ov.teacher_entropy(path) == []  # not measured: nothing said

    def row(name, h_u, c_u):
        return {"teacher": f"checkpoint:runs/a/{name}.pt", "unlearnable": {"entropy": h_u, "confidence": c_u, "n": 40},
                "learnable": {"entropy": 0.2, "confidence": 0.9, "n": 200}}

    path.write_text(json.dumps({"teachers": [row("best", 1.2, 0.3), row("last", 0.4, 0.1)]}))
    text = "\n".join(ov.teacher_entropy(path))
    assert "| best (peak epoch) | 1.200 | 30.0 | 0.200 | 90.0 |" in text and "of `runs/a`'s two checkpoints" in text
    assert "(40 and 200 training images" in text and "**less confident on S_U**" in text
    assert "falls by 0.800 nats on S_U and 0.000 on S_L, more on S_U than on S_L" in text
    path.write_text(json.dumps({"teachers": [row("best", 0.3, 0.3), row("last", 0.4, 0.1)]}))
    assert "does not hold here" in "\n".join(ov.teacher_entropy(path))
    path.write_text(json.dumps({"teachers": [row("best", 0.3, 0.3)]}))
    assert "no verdict" in ov.teacher_entropy(path)[-1]


def test_a_run_not_yet_validated_is_left_out(ov, tmp_path):
    sd = tmp_path / "overfit_sd_t1"
    write_student(sd / "robust=best,seed=0", "best.pt", 0.61, 0.60)
    started = sd / "robust=last,seed=0"
    started.mkdir()
    (started / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "lr": 0.05, "train_loss": 2.3}) + "\n")
    assert [r["run"] for r in ov.run_rows(sd)] == ["robust=best,seed=0"]
    assert "no verdict" in ov.self_distillation(sd, min_seeds=1)[-1]
