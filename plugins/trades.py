"""TRADES (Zhang et al., ICML 2019, "Theoretically Principled Trade-off between Robustness and Accuracy").

Official code: ``yaodongyu/TRADES/trades.py``, ``train_trades_cifar10.py``.

Inner: ``x' = argmax KL(S(x') || S(x))`` with ``S(x)`` of the model in eval mode, start
``x + 0.001 N(0,1)``, 10 steps of 0.007, eps 0.031. Outer (Eq. 5):
``L = CE(S(x), y) + beta KL(S(x') || S(x))`` with the KL summed and divided by B (``batchmean``) and the
clean branch *not* detached (gradients flow through both). beta = 6. Training: lr 0.1, wd 2e-4, 76 epochs,
x0.1 at 75 (and 90, 100 when run longer).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from robust_distill import Method, OuterLoss, Part, Step, hookimpl, training_defaults
from robust_distill.losses import kl_div


class TRADESLoss(OuterLoss):
    """``CE(S(x), y) + beta KL_batchmean(S(x') || S(x))`` (TRADES, Eq. 5); ``S(x)`` is not detached."""

    def __init__(self, beta: float = 6.0) -> None:
        self.beta = beta

    def __call__(self, step: Step) -> Tensor:
        clean = step.student_logits("clean")
        natural = F.cross_entropy(clean, step.y)
        robust = kl_div(step.student_logits("adv"), clean, reduction="batchmean")
        step.logs.update(ce=natural.detach(), kl=robust.detach())
        return natural + self.beta * robust


TRADES = Method(
    name="trades",
    inner_attack=Part("kl_pgd", {"target": "student_clean", "start": "gaussian", "clamp_start": False}),
    outer_loss=Part("trades", {"beta": 6.0}),
    teachers=(),
    defaults=training_defaults(epochs=76, weight_decay=2e-4, milestones=[75, 90, 100], eps=0.031, step_size=0.007),
    summary="TRADES (Zhang et al. 2019): CE(S(x)) + beta KL(S(x')||S(x)), beta = 6",
    reference="Zhang et al., ICML 2019, Eq. 5; yaodongyu/TRADES/trades.py",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(TRADESLoss, name="trades")


@hookimpl
def rd_register_methods(registry):
    registry.register(TRADES)
