"""IAD (Zhu et al., ICLR 2022, "Reliable Adversarial Distillation with Unreliable Teachers") and AKD2
(Chen et al., ICLR 2021, "Robust Overfitting may be Mitigated by Properly Learned Smoothening", as the IAD
repository implements it for its comparisons).

Official code: ``ZFancy/IAD/IAD-I.py``, ``IAD-II.py``, ``AKD2.py``.

Common to the three scripts (they share ARD's ``AttackPGD``): inner ``x' = argmax CE(S(x'), y)`` (summed),
uniform start ``U(-eps, eps)`` *not* clipped to [0, 1], 10 steps of 2/255, eps 8/255, the student in
**train** mode during the attack (``net.train()`` wraps the epoch; BN running statistics move at every
PGD step). Every KL is ``(1/len(outputs)) * sum(KLDivLoss(reduce=False)(...))`` = ``batchmean``. Training:
200 epochs, SGD lr 0.1, momentum 0.9, wd 2e-4, x0.1 at epochs 100 and 150, batch 128.

**Introspection** (one implementation here, also used by AdaIAD in ``adaad.py``): per sample
``alpha_i = softmax(T(x'_i))[y_i] ** beta`` (beta = 0.1), the robust teacher's probability of the true
class at the student's adversarial example, without gradient (the code takes ``.item()``). It is used only
when ``epoch >= begin``; the scripts loop ``for epoch in range(args.epochs)``, so their epoch is 0-based like
``Step.epoch`` and ``begin = 60`` switches introspection on from the 61st epoch. Before that alpha_i = 1 and
the introspection term vanishes. The term is ``(1/B) sum_i (1 - alpha_i) KL(S(x'_i) || S(x_i))`` with the
student's *own* clean prediction as target, **not detached** (the code's ``F.softmax(basic_net(inputs))``):
gradients reach the student through both S(x') and S(x).

* ``iad1`` (IAD-I, on top of ARD), defaults a = 1, tau = 1, beta = 0.1, begin = 60:
  ``L = a tau^2 KL_bm(S(x')/tau || T(x)/tau) + a (1/B) sum_i (1 - alpha_i) KL(S(x'_i) || S(x_i))
  + (1 - a) CE(S(x), y)``. The teacher sees the *clean* x and its term is *not* weighted by alpha_i (the
  code; ``shared/reference/ard_methods.md`` §6 singles this out as a property of the code).
  ``weight_teacher: true`` weights it by alpha_i as IAD-II's code does (the paper's own IAD-I equation was
  not available to check which form it writes).
* ``akd2`` (Chen et al.), defaults a1 = 0.5, a2 = 0.25, tau = 1, teachers on x':
  ``L = (1 - a1 - a2) CE(S(x'), y) + a1 tau^2 KL_bm(S(x')/tau || T_AT(x')/tau)
  + a2 tau^2 KL_bm(S(x')/tau || T_ST(x')/tau)``, ``T_AT`` the ``robust`` (adversarially trained) teacher,
  ``T_ST`` the ``natural`` (standard-trained) one.
* ``iad2`` (IAD-II, on top of AKD2), beta = 0.1 (``--beta``, declared once at the repository's HEAD; the first
  uploads declared it twice, 0.0 and 0.1, which argparse rejects), begin = 40: from then on the robust
  teacher's term becomes
  ``a1 tau^2 [ (1/B) sum_i alpha_i KL(S(x'_i)/tau || T_AT(x'_i)/tau) + (1/B) sum_i (1 - alpha_i)
  KL(S(x'_i) || S(x_i)) ]``: the teacher term *is* alpha-weighted here, and ``a1 tau^2`` also multiplies the
  introspection KL (computed at tau = 1), as the code's parentheses say.

Deliberate differences from the official code:

* learning rate: the scripts' ``adjust_learning_rate(optimizer, epoch, lr)`` multiplies the *initial* lr at
  each milestone, so the lr goes 0.1 -> 0.01 at epoch 100 and is set to 0.01 again at 150 (never 0.001). We
  decay at both milestones; ``optim.schedule.kwargs.reproduce_reset_bug: true`` reproduces the official
  schedule.
* the teacher runs once on x' (the code runs ``teacher_net(pert_inputs)`` twice; it is in eval mode, so
  nothing differs).
* the IAD-II/AKD2 scripts hard-code the standard-trained teacher's architecture (``ResNet18`` at the
  repository's HEAD; the first upload of ``IAD-II.py`` had a ``WideResNet``); here it is any teacher spec
  under ``teachers.natural``.

The student's forwards, as in the code (``reproduce_forwards``, default true). In train mode every forward
moves the BN running statistics that evaluation uses, so ``iad1`` and ``adaiad`` run the student as often and
in the same order as their scripts, without gradient where no term uses the output (loss and gradient are
unchanged): IAD-I's ``train`` runs ``S(x')`` (``AttackPGD``'s return), ``S(x')`` again (the unused
``basicop``), then ``S(x)`` in the introspection term (from ``begin``) and in the CE term (always computed, weight
1 - a = 0); AdaIAD's (``main.py``, ``AdaAD_with_IAD1``) runs ``S(x)``, ``S(x')``, then ``S(x)`` in the same two
terms. ``outer_loss.kwargs.reproduce_forwards: false`` computes each output once, and only when a term needs it.
IAD-II's and AKD2's scripts run no extra student forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_distill import Method, OuterLoss, Part, Step, hookimpl, kl_div, training_defaults
from robust_distill_plugins.inner_attacks import ARD_PGD

__all__ = ["introspection_weights", "introspection_term", "IAD1Loss", "IAD2Loss", "AKD2Loss"]


# -- the introspection, shared by IAD-I, IAD-II and AdaIAD ---------------------------------------------
def introspection_weights(step: Step, beta: float, role: str = "robust") -> Tensor:
    """``alpha_i = softmax(T(x'_i))[y_i] ** beta``, shape (B,), without gradient (IAD's teacher trust).

    ``T(x')`` is the teacher ``role`` on the step's adversarial input (cached: a method that also uses it as
    its distillation target pays one teacher forward).
    """
    with torch.no_grad():
        p_true = F.softmax(step.teacher_logits("adv", role), dim=1).gather(1, step.y[:, None]).squeeze(1)
        return p_true.pow(beta)


def introspection_term(step: Step, alpha: Tensor) -> Tensor:
    """``(1/B) sum_i (1 - alpha_i) KL(S(x'_i) || S(x_i))``: the student's trust in its own clean prediction.

    The target ``S(x)`` is **not** detached (as in the official code), so the term's gradient reaches the
    student through both branches. The reduction is IAD's ``batchmean`` of the weighted per-sample KL.
    """
    per_sample = kl_div(step.student_logits("adv"), step.student_logits("clean"), reduction="none")
    return ((1.0 - alpha) * per_sample).sum() / per_sample.shape[0]


def _log_introspection(step: Step, alpha: Tensor, term: Tensor) -> None:
    step.logs.update(iad_alpha=alpha.mean().detach(), introspection=term.detach())


# -- IAD-I ------------------------------------------------------------------------------------------
class IAD1Loss(OuterLoss):
    """IAD-I: ``a tau^2 KL_bm(S(x')/tau || T(x)/tau) + a (1/B) sum (1-alpha_i) KL(S(x')||S(x)) + (1-a) CE``.

    :param alpha: a, weight of the distillation terms (1: the CE term is off and S(x) is only computed for
        the introspection term).
    :param temperature: tau of the teacher term (1 in ``IAD-I.py``).
    :param beta: exponent of the introspection weight (0.1).
    :param begin: first 0-based epoch with introspection (60; the code's ``epoch >= args.begin``).
    :param teacher_input: ``clean`` (IAD-I: ``T(x)``) or ``adv`` (AdaIAD: ``T(x')``).
    :param weight_teacher: multiply the teacher term by alpha_i as IAD-II does (the official IAD-I does not).
    :param reproduce_forwards: run the student as often and in the order of ``IAD-I.py`` (``S(x')`` twice,
        then ``S(x)`` once per term that names it), for its BN running statistics; ``false``: each output once.
    """

    # the official code's train-mode student forwards around the introspection and CE terms' S(x)
    forwards_before: tuple[str, ...] = ("adv", "adv")  # IAD-I.py: AttackPGD's S(x'), then the unused basicop

    def __init__(self, alpha: float = 1.0, temperature: float = 1.0, beta: float = 0.1, begin: int = 60,
                 teacher_input: str = "clean", weight_teacher: bool = False, reproduce_forwards: bool = True) -> None:
        if teacher_input not in ("clean", "adv"):
            raise ValueError(f"teacher_input must be 'clean' or 'adv', got {teacher_input!r}")
        self.alpha, self.temperature, self.beta, self.begin = alpha, temperature, beta, begin
        self.teacher_input, self.weight_teacher = teacher_input, weight_teacher
        self.reproduce_forwards = reproduce_forwards

    def __call__(self, step: Step) -> Tensor:
        tau, a = self.temperature, self.alpha
        introspect = step.epoch >= self.begin
        if self.reproduce_forwards:  # then S(x) in the introspection term (from begin) and in the CE term
            needed = ("adv", "clean") if introspect or a != 1.0 else ("adv",)
            step.student_forwards(self.forwards_before + ("clean",) * (1 + introspect), needed=needed)
        s_adv = step.student_logits("adv")
        target = step.teacher_logits(self.teacher_input)
        alpha_i = introspection_weights(step, self.beta) if introspect else None
        if introspect and self.weight_teacher:
            per_sample = kl_div(s_adv, target, reduction="none", temperature=tau)
            kd = (alpha_i * per_sample).sum() / per_sample.shape[0]  # batchmean of the weighted KL
        else:
            kd = kl_div(s_adv, target, reduction="batchmean", temperature=tau)
        loss = a * tau * tau * kd
        step.logs["kd"] = kd.detach()
        if introspect:
            term = introspection_term(step, alpha_i)
            _log_introspection(step, alpha_i, term)
            loss = loss + a * term
        if a != 1.0:
            loss = loss + (1.0 - a) * F.cross_entropy(step.student_logits("clean"), step.y)
        return loss


# -- AKD2 and IAD-II --------------------------------------------------------------------------------
class IAD2Loss(OuterLoss):
    """IAD-II: AKD2's two-teacher loss whose robust-teacher term shares its weight with introspection.

    ``(1-a1-a2) CE(S(x'),y) + a1 tau^2 [(1/B) sum alpha_i KL(S(x')/tau||T_AT(x')/tau)
    + (1/B) sum (1-alpha_i) KL(S(x')||S(x))] + a2 tau^2 KL_bm(S(x')/tau||T_ST(x')/tau)``; before ``begin``
    alpha_i = 1 (plain AKD2).

    :param alpha1: weight of the adversarially trained teacher (role ``robust``), 0.5.
    :param alpha2: weight of the standard-trained teacher (role ``natural``), 0.25.
    :param temperature: tau of both teacher terms (1).
    :param beta: exponent of the introspection weight (0.1).
    :param begin: first 0-based epoch with introspection (40); ``None`` never (AKD2).
    """

    def __init__(self, alpha1: float = 0.5, alpha2: float = 0.25, temperature: float = 1.0, beta: float = 0.1,
                 begin: int | None = 40) -> None:
        self.alpha1, self.alpha2, self.temperature = alpha1, alpha2, temperature
        self.beta, self.begin = beta, begin

    def __call__(self, step: Step) -> Tensor:
        tau, a1, a2 = self.temperature, self.alpha1, self.alpha2
        s_adv = step.student_logits("adv")
        kd_st = kl_div(s_adv, step.teacher_logits("adv", "natural"), reduction="batchmean", temperature=tau)
        if self.begin is not None and step.epoch >= self.begin:
            alpha_i = introspection_weights(step, self.beta)
            per_sample = kl_div(s_adv, step.teacher_logits("adv", "robust"), reduction="none", temperature=tau)
            kd_at = (alpha_i * per_sample).sum() / per_sample.shape[0]  # batchmean of the weighted KL
            term = introspection_term(step, alpha_i)
            _log_introspection(step, alpha_i, term)
            robust = kd_at + term
        else:
            kd_at = robust = kl_div(s_adv, step.teacher_logits("adv", "robust"), reduction="batchmean",
                                    temperature=tau)
        loss = a1 * tau * tau * robust + a2 * tau * tau * kd_st
        if a1 + a2 != 1.0:
            loss = loss + (1.0 - a1 - a2) * F.cross_entropy(s_adv, step.y)
        step.logs.update(kd_at=kd_at.detach(), kd_st=kd_st.detach())
        return loss


class AKD2Loss(IAD2Loss):
    """AKD2: ``(1-a1-a2) CE(S(x'),y) + tau^2 [a1 KL_bm(S(x')/tau||T_AT(x')/tau) + a2 KL_bm(S(x')/tau||T_ST(x')/tau)]``.

    :param alpha1: weight of the adversarially trained teacher (role ``robust``), 0.5.
    :param alpha2: weight of the standard-trained teacher (role ``natural``), 0.25.
    :param temperature: tau (1).
    """

    def __init__(self, alpha1: float = 0.5, alpha2: float = 0.25, temperature: float = 1.0) -> None:
        super().__init__(alpha1=alpha1, alpha2=alpha2, temperature=temperature, begin=None)


# -- methods ----------------------------------------------------------------------------------------
IAD_DEFAULTS = training_defaults(epochs=200, weight_decay=2e-4, milestones=[100, 150])

IAD1 = Method(
    name="iad1",
    inner_attack=ARD_PGD,
    outer_loss=Part("iad1", {"alpha": 1.0, "temperature": 1.0, "beta": 0.1, "begin": 60}),
    defaults=IAD_DEFAULTS,
    summary="IAD-I (Zhu et al. 2022): ARD + introspection, trust S(x) where T(x') doubts y (from epoch 60)",
    reference="Zhu et al., ICLR 2022, IAD-I; ZFancy/IAD/IAD-I.py",
)

AKD2 = Method(
    name="akd2",
    inner_attack=ARD_PGD,
    outer_loss=Part("akd2", {"alpha1": 0.5, "alpha2": 0.25, "temperature": 1.0}),
    teachers=("robust", "natural"),
    defaults=IAD_DEFAULTS,
    summary="AKD2 (Chen et al. 2021): CE + KL to an adversarially trained and a standard-trained teacher at x'",
    reference="Chen et al., ICLR 2021; as implemented in ZFancy/IAD/AKD2.py",
)

IAD2 = Method(
    name="iad2",
    inner_attack=ARD_PGD,
    outer_loss=Part("iad2", {"alpha1": 0.5, "alpha2": 0.25, "temperature": 1.0, "beta": 0.1, "begin": 40}),
    teachers=("robust", "natural"),
    defaults=IAD_DEFAULTS,
    summary="IAD-II (Zhu et al. 2022): AKD2 + introspection (from epoch 40)",
    reference="Zhu et al., ICLR 2022, IAD-II; ZFancy/IAD/IAD-II.py",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(IAD1Loss, name="iad1")
    registry.register(IAD2Loss, name="iad2")
    registry.register(AKD2Loss, name="akd2")


@hookimpl
def rd_register_methods(registry):
    registry.register(IAD1)
    registry.register(AKD2)
    registry.register(IAD2)
