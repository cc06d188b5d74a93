"""AdaAD (Huang et al., CVPR 2023, "Boosting Accuracy and Robustness of Student Models via Adaptive
Adversarial Distillation").

Official code: ``boyellow/AdaAD/main.py``, ``AT_helper.py`` (``adaad_inner_loss``).

Inner (Eq. 9): ``x' = argmax KL(S(x') || T(x'))``: both models see ``x'`` and the teacher is in the graph
w.r.t. ``x'``; start ``x + 0.001 N(0,1)``, 10 steps, student and teacher in eval mode.
Outer (Eq. 11): ``L = alpha KL(S(x') || T(x')) + (1 - alpha) KL(S(x) || T(x))``, alpha = 1 (the official
``--AdaAD_alpha``), teacher outputs as targets (no grad). After the attack the official ``main.py`` runs the
student in train mode on ``x`` and then on ``x'`` (``ori_outputs = net(inputs)`` before
``adv_outputs = net(adv_inputs)``), also at alpha = 1 where no term uses ``S(x)``: that forward does not
change the loss or its gradient but moves the BN running statistics that evaluation uses. We run it too, in
the same order; ``outer_loss.kwargs.reproduce_forwards: false`` skips it.

Defaults follow the official README command for Table 2: eps 8/255, step 2/255 (the parser's defaults,
16/255 and 4/255, are the paper's "larger search radius" variant, Sec. 3.4: set ``threat.eps: 16/255``,
``threat.step_size: 4/255``); 200 epochs, lr 0.1, **wd 5e-4**, x0.1 at 100 and 150. The KL reduction is
``mean`` (sum/(B*C), ``nn.KLDivLoss()`` in the CIFAR-10 code); the CIFAR-100 code uses ``batchmean``
(``outer_loss.kwargs.kl_reduction``; both terms, and so the loss, x C). The paper's best numbers use an
epsilon that grows over training (Fig. 2), which the released code lacks: ``threat.eps_end`` provides it.

AdaIAD (``adaiad``; Sec. 3.2 of the same paper, ``main.py --method AdaAD_with_IAD1``): IAD-I's loss on AdaAD's
inner maximisation, with the teacher on x' (the introspection is the one implementation in ``iad.py``):
``L = a tau^2 KL_bm(S(x')/tau || T(x')/tau) + a (1/B) sum_i (1 - alpha_i) KL(S(x'_i) || S(x_i))
+ (1 - a) CE(S(x), y)``, ``alpha_i = softmax(T(x'_i))[y_i] ** 0.1`` (no gradient) from epoch ``begin`` = 60
(``--IAD_begin``; the code's ``epoch >= args.IAD_begin`` with a 0-based ``range(start_epoch, args.epochs)``),
a = ``--IAD_alpha`` = 1. Both KLs are ``batchmean`` (``(1/len)*sum``) on CIFAR-10 and CIFAR-100 alike.
**tau = 30**: the parser default ``--temp 30.0``, which the README's AdaIAD command does not override (so
``tau^2 = 900``; the paper only says it uses each method's recommended temperature, and IAD's own is 1:
``outer_loss.kwargs.temperature: 1``). The teacher term is not alpha-weighted (IAD-I) and the target S(x) of
the introspection term is not detached. Training and threat defaults as AdaAD's README command for AdaIAD
(eps 8/255, step 2/255, 200 epochs, wd 5e-4, x0.1 at 100/150).

AdaIAD's deliberate difference from the official code: the teacher forward on x' is not under ``no_grad``
there (the teacher's parameters receive gradients no optimizer uses; here teacher outputs are detached, same
student update). The code evaluates ``S(x)`` two or three times per step in train mode (once before ``S(x')``,
once in the introspection term from ``begin``, once in the zero-weighted CE term), which moves the BN running
statistics each time; we run those forwards too, in that order (``outer_loss.kwargs.reproduce_forwards:
false`` computes ``S(x)`` once, and only when a term needs it).
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
from robust_distill_plugins.iad import IAD1Loss
from robust_distill_plugins.inner_attacks import ADAAD_KL_PGD


class AdaADLoss(OuterLoss):
    """``alpha KL(S^tau(x')||T^tau(x')) + (1 - alpha) KL(S(x)||T(x))`` (AdaAD, Eq. 11).

    :param alpha: weight of the adversarial term (1.0: the clean term is skipped).
    :param temperature: tau of the adversarial term (1 in the official AdaAD loss).
    :param kl_reduction: ``mean`` (CIFAR-10 code, sum/(B*C)) or ``batchmean`` (CIFAR-100 code, x C).
    :param reduction: the former name of ``kl_reduction`` (deprecated: a ``FutureWarning``).
    :param reproduce_forwards: run ``S(x)`` in train mode before ``S(x')`` even when alpha = 1, as the
        official ``main.py`` does (``ori_outputs = net(inputs)``): same loss and gradient, the BN running
        statistics of the official code. ``false`` skips that forward when no term needs it.
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 1.0, kl_reduction: KLReduction = "mean",
                 reproduce_forwards: bool = True, reduction: KLReduction | None = None) -> None:
        self.alpha, self.temperature = alpha, temperature
        self.kl_reduction = check_kl_reduction(kl_reduction, type(self).__name__, renamed=reduction)
        self.reproduce_forwards = reproduce_forwards

    def __call__(self, step: Step) -> Tensor:
        if self.reproduce_forwards:  # main.py: ori_outputs = net(inputs); adv_outputs = net(adv_inputs)
            step.student_forwards(("clean", "adv"), needed=("adv", "clean") if self.alpha != 1.0 else ("adv",))
        kl_adv = kl_div(step.student_logits("adv"), step.teacher_logits("adv"), reduction=self.kl_reduction,
                        temperature=self.temperature)
        step.logs["kl_adv"] = kl_adv.detach()
        if self.alpha == 1.0:
            return kl_adv
        kl_nat = kl_div(step.student_logits("clean"), step.teacher_logits("clean"), reduction=self.kl_reduction)
        return self.alpha * kl_adv + (1 - self.alpha) * kl_nat


class AdaIADLoss(IAD1Loss):
    """AdaIAD: IAD-I's loss with the teacher on x' and tau = 30 (``AdaAD_with_IAD1`` in AdaAD's ``main.py``).

    :param alpha: a (``--IAD_alpha``, 1: no CE term).
    :param temperature: tau of the teacher term (``--temp``, 30).
    :param beta: exponent of the introspection weight (``--IAD_beta``, 0.1).
    :param begin: first 0-based epoch with introspection (``--IAD_begin``, 60).
    :param teacher_input: ``adv`` (``T(x')``, AdaIAD) or ``clean``.
    :param weight_teacher: multiply the teacher term by alpha_i (the official code does not).
    :param reproduce_forwards: run the student as often and in the order of ``main.py`` (``S(x)``, ``S(x')``,
        then ``S(x)`` once per term that names it), for its BN running statistics; ``false``: each output once.
    """

    forwards_before = ("clean", "adv")  # main.py: ori_outputs = net(inputs); adv_outputs = net(adv_inputs)

    def __init__(self, alpha: float = 1.0, temperature: float = 30.0, beta: float = 0.1, begin: int = 60,
                 teacher_input: str = "adv", weight_teacher: bool = False, reproduce_forwards: bool = True) -> None:
        super().__init__(alpha=alpha, temperature=temperature, beta=beta, begin=begin,
                         teacher_input=teacher_input, weight_teacher=weight_teacher,
                         reproduce_forwards=reproduce_forwards)


ADAAD = Method(
    name="adaad",
    inner_attack=ADAAD_KL_PGD,
    outer_loss=Part("adaad", {"alpha": 1.0, "kl_reduction": "mean"}),
    defaults=training_defaults(epochs=200, weight_decay=5e-4, milestones=[100, 150]),
    summary="AdaAD (Huang et al. 2023): match S and T at the point where they disagree most, T(x') inside",
    reference="Huang et al., CVPR 2023, Eq. 9-11; boyellow/AdaAD/AT_helper.py adaad_inner_loss",
)


ADAIAD = Method(
    name="adaiad",
    inner_attack=ADAAD_KL_PGD,
    outer_loss=Part("adaiad", {"alpha": 1.0, "temperature": 30.0, "beta": 0.1, "begin": 60}),
    defaults=ADAAD.defaults,
    summary="AdaIAD (Huang et al. 2023): AdaAD's inner problem with IAD-I's introspective outer loss, T(x')",
    reference="Huang et al., CVPR 2023, Sec. 3.2; boyellow/AdaAD/main.py (AdaAD_with_IAD1)",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(AdaADLoss, name="adaad")
    registry.register(AdaIADLoss, name="adaiad")


@hookimpl
def rd_register_methods(registry):
    registry.register(ADAAD)
    registry.register(ADAIAD)
