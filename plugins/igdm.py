"""IGDM (Lee, Cho, Kim, ICLR 2025, "Indirect Gradient Distillation Module for Adversarial Distillation"):
an add-on outer loss that wraps any registered outer loss.

Official code: no repository of the authors; the original scripts are copied in
``Xavaitron/VLM_Distillation/ICLR_IGDM/`` (``adaad_IGDM_cifar100.py``, ``rslad_IGDM_cifar100.py``,
``cifar100.sh``: alpha 20, beta 1, gamma 1, 200 epochs) and re-written by the first author in
``HongsinLee/saad/igdm.py``.

With ``delta = x' - x`` (the base method's adversarial example), IGDM matches how the *logits change*
along delta, ``S(x + beta delta) - S(x - gamma delta)``, to the teacher's change:

``L = L_base + alpha * (e / E) * KL_bm( S(x+beta delta) - S(x-gamma delta) || T(x+beta delta) - T(x-gamma delta) )``

The KL is between softmaxes **of the logit differences**: the code is
``KLDivLoss('batchmean')(F.log_softmax(student_plus - student_minus), F.softmax(teacher_plus - teacher_minus))``
(differences of raw logits, then one (log-)softmax over classes), i.e. ``kl_div`` applied to the two
difference vectors as if they were logits. Teacher outputs are computed under ``no_grad``; both student
branches keep their gradients. ``e`` is the **1-based** epoch (``for epoch in range(1, epochs + 1)``, so the
weight is ``alpha/E`` in the first epoch and ``alpha`` in the last): with 0-based ``Step.epoch`` the factor is
``(step.epoch + 1) / E``, constant within an epoch. ``E`` is hard-coded in the scripts (200 in the AdaAD one,
300 in the RSLAD one), i.e. the intended total number of epochs; here ``E`` = ``optim.epochs`` unless
``ramp_epochs`` is set (``ramp_epochs: 200`` reproduces the AdaAD script in a run of another length).
alpha = 20, beta = gamma = 1 (``cifar100.sh``).

The wrapper builds its base loss through the outer-loss registry (``base``, ``base_kwargs``), so IGDM can be
added to any registered loss, third-party ones included; the built base is ``IGDMLoss.base_loss``, and the
wrapper forwards the whole outer-loss contract to it: its ``before_attack`` (CIARD's train-mode ``S(x)``), its
``end_epoch`` (``ciard_paper``'s validation-adaptive push weight) and its state, if any (checkpointed through
the wrapper). The config merges ``base_kwargs`` key by key like any mapping
(``--set outer_loss.kwargs.base_kwargs.alpha=0.5`` keeps ``adaad_igdm``'s ``kl_reduction: batchmean``), so
a new ``base`` keeps the previous base's options unless they are overridden: give it the ``base_kwargs`` it takes.

Methods (parts and defaults of the official scripts):

* ``adaad_igdm``: AdaAD's inner maximisation (KL(S(x')||T(x')), 0.001 N(0,1) start, eval mode) and
  ``igdm`` over ``adaad`` with ``batchmean`` KL (both IGDM scripts use ``batchmean`` for the AdaAD term; the
  ``adaad`` method's default ``mean`` is AdaAD's CIFAR-10 code). 200 epochs, lr 0.1, **wd 2e-4**, x0.1 at
  100/150 (``args.py``/``cifar100.sh``; applied after 1-based epochs 100 and 150 = from 0-based epochs 100
  and 150).
* ``rslad_igdm``: RSLAD's inner maximisation (KL(S(x')||T(x))) and ``igdm`` over ``rslad``.
  ``rslad_IGDM_cifar100.py`` divides by 300 and decays the lr x0.1 after 1-based epochs
  ``int(0.7 E), int(0.86 E), int(0.95 E)``: 300 epochs, milestones 210, 258, 285 (not RSLAD's 215, 260, 285),
  wd 2e-4. That script is the CIFAR-100 one and multiplies RSLAD's terms by 10 (RSLAD's CIFAR-100 convention);
  the default here is RSLAD's CIFAR-10 scale, ``outer_loss.kwargs.base_kwargs.scale: 10`` gives the former
  (``base_kwargs: {kl_reduction: batchmean}`` gives RSLAD's terms the paper's per-sample KL: x C).

Deliberate differences from the official code:

* beta = 1 makes ``x + beta delta`` equal to x' (up to float rounding of ``x + (x' - x)``): S(x') and T(x')
  of the base loss are reused instead of two more forwards (likewise gamma = 0 reuses S(x), T(x)). The
  official code runs them again; in train mode that gives the same outputs but moves BN running statistics
  once more per step. The scripts also compute S(x) and T(x) for AdaAD's clean term although its weight
  (1 - 1) is 0; our AdaAD loss skips it.
* ``x - gamma delta`` is not clipped to [0, 1], as in the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from robust_distill import Method, OuterLoss, Part, Step, hookimpl, kl_div, training_defaults
from robust_distill_plugins.inner_attacks import ADAAD_KL_PGD, RSLAD_KL_PGD

if TYPE_CHECKING:
    from robust_distill import Registries, RunContext


class IGDMLoss(OuterLoss):
    """IGDM over any loss: ``L_base + alpha (e/E) KL_bm(S(x+beta d)-S(x-gamma d) || T(x+beta d)-T(x-gamma d))``.

    :param base: registry name of the wrapped outer loss (``adaad``; any registered loss).
    :param base_kwargs: options of the wrapped loss.
    :param alpha: weight of the IGDM term at the last epoch (20).
    :param beta: step along delta of the ``plus`` point (1: the adversarial example itself).
    :param gamma: step against delta of the ``minus`` point (1).
    :param ramp_epochs: E of the ramp ``(epoch + 1) / E``; ``None``: the run's ``optim.epochs``.
    :param role: the teacher whose logit change is matched.
    """

    def __init__(self, base: str = "adaad", base_kwargs: dict[str, Any] | None = None, alpha: float = 20.0,
                 beta: float = 1.0, gamma: float = 1.0, ramp_epochs: int | None = None, role: str = "robust",
                 num_classes: int | None = None, batch_size: int | None = None,
                 registries: Registries | None = None) -> None:
        if registries is None:
            raise TypeError("igdm: the engine passes the run's registries (registries=...) to build the base loss")
        provided = {k: v for k, v in (("num_classes", num_classes), ("batch_size", batch_size),
                                      ("registries", registries)) if v is not None}
        kwargs: Mapping[str, Any] = dict(base_kwargs or {})
        registry = registries.outer_losses
        try:
            self.base_loss: OuterLoss = registry.build(base, kwargs, **provided)
        except TypeError as exc:
            raise TypeError(f"igdm: the base outer loss {base!r} does not accept base_kwargs "
                            f"{dict(kwargs)}: {exc}") from exc
        if ramp_epochs is not None and ramp_epochs < 1:
            raise ValueError(f"igdm: ramp_epochs must be >= 1 or null, got {ramp_epochs}")
        self.base_key, self.alpha, self.beta, self.gamma = base, alpha, beta, gamma
        self.ramp_epochs, self.role = ramp_epochs, role

    def _point(self, step: Step, sign: float, scale: float) -> str:
        """The input ``x + sign * scale * delta``, added to the step once (reusing ``adv``/``clean``)."""
        if scale == 0.0:
            return "clean"
        if sign > 0 and scale == 1.0:
            return "adv"
        name = f"igdm_{'plus' if sign > 0 else 'minus'}_{scale:g}"
        if name not in step.inputs:
            step.add_input(name, step.x + (sign * scale) * (step.x_adv - step.x))
        return name

    def weight(self, step: Step) -> float:
        """``alpha * e / E`` with the 1-based epoch e of the official loop."""
        total = self.ramp_epochs if self.ramp_epochs is not None else step.epochs
        return self.alpha * (step.epoch + 1) / total

    def before_attack(self, step: Step) -> None:
        """The base loss's work before the attack (CIARD's train-mode ``S(x)``: the attack sees its BN update)."""
        self.base_loss.before_attack(step)

    def end_epoch(self, run: RunContext, epoch: int, metrics: Mapping[str, Any]) -> None:
        """The base loss's end of epoch (CIARD's validation-adaptive push weight)."""
        self.base_loss.end_epoch(run, epoch, metrics)

    def __call__(self, step: Step) -> Tensor:
        loss = self.base_loss(step)
        plus, minus = self._point(step, +1.0, self.beta), self._point(step, -1.0, self.gamma)
        d_student = step.student_logits(plus) - step.student_logits(minus)
        d_teacher = step.teacher_logits(plus, self.role) - step.teacher_logits(minus, self.role)
        igdm = kl_div(d_student, d_teacher, reduction="batchmean")
        weight = self.weight(step)
        step.logs.update(igdm=igdm.detach(), igdm_weight=weight)
        return loss + weight * igdm

    # the wrapped loss may carry state (adaptive weights): checkpoint it through the wrapper
    def state_dict(self) -> dict[str, Any]:
        state = self.base_loss.state_dict()
        return {"base": state} if state else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        extra = set(state) - {"base"}
        if extra:
            raise ValueError(f"IGDMLoss: unexpected checkpoint state {sorted(extra)}")
        self.base_loss.load_state_dict(state.get("base", {}))

    def __repr__(self) -> str:
        return (f"IGDMLoss(base={self.base_key!r}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
                f"ramp_epochs={self.ramp_epochs})")


IGDM_KWARGS = {"alpha": 20.0, "beta": 1.0, "gamma": 1.0}

ADAAD_IGDM = Method(
    name="adaad_igdm",
    inner_attack=ADAAD_KL_PGD,
    outer_loss=Part("igdm", {"base": "adaad", "base_kwargs": {"alpha": 1.0, "kl_reduction": "batchmean"},
                             **IGDM_KWARGS}),
    defaults=training_defaults(epochs=200, weight_decay=2e-4, milestones=[100, 150]),
    summary="AdaAD + IGDM (Lee et al. 2025): also match the logit change S(x+d) - S(x-d) to the teacher's",
    reference="Lee, Cho, Kim, ICLR 2025; ICLR_IGDM/adaad_IGDM_cifar100.py (copy in Xavaitron/VLM_Distillation)",
)

RSLAD_IGDM = Method(
    name="rslad_igdm",
    inner_attack=RSLAD_KL_PGD,
    outer_loss=Part("igdm", {"base": "rslad", "base_kwargs": {"alpha": 5 / 6, "scale": 1.0}, **IGDM_KWARGS}),
    defaults=training_defaults(epochs=300, weight_decay=2e-4, milestones=[210, 258, 285]),
    summary="RSLAD + IGDM (Lee et al. 2025): RSLAD's loss plus the logit-change matching term",
    reference="Lee, Cho, Kim, ICLR 2025; ICLR_IGDM/rslad_IGDM_cifar100.py (copy in Xavaitron/VLM_Distillation)",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(IGDMLoss, name="igdm")


@hookimpl
def rd_register_methods(registry):
    registry.register(ADAAD_IGDM)
    registry.register(RSLAD_IGDM)
