"""ARD (Goldblum et al., AAAI 2020, "Adversarially Robust Distillation").

Official code: ``goldblum/AdversariallyRobustDistillation/main.py``.

Inner: student-only CE PGD, uniform start *not* clipped to [0, 1], 10 steps of 2/255, eps 8/255, the
student in **train** mode during the attack (BN batch statistics; running statistics move at every step).
Outer (paper Eq. 3):
``L = alpha tau^2 KL(S(x')/tau || T(x)/tau) + (1 - alpha) CE(S(x), y)``, teacher on the *clean* input, KL
reduction ``mean`` = sum/(B*C) (``nn.KLDivLoss()``'s default in the code; ``outer_loss.kwargs.kl_reduction:
batchmean`` is the paper's per-sample KL and multiplies the KD term by C, the CE term unchanged). Defaults
tau = 30, alpha = 1 (the CE term is off). Training: 200 epochs, lr 0.1, wd 2e-4, x0.1 at 100 and 150.

Student forwards in train mode, as the official ``train``: the attack's steps, ``S(x')`` (the return value of
``AttackPGD``), then ``S(x)`` (``basic_outputs = basic_net(inputs)``), which the code computes at every step
even at alpha = 1 where the CE term has weight 0. That forward changes neither the loss nor its gradient but
moves the BN running statistics that evaluation uses; we run it too, after ``S(x')``
(``outer_loss.kwargs.reproduce_forwards: false`` skips it when no term needs it).

Differs from the official code: its ``adjust_learning_rate`` restarts from the initial lr at each
milestone, so the lr stays 0.01 after epoch 100 and never reaches 0.001. We decay at both milestones;
``optim.schedule.kwargs.reproduce_reset_bug: true`` reproduces the official schedule.
"""

from __future__ import annotations

import torch.nn.functional as F
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
from robust_distill_plugins.inner_attacks import ARD_PGD


class ARDLoss(OuterLoss):
    """``alpha tau^2 KL(S(x')/tau || T(x)/tau) + (1 - alpha) CE(S(x), y)`` (ARD, Eq. 3).

    :param alpha: weight of the distillation term (1.0: no CE term, no clean forward).
    :param temperature: tau (30 in the official code).
    :param kl_reduction: ``mean`` = sum/(B*C) as the official ``nn.KLDivLoss()``, or ``batchmean`` (x C).
    :param teacher_input: ``clean`` (ARD) or ``adv``.
    :param reduction: the former name of ``kl_reduction`` (deprecated: a ``FutureWarning``).
    :param reproduce_forwards: run ``S(x)`` in train mode after ``S(x')`` even at alpha = 1, as the
        official code does (its BN running statistics); ``false`` skips it when the CE term is off.
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 30.0, kl_reduction: KLReduction = "mean",
                 teacher_input: str = "clean", reproduce_forwards: bool = True,
                 reduction: KLReduction | None = None) -> None:
        self.alpha, self.temperature, self.teacher_input = alpha, temperature, teacher_input
        self.kl_reduction = check_kl_reduction(kl_reduction, type(self).__name__, renamed=reduction)
        self.reproduce_forwards = reproduce_forwards

    def __call__(self, step: Step) -> Tensor:
        tau = self.temperature
        if self.reproduce_forwards:  # main.py: outputs (S(x'), from AttackPGD), then basic_net(inputs)
            step.student_forwards(("adv", "clean"), needed=("adv", "clean") if self.alpha != 1.0 else ("adv",))
        kd = kl_div(step.student_logits("adv"), step.teacher_logits(self.teacher_input), temperature=tau,
                    reduction=self.kl_reduction)
        loss = self.alpha * tau * tau * kd
        if self.alpha != 1.0:
            loss = loss + (1 - self.alpha) * F.cross_entropy(step.student_logits("clean"), step.y)
        step.logs["kd"] = kd.detach()
        return loss


ARD = Method(
    name="ard",
    inner_attack=ARD_PGD,
    outer_loss=Part("ard", {"alpha": 1.0, "temperature": 30.0, "kl_reduction": "mean"}),
    defaults=training_defaults(epochs=200, weight_decay=2e-4, milestones=[100, 150]),
    summary="ARD (Goldblum et al. 2020): KD at tau=30 from T(x) on student CE-PGD examples",
    reference="Goldblum et al., AAAI 2020, Eq. 3; goldblum/AdversariallyRobustDistillation/main.py",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(ARDLoss, name="ard")


@hookimpl
def rd_register_methods(registry):
    registry.register(ARD)
