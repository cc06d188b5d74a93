"""RSLAD (Zi et al., ICCV 2021, "Revisiting Adversarial Robustness Distillation: Robust Soft Labels ...").

Official code: ``zibojia/RSLAD/rslad_loss.py``, ``resnet18_rslad_cifar10.py``.

Inner: ``x' = argmax KL(S(x') || T(x))`` with the teacher's clean soft label computed once, start
``x + 0.001 N(0,1)`` (not clipped), 10 steps of 2/255, eps 8/255, student in eval mode.
Outer: ``L = 5/6 KL(S(x') || T(x)) + 1/6 KL(S(x) || T(x))``, no CE, no temperature, both terms with the
official ``kl_loss`` (``-a*b + log(b + 1e-5)*b`` averaged over B*C; ``outer_loss.kwargs.kl_reduction:
batchmean`` averages over the batch only, the paper's per-sample KL: both terms, and so the loss, x C).
Training: 300 epochs, lr 0.1, wd 2e-4, x0.1 at 215, 260, 285.

The official CIFAR-100 scripts multiply both terms by 10 (README: "to keep consistent with CIFAR-10") and
use ``log(softmax)``; set ``outer_loss.kwargs.scale: 10`` for the former (we always use log_softmax, which
avoids the ``-inf * 0 = nan`` of the latter).
"""

from __future__ import annotations

from torch import Tensor

from robust_distill import (
    KLReduction,
    Method,
    OuterLoss,
    Part,
    Step,
    check_kl_reduction,
    hookimpl,
    kl_div,
    training_defaults,
)
from robust_distill_plugins.inner_attacks import RSLAD_KL_PGD


class RSLADLoss(OuterLoss):
    """``scale * [alpha KL(S(x')||T(x)) + (1 - alpha) KL(S(x)||T(x))]``, KL averaged over B*C (RSLAD).

    :param alpha: weight of the adversarial term (5/6).
    :param scale: overall factor (1; the official CIFAR-100 scripts use 10).
    :param kl_reduction: ``mean`` (sum/(B*C), the official ``kl_loss(...).mean()``) or ``batchmean`` (x C).
    """

    def __init__(self, alpha: float = 5 / 6, scale: float = 1.0, kl_reduction: KLReduction = "mean") -> None:
        self.alpha, self.scale = alpha, scale
        self.kl_reduction = check_kl_reduction(kl_reduction, type(self).__name__)

    def __call__(self, step: Step) -> Tensor:
        target = step.teacher_logits("clean")
        kl_adv = kl_div(step.student_logits("adv"), target, reduction=self.kl_reduction, log_eps=1e-5)
        kl_nat = kl_div(step.student_logits("clean"), target, reduction=self.kl_reduction, log_eps=1e-5)
        step.logs.update(kl_adv=kl_adv.detach(), kl_nat=kl_nat.detach())
        return self.scale * (self.alpha * kl_adv + (1 - self.alpha) * kl_nat)


RSLAD = Method(
    name="rslad",
    inner_attack=RSLAD_KL_PGD,
    outer_loss=Part("rslad", {"alpha": 5 / 6, "scale": 1.0}),
    defaults=training_defaults(epochs=300, weight_decay=2e-4, milestones=[215, 260, 285]),
    summary="RSLAD (Zi et al. 2021): robust soft labels T(x) in the inner and outer problems",
    reference="Zi et al., ICCV 2021, Eq. 6-7; zibojia/RSLAD/rslad_loss.py",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(RSLADLoss, name="rslad")


@hookimpl
def rd_register_methods(registry):
    registry.register(RSLAD)
