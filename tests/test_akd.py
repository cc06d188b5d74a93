"""AKD (plugins/akd.py; Maroto et al. as the AdaAD paper's Eq. 5): the outer loss against values computed by
hand, its two ends (beta = 0 is PGD-AT's loss, beta = 1 a cross-entropy to the teacher), its gradient, and the
method's parts and defaults."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from robust_distill import Step, ThreatModel
from robust_distill.engine.trainer import train
from robust_distill.files.checkpoint import load_checkpoint

from .handcalc import B, D, kl_by_hand, softmax
from .handcalc import linear as _linear


class Fixed(nn.Module):
    """A model whose logits are the parameter ``z`` whatever the input (one row per sample)."""

    def __init__(self, z: list[list[float]]) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.tensor(z, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return self.z * 1.0


def fixed_step() -> Step:
    """Two samples, two classes: S(x') = [log 3, 0], [0, log 3]; T(x') = [log 3, 0], [0, 0]; y = 1, 0."""
    log3 = math.log(3.0)
    step = Step(torch.zeros(2, 1, dtype=torch.float64), torch.tensor([1, 0]), student=Fixed([[log3, 0.0], [0.0, log3]]),
                teachers={"robust": Fixed([[log3, 0.0], [0.0, 0.0]]).requires_grad_(False)}, threat=ThreatModel())
    step.add_input("adv", torch.ones(2, 1, dtype=torch.float64))
    return step


def test_akd_loss_by_hand(regs) -> None:
    step = fixed_step()
    loss = regs.outer_losses.build("akd", {"beta": 0.5})(step)
    # row 1: p_S = (3/4, 1/4), p_T = (3/4, 1/4), y = 1 -> mixed label (3/8, 5/8)
    row1 = -(3 / 8 * math.log(3 / 4) + 5 / 8 * math.log(1 / 4))  # 0.974315
    # row 2: p_S = (1/4, 3/4), p_T = (1/2, 1/2), y = 0 -> mixed label (3/4, 1/4)
    row2 = -(3 / 4 * math.log(1 / 4) + 1 / 4 * math.log(3 / 4))  # 1.111641
    assert loss.item() == pytest.approx((row1 + row2) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(1.042978, abs=1e-6)
    # d loss / d S(x') = (p_S - mixed label) / B
    (grad,) = torch.autograd.grad(loss, step.student.z)
    expected = torch.tensor([[3 / 4 - 3 / 8, 1 / 4 - 5 / 8], [1 / 4 - 3 / 4, 3 / 4 - 1 / 4]], dtype=torch.float64) / 2
    assert torch.allclose(grad, expected, atol=1e-12)


def linear_step(teacher_grad: bool = False) -> Step:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, D, generator=g)
    step = Step(x, torch.tensor([0, 1, 2, 1]), student=_linear(1),
                teachers={"robust": _linear(2, 3.0).requires_grad_(teacher_grad)}, threat=ThreatModel())
    step.add_input("adv", (x + 0.1 * torch.randn(B, D, generator=g)).clamp(0, 1))
    return step


def test_beta_zero_is_pgd_at_and_beta_one_is_cross_entropy_to_the_teacher(regs) -> None:
    pgd_at = regs.outer_losses.build("ce_adv", {})(linear_step())
    assert regs.outer_losses.build("akd", {"beta": 0.0})(linear_step()).item() == pytest.approx(pgd_at.item(), rel=1e-6)
    step = linear_step()
    with torch.no_grad():
        s, t = step.student(step.x_adv), step.teachers["robust"](step.x_adv)  # the teacher on x', not x
    p_t = softmax(t)
    entropy = -(p_t * torch.log(p_t)).sum(1)
    # CE(S, p_T) = KL(p_T || p_S) + H(p_T), per sample, averaged over the batch
    expected = (kl_by_hand(s, t) + entropy).mean().item()
    assert regs.outer_losses.build("akd", {"beta": 1.0})(step).item() == pytest.approx(expected, rel=1e-5)


def test_the_teacher_receives_no_gradient(regs) -> None:
    step = linear_step(teacher_grad=True)
    regs.outer_losses.build("akd", {})(step).backward()
    assert all(p.grad is None for p in step.teachers["robust"].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in step.student.parameters())


def test_beta_outside_the_unit_interval_is_refused(regs) -> None:
    with pytest.raises(ValueError, match=r"AKDLoss: beta .* must be in \[0, 1\], got 1.5"):
        regs.outer_losses.build("akd", {"beta": 1.5})


def test_akd_parts_and_defaults(regs, tiny_config) -> None:
    m = regs.methods.get("akd")
    assert (m.inner_attack.key, dict(m.inner_attack.kwargs)) == (
        "pgd_ce", {"start": "gaussian", "clamp_start": True, "bn_mode": "eval"})  # Eq. 3, AdaAD's Madry_PGD
    assert (m.outer_loss.key, dict(m.outer_loss.kwargs), m.teachers) == ("akd", {"beta": 0.5}, ("robust",))
    optim = m.defaults["optim"]
    assert (optim["epochs"], optim["lr"], optim["weight_decay"]) == (200, 0.1, 5e-4)
    assert optim["schedule"]["kwargs"]["milestones"] == [100, 150]
    assert m.defaults["threat"] == pytest.approx({"eps": 8 / 255, "step_size": 2 / 255, "steps": 10})
    cfg = tiny_config("akd", teacher=True, overrides=["outer_loss.kwargs.beta=0.25"])  # validated: builds the run
    assert cfg.outer_loss.key == "akd" and cfg.outer_loss.kwargs["beta"] == 0.25


def test_a_run_with_beta_zero_trains_as_pgd_at_with_the_same_attack(tiny_config, tmp_path: Path) -> None:
    """The whole path (attack, loss, optimiser): beta = 0 drops the teacher, AKD is then PGD-AT with Eq. 3's PGD."""
    fast = ["optim.epochs=1", "optim.weight_decay=5e-4", "eval.attacks=[clean]", "eval.select=clean"]
    akd = tiny_config("akd", teacher=True,
                      overrides=[*fast, "outer_loss.kwargs.beta=0", f"output_dir={tmp_path / 'a'}"])
    pgd_at = tiny_config("pgd_at",
                         overrides=[*fast, "inner_attack.kwargs.start=gaussian", f"output_dir={tmp_path / 'p'}"])
    assert dict(pgd_at.inner_attack.kwargs) == dict(akd.inner_attack.kwargs)
    train(akd)
    train(pgd_at)
    a, p = (load_checkpoint(tmp_path / d / "last.pt")["state_dict"] for d in ("a", "p"))
    assert a.keys() == p.keys()
    for k in a:  # CE to a one-hot probability target and CE to the class index: equal up to float rounding
        assert torch.allclose(a[k].float(), p[k].float(), rtol=1e-4, atol=1e-5), k
