"""The inner maximisations shared by the methods, all through the one PGD loop (``robust_distill.core.attacks``).

* ``pgd_ce``: ``x' = argmax CE(S(x'), y)`` (PGD-AT, ARD, IAD, AKD2, MTARD, CIARD);
* ``kl_pgd``: ``x' = argmax KL(S(x') || target)`` with ``target`` one of ``teacher_clean`` (``T(x)``,
  RSLAD), ``teacher_adv`` (``T(x')``, in the graph: AdaAD, AdaIAD, IGDM, DGAD) or ``student_clean``
  (``S(x)`` in eval mode, TRADES).

The methods name them through the presets below (one definition of each official code's inner maximisation);
a preset of one method only (AKD's clipped gaussian start, PeerAiD's attack of the peer) stays with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_distill import BNMode, InnerPGD, Part, Start, Step, hookimpl, kl_div

__all__ = ["StudentCE", "KLToTarget", "MADRY_PGD", "ARD_PGD", "MTARD_PGD", "TRADES_KL_PGD", "RSLAD_KL_PGD",
           "ADAAD_KL_PGD"]

Target = Literal["teacher_clean", "teacher_adv", "student_clean"]


class StudentCE(InnerPGD):
    """``x' = argmax_{||x'-x|| <= eps} CE(S(x'), y)``: the student-only PGD of Madry et al.

    :param start: ``uniform`` (default, Madry/ARD/IAD) or ``gaussian`` (MTARD/CIARD: x + 0.001 N(0,1)).
    :param clamp_start: clip the start to [0, 1] (Madry: yes; ARD/IAD: no).
    :param bn_mode: student mode during the attack: ``eval`` or ``train`` (ARD, IAD).
    """

    def __init__(self, start: Start = "uniform", clamp_start: bool = True, bn_mode: BNMode = "eval") -> None:
        super().__init__(start=start, clamp_start=clamp_start, bn_mode=bn_mode)

    def objective(self, step: Step, x_adv: Tensor) -> Tensor:
        return F.cross_entropy(step.student_module(x_adv), step.y, reduction="sum")


class KLToTarget(InnerPGD):
    """``x' = argmax KL(S(x') || target)`` (sum over the batch).

    :param target: ``teacher_clean`` = ``T(x)`` computed once (RSLAD, Eq. 5 of the AdaAD paper);
        ``teacher_adv`` = ``T(x')``, with the teacher in the graph w.r.t. ``x'`` (AdaAD, Eq. 9);
        ``student_clean`` = ``S(x)`` of the student in eval mode, computed once (TRADES).
    :param role: which teacher (``robust`` by default).
    :param temperature: applied to both sides.
    :param start: ``gaussian`` (0.001 N(0,1), the default of every KL-based method) or ``uniform``.
    """

    def __init__(self, target: Target = "teacher_clean", role: str = "robust", temperature: float = 1.0,
                 start: Start = "gaussian", clamp_start: bool = False, bn_mode: BNMode = "eval") -> None:
        super().__init__(start=start, clamp_start=clamp_start, bn_mode=bn_mode)
        if target not in ("teacher_clean", "teacher_adv", "student_clean"):
            raise ValueError(f"target must be teacher_clean, teacher_adv or student_clean, got {target!r}")
        self.target, self.role, self.temperature = target, role, temperature

    def make_objective(self, step: Step) -> Callable[[Tensor], Tensor]:
        student, tau = step.student_module, self.temperature
        if self.target == "teacher_adv":
            teacher = step.teachers[self.role]
            return lambda xa: kl_div(student(xa), teacher(xa), reduction="sum", temperature=tau)
        if self.target == "teacher_clean":
            target = step.teacher_logits("clean", self.role)
        else:
            with torch.no_grad():
                target = student(step.x)
        return lambda xa: kl_div(student(xa), target, reduction="sum", temperature=tau)

    def __repr__(self) -> str:
        return f"KLToTarget(target={self.target!r}, start={self.start!r}, bn_mode={self.bn_mode!r})"


# -- presets: the official codes' inner maximisations, as the methods name them ----------------------------------

#: PGD-AT: uniform start clipped to [0, 1], student in eval mode (``MadryLab/cifar10_challenge``).
MADRY_PGD = Part("pgd_ce", {"start": "uniform", "clamp_start": True, "bn_mode": "eval"})
#: ARD, IAD-I/II, AKD2: uniform start *not* clipped, student in **train** mode
#: (``goldblum/AdversariallyRobustDistillation/main.py``, ``ZFancy/IAD``).
ARD_PGD = Part("pgd_ce", {"start": "uniform", "clamp_start": False, "bn_mode": "train"})
#: MTARD, B-MTARD, CIARD: ``x + 0.001 N(0,1)`` not clipped, eval mode (``zhaoshiji123/MTARD/mtard/mtard_loss.py``
#: ``mtard_inner_loss_ce``; ``eminentgu/CIARD/mtard_loss.py`` ``robust_inner_loss_push``).
MTARD_PGD = Part("pgd_ce", {"start": "gaussian", "clamp_start": False, "bn_mode": "eval"})
#: TRADES: ``KL(S(x') || S(x))``, ``x + 0.001 N(0,1)`` (``yaodongyu/TRADES/trades.py`` ``trades_loss``).
TRADES_KL_PGD = Part("kl_pgd", {"target": "student_clean", "start": "gaussian", "clamp_start": False})
#: RSLAD, RSLAD+IGDM: ``KL(S(x') || T(x))``, ``x + 0.001 N(0,1)`` (``zibojia/RSLAD/rslad_loss.py``).
RSLAD_KL_PGD = Part("kl_pgd", {"target": "teacher_clean", "start": "gaussian", "clamp_start": False})
#: AdaAD, AdaIAD, AdaAD+IGDM, DGAD: ``KL(S(x') || T(x'))``, ``x + 0.001 N(0,1)``
#: (``boyellow/AdaAD/AT_helper.py`` ``adaad_inner_loss``).
ADAAD_KL_PGD = Part("kl_pgd", {"target": "teacher_adv", "start": "gaussian", "clamp_start": False})


@hookimpl
def rd_register_inner_attacks(registry):
    registry.register(StudentCE, name="pgd_ce")
    registry.register(KLToTarget, name="kl_pgd")
