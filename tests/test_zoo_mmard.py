"""MMARD (our documented interpretation of the abstract): loss and inner objective by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robust_distill import Step, ThreatModel
from robust_distill.core.losses import js_divergence
from robust_distill.engine.trainer import train
from robust_distill_plugins.mmard import teacher_margin

from .handcalc import B, kl_by_hand, softmax
from .test_losses import make_step


def test_js_divergence_by_hand() -> None:
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.75, 0.25])
    m = (p + q) / 2
    expected = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    assert js_divergence(a, b).item() == pytest.approx(expected.item(), abs=1e-6)
    assert js_divergence(b, a).item() == pytest.approx(expected.item(), abs=1e-6)  # symmetric
    assert js_divergence(torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]])).item() == pytest.approx(
        math.log(2), abs=1e-5)  # bounded by log 2


def test_mmard_loss(regs) -> None:
    step = make_step()
    loss = regs.outer_losses.build("mmard", {})(step)
    t = step.teachers["robust"]
    s_adv, s_nat = step.student(step.x_adv), step.student(step.x)
    rt = kl_by_hand(s_adv, t(step.x_adv)).sum() / B
    nt = kl_by_hand(s_nat, t(step.x)).sum() / B
    p, q = softmax(s_nat), softmax(s_adv)
    m = (p + q) / 2
    js = (0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)).mean()
    assert loss.item() == pytest.approx((rt + nt / 6 + js).item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in t.parameters())


def test_teacher_margin() -> None:
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert teacher_margin(z, torch.tensor([0, 2])).tolist() == [1.0, -4.0]


def _conv(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 4))


def test_boundary_term_pulls_towards_the_teacher_boundary(regs) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    teacher = _conv(1).eval().requires_grad_(False)
    threat = ThreatModel(eps=16 / 255, step_size=4 / 255, steps=5)
    out = {}
    for lam in (0.0, 50.0):
        torch.manual_seed(0)
        step = Step(x, y, student=_conv(0), teachers={"robust": teacher}, threat=threat)
        out[lam] = regs.inner_attacks.build("mmard_boundary", {"boundary_weight": lam})(step)
    with torch.no_grad():
        margins = {lam: torch.relu(teacher_margin(teacher(v), y)).sum() for lam, v in out.items()}
    assert margins[50.0] < margins[0.0]
    torch.manual_seed(0)  # lambda = 0 is exactly RSLAD's inner maximisation
    rslad = regs.inner_attacks.build("kl_pgd", {"target": "teacher_clean"})(
        Step(x, y, student=_conv(0), teachers={"robust": teacher}, threat=threat))
    assert torch.equal(rslad, out[0.0])


def test_mmard_trains(tiny_config) -> None:
    summary = train(tiny_config("mmard", True, overrides=["optim.epochs=1"]))
    assert summary["best_epoch"] == 0
