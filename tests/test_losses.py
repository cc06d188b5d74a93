"""Outer losses of the core methods against formulas evaluated by hand on small fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robust_distill import Step, ThreatModel
from robust_distill.core.losses import entropy, kl_div

from .handcalc import B, C, D, kl_by_hand, softmax
from .handcalc import linear as _linear


def make_step(teacher_grad: bool = False) -> Step:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, D, generator=g)
    y = torch.tensor([0, 1, 2, 1])
    teacher = _linear(2).requires_grad_(teacher_grad)
    step = Step(x, y, student=_linear(1), teachers={"robust": teacher}, threat=ThreatModel())
    step.add_input("adv", (x + 0.05 * torch.randn(B, D, generator=g)).clamp(0, 1))
    return step




def test_kl_div_literal_values() -> None:
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812
    assert kl_div(s, t, reduction="batchmean").item() == pytest.approx(expected, abs=1e-6)
    assert kl_div(s, t, reduction="mean").item() == pytest.approx(expected / 2, abs=1e-6)  # /(B*C)
    assert kl_div(s, t, reduction="sum").item() == pytest.approx(expected, abs=1e-6)
    # temperature 2: p_t = softmax([log 3 / 2, 0]) = [sqrt3, 1]/(sqrt3 + 1)
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    tempered = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert kl_div(s, t, reduction="batchmean", temperature=2.0).item() == pytest.approx(tempered, abs=1e-6)


def test_kl_div_reductions_match_torch() -> None:
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    ref = nn.functional.kl_div(torch.log_softmax(s, 1), torch.softmax(t, 1), reduction="sum")
    assert kl_div(s, t, reduction="batchmean") == pytest.approx((ref / 6).item(), rel=1e-5)
    assert kl_div(s, t, reduction="mean") == pytest.approx((ref / 60).item(), rel=1e-5)
    assert torch.allclose(kl_div(s, t, reduction="none"), kl_by_hand(s, t), atol=1e-6)


def test_entropy_of_uniform_and_onehot() -> None:
    assert entropy(torch.zeros(1, 10)).item() == pytest.approx(math.log(10), abs=1e-6)
    assert entropy(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_pgd_at_loss(regs) -> None:
    step = make_step()
    loss = regs.outer_losses.build("ce_adv", {})(step)
    s = step.student(step.x_adv)
    expected = -torch.log(softmax(s)[torch.arange(B), step.y]).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_ard_loss(regs, alpha: float) -> None:
    step = make_step()
    loss = regs.outer_losses.build("ard", {"alpha": alpha, "temperature": 30.0})(step)
    s_adv, s_nat, t_nat = step.student(step.x_adv), step.student(step.x), step.teachers["robust"](step.x)
    kd = kl_by_hand(s_adv / 30, t_nat / 30).sum() / (B * C)  # nn.KLDivLoss() 'mean' = sum/(B*C)
    ce = -torch.log(softmax(s_nat)[torch.arange(B), step.y]).mean()
    expected = alpha * 900 * kd + (1 - alpha) * ce
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_rslad_loss(regs) -> None:
    step = make_step()
    loss = regs.outer_losses.build("rslad", {})(step)
    t = step.teachers["robust"](step.x)  # the *clean* teacher output for both terms
    adv = kl_by_hand(step.student(step.x_adv), t, eps=1e-5).sum() / (B * C)
    nat = kl_by_hand(step.student(step.x), t, eps=1e-5).sum() / (B * C)
    assert loss.item() == pytest.approx((5 / 6 * adv + 1 / 6 * nat).item(), rel=1e-5)
    scaled = regs.outer_losses.build("rslad", {"scale": 10.0})(make_step())
    assert scaled.item() == pytest.approx(10 * loss.item(), rel=1e-5)


@pytest.mark.parametrize("alpha,reduction", [(1.0, "mean"), (0.8, "batchmean")])
def test_adaad_loss(regs, alpha: float, reduction: str) -> None:
    step = make_step()
    loss = regs.outer_losses.build("adaad", {"alpha": alpha, "kl_reduction": reduction})(step)
    teacher = step.teachers["robust"]
    div = B * C if reduction == "mean" else B
    adv = kl_by_hand(step.student(step.x_adv), teacher(step.x_adv)).sum() / div  # T on x', not x
    nat = kl_by_hand(step.student(step.x), teacher(step.x)).sum() / div
    assert loss.item() == pytest.approx((alpha * adv + (1 - alpha) * nat).item(), rel=1e-5)


def test_trades_loss_and_its_gradient_through_the_clean_branch(regs) -> None:
    step = make_step()
    loss = regs.outer_losses.build("trades", {"beta": 6.0})(step)
    s_adv, s_nat = step.student(step.x_adv), step.student(step.x)
    ce = -torch.log(softmax(s_nat)[torch.arange(B), step.y]).mean()
    expected = ce + 6.0 * kl_by_hand(s_adv, s_nat).sum() / B
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the KL target S(x) is not detached: the KL term alone has a gradient through the clean logits
    clean = step.student_logits("clean")
    kl = kl_div(step.student_logits("adv"), clean, reduction="batchmean")
    (g,) = torch.autograd.grad(kl, clean)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("method", ["ard", "rslad", "adaad"])
def test_teachers_never_receive_gradients(regs, method: str) -> None:
    step = make_step(teacher_grad=True)  # even a teacher with trainable parameters
    key = regs.methods.get(method).outer_loss
    loss = regs.outer_losses.build(key.key, dict(key.kwargs))(step)
    loss.backward()
    assert all(p.grad is None for p in step.teachers["robust"].parameters())
    assert all(p.grad is not None for p in step.student.parameters())


def test_step_computes_each_output_once() -> None:
    step = make_step()
    calls = {"n": 0}
    teacher = step.teachers["robust"]
    teacher.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    a = step.teacher_logits("clean")
    b = step.teacher_logits("clean")
    assert calls["n"] == 1 and a is not b and torch.equal(a, b) and not a.requires_grad
    step.add_input("adv", step.x_adv + 0)  # replacing an input drops its cached outputs
    step.teacher_logits("adv")
    step.teacher_logits("adv")
    assert calls["n"] == 2
