"""TRADES (Zhang et al., ICML 2019, "Theoretically Principled Trade-off between Robustness and Accuracy").

Official code: ``yaodongyu/TRADES/trades.py``, ``train_trades_cifar10.py``.

Inner: ``x' = argmax KL(S(x') || S(x))`` with ``S(x)`` of the model in eval mode, start
``x + 0.001 N(0,1)``, 10 steps of 0.007, eps 0.031. Outer (Eq. 5):
``L = CE(S(x), y) + beta KL(S(x') || S(x))`` with the KL summed and divided by B (``batchmean``) and the
clean branch *not* detached (gradients flow through both). beta = 6.

Training: lr 0.1, wd 2e-4, 76 epochs; ``adjust_learning_rate`` decays x0.1 at ``epoch >= 75`` (and 90, 100
when run longer) on the loop's **1-based** epoch (``for epoch in range(1, args.epochs + 1)``), i.e. from the
0-based epochs 74, 89 and 99 of this engine: the last two of the 76 epochs run at lr 0.01.

Student forwards after the attack, in train mode, as ``trades_loss``: ``S(x)`` (the CE term), ``S(x')``, then
``S(x)`` again (the KL target is a second forward on the clean batch). The second clean forward gives the same
output in train mode, so the loss and its gradient are those of one forward, but it moves the BN running
statistics that evaluation uses; we run it too (no gradient), after ``S(x')``
(``outer_loss.kwargs.reproduce_forwards: false`` skips it).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from robust_distill import Method, OuterLoss, Part, Step, hookimpl, kl_div, training_defaults
from robust_distill_plugins.inner_attacks import TRADES_KL_PGD


class TRADESLoss(OuterLoss):
    """``CE(S(x), y) + beta KL_batchmean(S(x') || S(x))`` (TRADES, Eq. 5); ``S(x)`` is not detached.

    :param beta: the trade-off (6).
    :param reproduce_forwards: the official second train-mode forward on ``x`` after ``S(x')`` (its BN
        running statistics; same loss and gradient); ``false`` skips it.
    """

    def __init__(self, beta: float = 6.0, reproduce_forwards: bool = True) -> None:
        self.beta, self.reproduce_forwards = beta, reproduce_forwards

    def __call__(self, step: Step) -> Tensor:
        if self.reproduce_forwards:  # trades_loss: model(x_natural), model(x_adv), model(x_natural)
            step.student_forwards(("clean", "adv", "clean"), needed=("clean", "adv"))
        clean = step.student_logits("clean")
        natural = F.cross_entropy(clean, step.y)
        robust = kl_div(step.student_logits("adv"), clean, reduction="batchmean")
        step.logs.update(ce=natural.detach(), kl=robust.detach())
        return natural + self.beta * robust


TRADES = Method(
    name="trades",
    inner_attack=TRADES_KL_PGD,
    outer_loss=Part("trades", {"beta": 6.0}),
    teachers=(),
    defaults=training_defaults(epochs=76, weight_decay=2e-4, milestones=[74, 89, 99], eps=0.031, step_size=0.007),
    summary="TRADES (Zhang et al. 2019): CE(S(x)) + beta KL(S(x')||S(x)), beta = 6",
    reference="Zhang et al., ICML 2019, Eq. 5; yaodongyu/TRADES/trades.py",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(TRADESLoss, name="trades")


@hookimpl
def rd_register_methods(registry):
    registry.register(TRADES)
