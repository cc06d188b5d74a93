"""AdaAD with a symmetric outer loss: ``JSD(S(x') || T(x'))`` instead of ``KL(S(x') || T(x'))``.

Written only against robust-distill's public API, the names ``robust_distill`` itself exports: ``hookimpl``,
``Method``, ``Part``, ``OuterLoss``, ``Step`` and ``js_divergence``. Registered through the entry-point group
``robust_distill`` in this distribution's setup.cfg.
"""

from __future__ import annotations

import torch

from robust_distill import Method, OuterLoss, Part, Step, hookimpl, js_divergence


class JSDLoss(OuterLoss):
    """``JSD(p_S, p_T) = 1/2 KL(p_S || m) + 1/2 KL(p_T || m)``, ``m = (p_S + p_T)/2``, mean over the batch.

    :param input: which input both models see (``adv`` or ``clean``).
    """

    def __init__(self, input: str = "adv") -> None:
        self.input = input

    def __call__(self, step: Step) -> torch.Tensor:
        jsd = js_divergence(step.student_logits(self.input), step.teacher_logits(self.input)).mean()
        step.logs["jsd"] = jsd.detach()
        return jsd


ADAAD_JSD = Method(
    name="adaad_jsd",
    inner_attack=Part("kl_pgd", {"target": "teacher_adv", "start": "gaussian", "clamp_start": False}),
    outer_loss=Part("jsd", {"input": "adv"}),
    summary="AdaAD inner maximisation with a Jensen-Shannon outer loss (example third-party plugin)",
    reference="example; AdaAD: Huang et al., CVPR 2023",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(JSDLoss, name="jsd")


@hookimpl
def rd_register_methods(registry):
    registry.register(ADAAD_JSD)
