"""PGD-AT (Madry et al., ICLR 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks").

Inner: ``x' = argmax CE(S(x'), y)``, uniform start clipped to [0, 1], 10 steps of 2/255, eps 8/255
(``MadryLab/cifar10_challenge/config.json``). Outer (Eq. 2.1): ``CE(S(x'), y)``.
Defaults: 200 epochs (~ Madry's 80k steps at batch 128), SGD lr 0.1, momentum 0.9, wd 2e-4, lr x0.1 at
epochs 100 and 150. The student is in eval mode during the attack (as torchattacks and most ARD reruns);
``inner_attack.kwargs.bn_mode: train`` gives the train-mode variant.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from robust_distill import Method, OuterLoss, Part, Step, hookimpl, training_defaults
from robust_distill_plugins.inner_attacks import MADRY_PGD


class AdversarialCE(OuterLoss):
    """``CE(S(x'), y)``, mean over the batch."""

    def __call__(self, step: Step) -> Tensor:
        return F.cross_entropy(step.student_logits("adv"), step.y)


PGD_AT = Method(
    name="pgd_at",
    inner_attack=MADRY_PGD,
    outer_loss=Part("ce_adv"),
    teachers=(),
    defaults=training_defaults(epochs=200, weight_decay=2e-4, milestones=[100, 150]),
    summary="PGD adversarial training (Madry et al. 2018): CE on student PGD examples",
    reference="Madry et al., ICLR 2018, Eq. 2.1; MadryLab/cifar10_challenge",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(AdversarialCE, name="ce_adv")


@hookimpl
def rd_register_methods(registry):
    registry.register(PGD_AT)
