"""CCAT in the oracle teacher-student setting (plugins/ccat.py; Stutz et al. 2020 as adapted by Yang et al.,
AISTATS 2021, Sec. 5.6): the calibration and the soft targets against values computed by hand, the loss on a
hand-built step, the inner attack (best iterate, eps-ball, clean half, a higher objective), and tiny training runs
through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_distill import Step, ThreatModel, pgd
from robust_distill.engine.trainer import train
from robust_distill.files.checkpoint import load_checkpoint
from robust_distill_plugins.ccat import (
    best_iterate_pgd,
    calibrated_logits,
    calibrated_target,
    calibration,
    ccat_start,
    logit_gap,
)
from robust_distill_plugins.specialization_models import TeacherStudentConvNet

from .handcalc import linear, softmax

EPS = 0.1


# -------------------------------------------------------------------------------------------------
# Calibration and targets
# -------------------------------------------------------------------------------------------------


def test_calibration_by_hand() -> None:
    norms = torch.tensor([0.0, 0.025, 0.05, 0.1, 0.2])
    # (1 - min(1, n/eps))^rho with eps = 0.1: 1 - n/eps = 1, 0.75, 0.5, 0, 0 (clipped)
    assert calibration(norms, EPS, 2.0).tolist() == pytest.approx([1.0, 0.5625, 0.25, 0.0, 0.0])
    assert calibration(norms, EPS, 5.0).tolist() == pytest.approx([1.0, 0.75 ** 5, 0.03125, 0.0, 0.0])
    assert calibration(norms, EPS, 10.0).tolist() == pytest.approx([1.0, 0.0563135147, 0.0009765625, 0.0, 0.0])
    assert calibration(norms, EPS, 20.0)[2].item() == pytest.approx(0.5 ** 20)
    with pytest.raises(ValueError, match="eps must be > 0"):
        calibration(norms, 0.0, 10.0)


def test_calibrated_target_mixes_the_one_hot_label_with_the_uniform_distribution() -> None:
    target = calibrated_target(torch.tensor([2, 0, 1]), torch.tensor([0.5, 1.0, 0.0]), 4)
    assert target == pytest.approx(torch.tensor([[0.125, 0.125, 0.625, 0.125],  # 0.5 onehot + 0.5/4
                                                 [1.0, 0.0, 0.0, 0.0],  # lambda 1: the label
                                                 [0.25, 0.25, 0.25, 0.25]]))  # lambda 0: uniform
    assert target.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_calibrated_logits_temper_the_teacher_towards_uniform() -> None:
    t = torch.tensor([[1.0, 2.0, 6.0], [0.0, -3.0, 3.0]])
    z = calibrated_logits(t, torch.tensor([0.5, 0.0]))
    assert z == pytest.approx(torch.tensor([[2.0, 2.5, 4.5], [0.0, 0.0, 0.0]]))  # 0.5 t + 0.5 mean(t) (mean 3 and 0)
    assert softmax(z[:1]) == pytest.approx(softmax(0.5 * t[:1]))  # the teacher at temperature 1/lambda
    assert calibrated_logits(t, torch.ones(2)).tolist() == t.tolist()


def test_logit_gap_is_the_largest_absolute_logit_difference() -> None:
    s, t = torch.tensor([[1.0, 5.0, -2.0]]), torch.tensor([[2.0, 1.0, 0.0]])
    assert logit_gap(s, t).tolist() == [4.0]  # |1-2|, |5-1|, |-2-0|


# -------------------------------------------------------------------------------------------------
# The outer loss on a hand-built step
# -------------------------------------------------------------------------------------------------


def flat_linear(seed: int) -> nn.Module:
    """(B, 1, 1, 5) images -> 3 logits, fixed weights."""
    return nn.Sequential(nn.Flatten(), linear(seed))


def hand_step() -> tuple[Step, list[float]]:
    """Four images at 0.5 +- 0.1 and an x' whose perturbations have L-inf norms 0, 0.025, 0.05 and 0.1 (eps 0.1):
    with rho 2, lambda = 1, 0.5625, 0.25, 0."""
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(4, 1, 1, 5, generator=g)
    delta = torch.zeros_like(x)
    delta[1, 0, 0, 3], delta[1, 0, 0, 0] = -0.025, 0.01
    delta[2, 0, 0, 1] = 0.05
    delta[3] = 0.1 * torch.tensor([1.0, -1.0, 0.5, 0.0, -0.2])
    step = Step(x, torch.zeros(4, dtype=torch.long), student=flat_linear(1), teachers={"oracle": flat_linear(2)},
                threat=ThreatModel(eps=EPS, step_size=0.03, steps=3))
    step.add_input("adv", x + delta)
    return step, [1.0, 0.5625, 0.25, 0.0]


def test_ccat_label_loss_by_hand(regs) -> None:
    step, lam = hand_step()
    loss = regs.outer_losses.build("ccat", {"rho": 2})(step)
    with torch.no_grad():
        p = softmax(step.student(step.x_adv))
        label = step.teachers["oracle"](step.x).argmax(1).tolist()  # label_at: clean (the default)
    by_hand = 0.0
    for i in range(4):
        for k in range(3):
            target = lam[i] * (k == label[i]) + (1 - lam[i]) / 3
            by_hand -= target * torch.log(p[i, k]).item()
    assert loss.item() == pytest.approx(by_hand / 4, rel=1e-5)
    assert step.logs["ccat_lambda"].item() == pytest.approx(sum(lam) / 4)
    loss.backward()
    assert all(p.grad is None for p in step.teachers["oracle"].parameters())  # the oracle is a fixed target


def test_ccat_label_loss_at_the_adversarial_point_and_with_its_own_eps(regs) -> None:
    step, _ = hand_step()
    loss = regs.outer_losses.build("ccat", {"rho": 1, "label_at": "adv", "eps": 0.2})(step)
    lam = [1.0, 0.875, 0.75, 0.5]  # 1 - n/0.2
    with torch.no_grad():
        log_p = torch.log_softmax(step.student(step.x_adv), 1)
        label = step.teachers["oracle"](step.x_adv).argmax(1)
    target = torch.tensor(lam)[:, None] * F.one_hot(label, 3) + (1 - torch.tensor(lam)[:, None]) / 3
    assert loss.item() == pytest.approx(-(target * log_p).sum(1).mean().item(), rel=1e-5)


def test_ccat_logit_loss_by_hand(regs) -> None:
    step, lam = hand_step()
    loss = regs.outer_losses.build("ccat", {"rho": 2, "supervision": "logit"})(step)
    with torch.no_grad():
        s, t = step.student(step.x_adv), step.teachers["oracle"](step.x)
    by_hand = 0.0
    for i in range(4):
        mean = t[i].mean().item()
        for k in range(3):
            z = lam[i] * t[i, k].item() + (1 - lam[i]) * mean
            by_hand += (s[i, k].item() - z) ** 2
    assert loss.item() == pytest.approx(by_hand / 12, rel=1e-5)  # mean over B*K, as logit_l2


def test_loss_options_are_checked(regs) -> None:
    with pytest.raises(ValueError, match="rho must be > 0"):
        regs.outer_losses.build("ccat", {"rho": 0})
    with pytest.raises(ValueError, match="supervision must be 'label'"):
        regs.outer_losses.build("ccat", {"supervision": "kl"})
    with pytest.raises(ValueError, match="label_at must be 'clean'"):
        regs.outer_losses.build("ccat", {"label_at": "teacher"})


# -------------------------------------------------------------------------------------------------
# The inner attack
# -------------------------------------------------------------------------------------------------


def test_best_iterate_beats_the_last_one_by_hand() -> None:
    """f(x') = -(x' - 0.33)^2 from 0.30 with steps of 0.04: iterates 0.30, 0.34, 0.30 (sign ascent overshoots);
    PGD returns the last, 0.30; the best iterate is 0.34, whose norm 0.04 < eps gives lambda > 0."""
    x = torch.full((2, 1, 1, 1), 0.30)

    def f(xa):
        return -((xa - 0.33) ** 2).flatten(1).sum(1)

    best, value = best_iterate_pgd(f, x, x, eps=EPS, step_size=0.04, steps=2)
    assert best.flatten().tolist() == pytest.approx([0.34, 0.34])
    assert value.tolist() == pytest.approx([-1e-4, -1e-4], rel=1e-4)  # float32
    last = pgd(lambda xa: f(xa).sum(), x, eps=EPS, step_size=0.04, steps=2, start="none")
    assert last.flatten().tolist() == pytest.approx([0.30, 0.30])
    lam = calibration((best - x).abs().flatten(1).amax(1), EPS, 10.0)
    assert lam.tolist() == pytest.approx([0.6 ** 10] * 2, rel=1e-5)


def test_uniform_norm_start_draws_the_norm_uniformly() -> None:
    torch.manual_seed(0)
    x = torch.full((64, 1, 4, 4), 0.5)  # no clipping at 0.5 +- 0.1
    norms = (ccat_start(x, EPS, "uniform_norm") - x).abs().flatten(1).amax(1)
    assert norms.max() <= EPS + 1e-7 and norms.min() > 0
    assert 0.035 < norms.mean().item() < 0.065  # U(0, 0.1) has mean 0.05 (std of the mean of 64: 0.0036)
    assert torch.equal(ccat_start(x, EPS, "zero"), x)
    torch.manual_seed(1)
    kinds = {bool((ccat_start(x, EPS, "zero_or_norm") == x).all()) for _ in range(20)}
    assert kinds == {True, False}  # zero or a drawn norm, per batch
    with pytest.raises(ValueError, match="start must be"):
        ccat_start(x, EPS, "gaussian")


def convnet(seed: int, widths=(8, 8, 8, 8)) -> TeacherStudentConvNet:
    torch.manual_seed(seed)
    return TeacherStudentConvNet(num_classes=3, in_chans=1, widths=widths, kernel_sizes=3, strides=1)


def oracle_step() -> Step:
    x = torch.rand(6, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    return Step(x, torch.zeros(6, dtype=torch.long), student=convnet(2).train(),
                teachers={"oracle": convnet(1).eval().requires_grad_(False)},
                threat=ThreatModel(eps=EPS, step_size=0.03, steps=4))


@pytest.mark.parametrize("start", ["zero", "zero_or_norm", "uniform"])
def test_ccat_pgd_attacks_half_the_batch_in_the_ball_and_raises_the_logit_gap(regs, start: str) -> None:
    step = oracle_step()
    student, teacher = step.student, step.teachers["oracle"]
    torch.manual_seed(0)
    attack = regs.inner_attacks.build("ccat_pgd", {"start": start})
    x_adv, value = attack.attack(step)
    assert torch.equal(x_adv[:3], step.x[:3])  # the clean half: delta = 0, lambda = 1
    assert (x_adv - step.x).abs().max() <= EPS + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert student.training and all(p.grad is None and p.requires_grad for p in student.parameters())
    with torch.no_grad():
        student.eval()
        gap_adv = logit_gap(student(x_adv[3:]), teacher(x_adv[3:]))
        gap_clean = logit_gap(student(step.x[3:]), teacher(step.x[3:]))
    assert value == pytest.approx(gap_adv, rel=1e-5)  # the returned value is the objective at the returned point
    if start == "zero":
        assert (gap_adv >= gap_clean - 1e-6).all()  # the clean point is the first iterate
    assert gap_adv.mean() > gap_clean.mean()


def test_ccat_pgd_fraction(regs) -> None:
    step = oracle_step()
    assert torch.equal(regs.inner_attacks.build("ccat_pgd", {"fraction": 0.0})(step), step.x)
    x_all = regs.inner_attacks.build("ccat_pgd", {"fraction": 1.0, "start": "uniform"})(step)
    assert ((x_all - step.x).flatten(1).abs().amax(1) > 0).all()
    with pytest.raises(ValueError, match=r"fraction .* must be in \[0, 1\]"):
        regs.inner_attacks.build("ccat_pgd", {"fraction": 1.5})


# -------------------------------------------------------------------------------------------------
# The method and training runs through the engine
# -------------------------------------------------------------------------------------------------


def test_ccat_method_defaults(regs) -> None:
    m = regs.methods.get("ccat")
    assert (m.inner_attack.key, dict(m.inner_attack.kwargs)) == ("ccat_pgd", {"fraction": 0.5, "start": "zero_or_norm"})
    assert m.outer_loss.key == "ccat" and m.outer_loss.kwargs["rho"] == 10.0 and m.teachers == ("oracle",)
    assert m.defaults["optim"]["epochs"] == 150  # Table 4
    assert m.defaults["threat"] == pytest.approx({"eps": 10 / 255, "step_size": 0.01, "steps": 40})  # Sec. 5.1


SYNTH = {"n_train": 64, "n_test": 32, "size": 10, "num_classes": 4, "channels": 1}


def _save_teacher(path: Path, regs) -> str:
    from robust_distill.core.components import DatasetInfo
    from robust_distill.engine.run import build_student, model_spec
    from robust_distill.files.atomic import atomic_save
    from robust_distill.files.checkpoint import FORMAT

    info = DatasetInfo("synthetic", 4, (1, 10, 10))
    kwargs = {"widths": [6, 5, 5, 4], "kernel_sizes": 3, "strides": 1}
    torch.manual_seed(0)
    model = build_student("timm:tsconv4_teacher", kwargs, info, regs)
    atomic_save({"format": FORMAT, "model": model_spec("timm:tsconv4_teacher", kwargs, info),
                 "state_dict": model.state_dict(), "epoch": 1, "config": {}}, path)
    return str(path)


def oracle_raw(tiny_raw, teacher: str, method: str, out: Path, **top) -> dict:
    raw = tiny_raw(method)
    raw["data"] = {**raw["data"], "dataset": "oracle",
                   "options": {"base": "synthetic", "teacher": f"checkpoint:{teacher}", "base_options": SYNTH}}
    raw.update(teachers={"oracle": f"checkpoint:{teacher}"}, output_dir=str(out),
               student={"key": "timm:tsconv4_student", "kwargs": {"widths": [7, 6, 6, 4], "kernel_sizes": 3,
                                                                  "strides": 1}})
    raw["optim"] = {**raw["optim"], "epochs": 1, "schedule": {"key": "constant"}}
    raw["eval"] = {"n_examples": 32, "attacks": ["clean"], "select": "clean"}
    raw.update(top)
    return raw


def test_ccat_without_attacked_samples_trains_as_label_training(regs, tiny_raw, tmp_path: Path) -> None:
    """fraction 0: every lambda is 1 and the loss is CE to the teacher's class: oracle_label's, step by step."""
    from robust_distill.config import resolve_config

    teacher = _save_teacher(tmp_path / "t.pt", regs)
    ccat = oracle_raw(tiny_raw, teacher, "ccat", tmp_path / "c", inner_attack={"kwargs": {"fraction": 0.0}})
    label = oracle_raw(tiny_raw, teacher, "oracle_label", tmp_path / "l")
    train(resolve_config(ccat, regs), regs=regs, resume=False)
    train(resolve_config(label, regs), regs=regs, resume=False)
    c, lab = (load_checkpoint(tmp_path / d / "last.pt")["state_dict"] for d in ("c", "l"))
    for k in c:  # soft-label CE at lambda = 1 and CE to the class index: equal up to float rounding
        assert torch.allclose(c[k], lab[k], rtol=1e-4, atol=1e-5), k


def test_ccat_trains_from_yaml_with_rho_exposed(regs, tiny_raw, tmp_path: Path) -> None:
    from robust_distill.config import resolve_config

    teacher = _save_teacher(tmp_path / "t.pt", regs)
    cfg = resolve_config(oracle_raw(tiny_raw, teacher, "ccat", tmp_path / "r"), regs,
                         overrides=["outer_loss.kwargs.rho=5"])
    assert cfg.outer_loss.kwargs["rho"] == 5 and cfg.outer_loss.kwargs["supervision"] == "label"
    summary = train(cfg, regs=regs, resume=False)
    assert 0 <= summary["best"]["val_clean"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    lam = rows[0]["train_ccat_lambda"]
    assert 0.5 <= lam <= 1  # half of each batch is clean (lambda 1), the other half in [0, 1]
