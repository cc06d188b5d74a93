"""Standard (natural) training: no inner maximisation, ``CE(S(x), y)``.

Trains the clean ("natural", "ST") teachers that dual-teacher methods need (AKD2, IAD-II, MTARD,
B-MTARD, CIARD). Defaults: 200 epochs, lr 0.1, wd 5e-4, x0.1 at 100 and 150.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from robust_distill import InnerAttack, Method, OuterLoss, Part, Step, hookimpl, training_defaults


class NoAttack(InnerAttack):
    """``x' = x``: no inner maximisation (standard training, or distillation on clean inputs only)."""

    def __call__(self, step: Step) -> Tensor:
        return step.x


class CleanCE(OuterLoss):
    """``CE(S(x), y)``, mean over the batch."""

    def __call__(self, step: Step) -> Tensor:
        return F.cross_entropy(step.student_logits("clean"), step.y)


NATURAL = Method(
    name="natural",
    inner_attack=Part("none"),
    outer_loss=Part("ce_clean"),
    teachers=(),
    defaults=training_defaults(epochs=200, weight_decay=5e-4, milestones=[100, 150], eps=None),
    summary="standard training on clean data (the natural teacher of dual-teacher methods)",
    reference="cross-entropy training; e.g. IAD's pre_train/ST.py",
)


@hookimpl
def rd_register_inner_attacks(registry):
    registry.register(NoAttack, name="none")


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(CleanCE, name="ce_clean")


@hookimpl
def rd_register_methods(registry):
    registry.register(NATURAL)
