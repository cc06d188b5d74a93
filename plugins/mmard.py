"""MMARD (Wang et al., arXiv 2503.06559, 2025, "Improving Adversarial Robustness Distillation by
Min-Max Optimization ..."): **an interpretation**, not a reproduction.

No code, equations or hyper-parameters of MMARD are public; only its abstract
(``shared/papers/mmard_abstract.md``). It says (1) the inner process should "introduce the teacher's
robust predictions, which drive the training examples closer to the teacher's decision boundary", and
(2) the outer process should model the "triangular relationships" between the natural and robust
scenarios and the teacher. This module implements the following reading of it; every term and weight
below is our choice, named so that it can be ablated from the config.

Inner (``mmard_boundary``): ``x' = argmax KL(S(x') || T(x)) - lambda * relu(m_T(x'))`` where ``T(x)`` is the
teacher's robust soft label (RSLAD's target) and ``m_T(x') = z_T,y(x') - max_{k != y} z_T,k(x')`` is the
teacher's logit margin at ``x'``, differentiable through the teacher. The second term pulls ``x'`` towards
the teacher's decision boundary (margin 0) and stops pushing once it is crossed, so the examples lie
where the teacher is least certain instead of wherever the student is most wrong. ``lambda = 0`` gives
RSLAD's inner problem.

Outer (``mmard``), over the triangle natural student ``S(x)`` / robust student ``S(x')`` / teacher:
``L = a_rt KL(S(x') || T(x')) + a_nt KL(S(x) || T(x)) + a_nr JS(S(x), S(x'))``
(robust-teacher, natural-teacher and natural-robust edges; KL ``batchmean``; the Jensen-Shannon edge is
symmetric and keeps gradients into both student branches, so natural and robust learning are coupled
rather than decoupled, which is the abstract's diagnosis). Defaults a_rt = 1, a_nt = 1/6, a_nr = 1,
lambda = 1; AdaAD's training schedule (200 epochs, wd 5e-4, x0.1 at 100/150).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robust_distill import (
    BNMode,
    InnerPGD,
    Method,
    OuterLoss,
    Part,
    Start,
    Step,
    hookimpl,
    js_divergence,
    kl_div,
    training_defaults,
)


def teacher_margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{k != y} z_k`` per sample."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - other


class BoundaryAttack(InnerPGD):
    """``x' = argmax KL(S(x')||T(x)) - lambda relu(m_T(x'))`` (MMARD interpretation, see module docstring).

    :param boundary_weight: lambda; 0 is RSLAD's inner maximisation.
    """

    def __init__(self, boundary_weight: float = 1.0, role: str = "robust", start: Start = "gaussian",
                 clamp_start: bool = False, bn_mode: BNMode = "eval") -> None:
        super().__init__(start=start, clamp_start=clamp_start, bn_mode=bn_mode)
        self.boundary_weight, self.role = boundary_weight, role

    def make_objective(self, step: Step) -> Callable[[Tensor], Tensor]:
        student, teacher = step.student_module, step.teachers[self.role]
        target = step.teacher_logits("clean", self.role)
        lam = self.boundary_weight

        def objective(x_adv: Tensor) -> Tensor:
            kl = kl_div(student(x_adv), target, reduction="sum")
            if lam == 0:
                return kl
            return kl - lam * torch.relu(teacher_margin(teacher(x_adv), step.y)).sum()
        return objective


class MMARDLoss(OuterLoss):
    """``a_rt KL(S(x')||T(x')) + a_nt KL(S(x)||T(x)) + a_nr JS(S(x), S(x'))``, batchmean (interpretation).

    :param robust_teacher: a_rt, the robust-student / teacher edge.
    :param natural_teacher: a_nt, the natural-student / teacher edge.
    :param natural_robust: a_nr, the natural-student / robust-student edge (Jensen-Shannon).
    """

    def __init__(self, robust_teacher: float = 1.0, natural_teacher: float = 1 / 6,
                 natural_robust: float = 1.0) -> None:
        self.a_rt, self.a_nt, self.a_nr = robust_teacher, natural_teacher, natural_robust

    def __call__(self, step: Step) -> Tensor:
        s_adv, s_nat = step.student_logits("adv"), step.student_logits("clean")
        rt = kl_div(s_adv, step.teacher_logits("adv"), reduction="batchmean")
        nt = kl_div(s_nat, step.teacher_logits("clean"), reduction="batchmean")
        nr = js_divergence(s_nat, s_adv).mean()
        step.logs.update(kl_robust_teacher=rt.detach(), kl_natural_teacher=nt.detach(), js_natural_robust=nr.detach())
        return self.a_rt * rt + self.a_nt * nt + self.a_nr * nr


MMARD = Method(
    name="mmard",
    inner_attack=Part("mmard_boundary", {"boundary_weight": 1.0}),
    outer_loss=Part("mmard", {"robust_teacher": 1.0, "natural_teacher": 1 / 6, "natural_robust": 1.0}),
    defaults=training_defaults(epochs=200, weight_decay=5e-4, milestones=[100, 150]),
    summary="MMARD (interpretation of the abstract): boundary-seeking inner + natural/robust/teacher triangle",
    reference="Wang et al., arXiv 2503.06559 (abstract only; no code or equations public)",
)


@hookimpl
def rd_register_inner_attacks(registry):
    registry.register(BoundaryAttack, name="mmard_boundary")


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(MMARDLoss, name="mmard")


@hookimpl
def rd_register_methods(registry):
    registry.register(MMARD)
