"""Oracle teacher-student training (Yang et al., AISTATS 2021, "Understanding Robustness in Teacher-Student
Setting: A New Perspective", Sec. 4.2, 5.1, 5.4, 5.5).

The teacher is an *oracle*: the label of every input, clean or perturbed, is the teacher's output there.
Parts, each usable on its own from YAML:

* outer losses ``logit_l2`` (logit training: ``||S(x') - T(x')||^2``) and ``label_ce`` (label training:
  ``CE(S(x'), argmax T(x'))``); ``x'`` is the inner attack's output, the clean batch when it is ``none``;
* inner attacks ``oracle_pgd`` (oracle-adversarial examples, Eq. 3: ``x' = argmax L[S(x'), T(x')]``
  through both networks, or data-adversarial ones, Eq. 4, with the teacher's label of the clean point) and
  ``gaussian_noise`` (``x + sigma N(0, I)``, Sec. 5.5 / Fig. 10: Gaussian augmentation is an inner
  "attack" so that it composes with any outer loss; the outer loss then sees only the noisy inputs, as the
  paper trains on them);
* the dataset ``oracle``: any registered dataset relabelled with the teacher's predictions, so that the
  usual evaluation attacks measure agreement with the oracle (data-adversarial robust accuracy) and
  checkpoint selection follows it.

Methods (teacher role ``oracle``): ``oracle_logit`` and ``oracle_label`` (ST with logit / label
supervision, Table 3), ``oracle_adv`` (AT on oracle-adversarial examples, Table 1), ``oracle_logit_gaussian``
(Fig. 10), and in ``subspace_attacks.py`` ``inplane_at`` / ``outplane_at`` (Table 2).

The paper gives no optimiser settings. The defaults below are its threat model (40 PGD steps of 0.01 in an
L-inf ball of 10/255) and longest schedule (300 epochs), with SGD (momentum 0.9, weight decay 5e-4, x0.1 at 50%
and 75% of training) at lr 0.02 and the gradient norm clipped to 5: measured on Fashion-MNIST, the paper's
conv-ReLU students (no normalisation layer) trained on the squared logit distance diverge, or collapse to a
constant output with dead ReLUs, at lr 0.005-0.1 without clipping.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill import (
    BNMode,
    DataBundle,
    DatasetInfo,
    InnerAttack,
    InnerPGD,
    Method,
    OuterLoss,
    Part,
    Reduction,
    Registries,
    Start,
    Step,
    hookimpl,
    iterate_eval,
    resolve_device,
    split_spec,
    squared_l2,
    to_float,
    training_defaults,
)
from robust_distill import registries as process_registries

OracleLoss = Literal["l2", "ce"]
OracleTarget = Literal["teacher_adv", "teacher_clean"]
ROLE = "oracle"


# -------------------------------------------------------------------------------------------------
# Outer losses
# -------------------------------------------------------------------------------------------------


class LogitL2(OuterLoss):
    """Logit training: ``||S(x') - T(x')||^2`` (Sec. 5.1), teacher outputs as targets.

    :param reduction: ``mean`` (over B*C: ``nn.MSELoss()``, the usual implementation of logit matching; the
        paper names no reduction) or ``batchmean`` (the squared distance per sample, averaged over the batch:
        C times larger gradients).
    :param which: the input both networks see: ``adv`` (the inner attack's output) or ``clean``.
    :param role: the teacher role (``oracle``).
    """

    def __init__(self, reduction: Reduction = "mean", which: str = "adv", role: str = ROLE) -> None:
        self.reduction, self.which, self.role = reduction, which, role

    def __call__(self, step: Step) -> Tensor:
        loss = squared_l2(step.student_logits(self.which), step.teacher_logits(self.which, self.role),
                          reduction=self.reduction)
        step.logs["logit_l2"] = loss.item()
        return loss


class TeacherLabelCE(OuterLoss):
    """Label training: ``CE(S(x'), argmax T(x'))``, the teacher's prediction as a hard label (Sec. 5.1).

    :param which: / ``role``: as :class:`LogitL2`.
    """

    def __init__(self, which: str = "adv", role: str = ROLE) -> None:
        self.which, self.role = which, role

    def __call__(self, step: Step) -> Tensor:
        logits = step.student_logits(self.which)
        label = step.teacher_logits(self.which, self.role).argmax(1)
        loss = F.cross_entropy(logits, label)
        step.logs["agree"] = (logits.detach().argmax(1) == label).float().mean().item()
        return loss


# -------------------------------------------------------------------------------------------------
# Inner attacks
# -------------------------------------------------------------------------------------------------


def _check_oracle(loss: str, target: str) -> None:
    if loss not in ("l2", "ce"):
        raise ValueError(f"loss must be 'l2' or 'ce', got {loss!r} (the KL version is the inner attack kl_pgd)")
    if target not in ("teacher_adv", "teacher_clean"):
        raise ValueError(f"target must be 'teacher_adv' or 'teacher_clean', got {target!r}")


def oracle_objective(student: nn.Module, teacher: nn.Module, x: Tensor, loss: OracleLoss,
                     target: OracleTarget, clean_logits: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """``x' -> L[S(x'), T(.)]`` summed over the batch: the objective of oracle-adversarial PGD.

    ``target="teacher_adv"``: the teacher sees ``x'`` and is in the graph (Eq. 3, oracle-adversarial);
    ``"teacher_clean"``: its output on the clean point ``clean_logits`` is fixed (Eq. 4, data-adversarial
    with the oracle's label). ``loss="l2"``: squared logit distance (the paper's); ``"ce"``: cross-entropy
    to the teacher's predicted class.
    """
    _check_oracle(loss, target)
    if target == "teacher_clean":
        fixed = clean_logits if clean_logits is not None else teacher(x).detach()
        target_of: Callable[[Tensor], Tensor] = lambda xa: fixed  # noqa: E731
    else:
        target_of = teacher
    if loss == "l2":
        return lambda xa: squared_l2(student(xa), target_of(xa), reduction="sum")
    return lambda xa: F.cross_entropy(student(xa), target_of(xa).argmax(1), reduction="sum")


class OraclePGD(InnerPGD):
    """Oracle-adversarial examples, ``x' = argmax_{||x'-x|| <= eps} L[S(x'), T(x')]`` (Sec. 4.2, Eq. 3).

    :param loss: ``l2`` (squared logit distance, the paper's) or ``ce`` (CE to the teacher's class).
    :param target: ``teacher_adv`` (Eq. 3: the teacher sees x', back-propagated through both networks) or
        ``teacher_clean`` (Eq. 4, data-adversarial: the teacher's output on the clean point, fixed).
    :param role: the teacher role (``oracle``).
    :param start: ``uniform`` (default) or ``gaussian``; ``clamp_start``, ``bn_mode`` as :class:`InnerPGD`.
    """

    def __init__(self, loss: OracleLoss = "l2", target: OracleTarget = "teacher_adv", role: str = ROLE,
                 start: Start = "uniform", clamp_start: bool = True, bn_mode: BNMode = "eval") -> None:
        super().__init__(start=start, clamp_start=clamp_start, bn_mode=bn_mode)
        _check_oracle(loss, target)
        self.loss, self.target, self.role = loss, target, role

    def make_objective(self, step: Step) -> Callable[[Tensor], Tensor]:
        clean = step.teacher_logits("clean", self.role) if self.target == "teacher_clean" else None
        return oracle_objective(step.student_module, step.teachers[self.role], step.x, self.loss, self.target, clean)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(loss={self.loss!r}, target={self.target!r}, start={self.start!r})"


class GaussianNoise(InnerAttack):
    """``x' = x + sigma N(0, I)``: Gaussian input noise as training inputs (Sec. 5.5, Fig. 10: sigma = 0.1).

    :param sigma: standard deviation of the noise.
    :param clip: clip ``x'`` to [0, 1]. Off by default: the paper adds d-dimensional Gaussian noise to make
        the inputs high-rank, and clipping would keep only the positive half of the noise on black
        backgrounds (most of Fashion-MNIST), biasing and lowering its rank.

    Random numbers come from the global generator, which the engine seeds per epoch (resumable runs).
    """

    def __init__(self, sigma: float = 0.1, clip: bool = False) -> None:
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma, self.clip = float(sigma), clip

    def __call__(self, step: Step) -> Tensor:
        x = step.x + self.sigma * torch.randn_like(step.x)
        return x.clamp(0.0, 1.0) if self.clip else x


# -------------------------------------------------------------------------------------------------
# The teacher-labelled dataset
# -------------------------------------------------------------------------------------------------


class OracleDataset:
    """``dataset: oracle``: a registered dataset whose train and test labels are the teacher's predictions.

    Options: ``base`` (the dataset to relabel, e.g. ``fashion_mnist``), ``base_options``, ``teacher`` (a
    teacher spec, e.g. ``checkpoint:teacher.pt``), ``teacher_kwargs``, ``device`` and ``batch_size`` of the
    labelling pass (once, when the data are loaded). The teacher's agreement with the original labels is
    printed to stderr. The base dataset and the teacher come from the run's registries.
    """

    name = "oracle"

    def info(self, *, registries: Registries | None = None, base: str = "fashion_mnist", teacher: str | None = None,
             teacher_kwargs: dict | None = None, base_options: dict | None = None, device: str = "cpu",
             batch_size: int = 500) -> DatasetInfo:
        if base == self.name:
            raise ValueError("data.options.base must be another dataset than 'oracle'")
        if not teacher:
            raise ValueError("dataset 'oracle' needs data.options.teacher, the spec of the oracle that labels the "
                             "data, e.g. checkpoint:runs/teacher/best.pt")
        registries = registries if registries is not None else process_registries()  # called directly, as in 0.1
        info = registries.call(registries.datasets.get(base).info, **(base_options or {}))
        return DatasetInfo(self.name, info.num_classes, info.input_shape, info.class_names)

    @torch.no_grad()
    def load(self, root: str | None = None, *, registries: Registries | None = None, base: str = "fashion_mnist",
             teacher: str | None = None, teacher_kwargs: dict | None = None, base_options: dict | None = None,
             device: str = "cpu", batch_size: int = 500) -> DataBundle:
        registries = registries if registries is not None else process_registries()  # called directly, as in 0.1
        info = self.info(registries=registries, base=base, teacher=teacher, teacher_kwargs=teacher_kwargs,
                         base_options=base_options, device=device, batch_size=batch_size)
        bundle = registries.call(registries.datasets.get(base).load, root=root, **(base_options or {}))
        source, name = split_spec(teacher)  # type: ignore[arg-type]
        dev = resolve_device(device)
        model = registries.call(registries.teacher_sources.get(source).load, name, dataset=bundle.info,
                                **(teacher_kwargs or {})).eval().to(dev)

        def label(x: Tensor) -> Tensor:
            return torch.cat([model(to_float(xb, dev)).argmax(1).cpu()
                              for _, xb, _ in iterate_eval(x, torch.zeros(x.shape[0]), batch_size)])

        train_y, test_y = label(bundle.train_x), label(bundle.test_x)
        agree = (test_y == bundle.test_y).float().mean().item()
        print(f"oracle labels from {teacher}: the teacher agrees with {base}'s test labels on {100 * agree:.2f}%",
              file=sys.stderr)
        return DataBundle(info, bundle.train_x, train_y, bundle.test_x, test_y, crop_padding=bundle.crop_padding,
                          flip=bundle.flip)


# -------------------------------------------------------------------------------------------------
# Methods
# -------------------------------------------------------------------------------------------------


def oracle_defaults() -> dict[str, Any]:
    """The paper's threat model (Sec. 5.1: 40 steps of 0.01, eps 10/255) and longest schedule (300 epochs); SGD
    at lr 0.02 with the gradient norm clipped to 5 (not in the paper: see the module docstring)."""
    out = training_defaults(epochs=300, weight_decay=5e-4, milestones=[0.5, 0.75], lr=0.02, eps=10 / 255,
                            step_size=0.01, steps=40)
    out["optim"]["clip_grad_norm"] = 5.0
    return out


def oracle_method(name: str, inner_attack: Part, summary: str, *, outer_loss: Part = Part("logit_l2"),
                  where: str = "Sec. 4.2, 5.1") -> Method:
    """A method of the paper's oracle setting: teacher role ``oracle``, :func:`oracle_defaults`."""
    return Method(name=name, inner_attack=inner_attack, outer_loss=outer_loss, teachers=(ROLE,),
                  defaults=oracle_defaults(), summary=f"{summary} (Yang et al. 2021)",
                  reference=f"Yang et al., AISTATS 2021, {where}")


ORACLE_METHODS = (
    oracle_method("oracle_logit", Part("none"), "oracle ST with logit supervision: ||S(x) - T(x)||^2"),
    oracle_method("oracle_label", Part("none"), "oracle ST with label supervision: CE(S(x), argmax T(x))",
                  outer_loss=Part("label_ce")),
    oracle_method("oracle_adv", Part("oracle_pgd", {"loss": "l2", "target": "teacher_adv"}),
                  "oracle AT: ||S(x') - T(x')||^2 on x' = argmax ||S(x') - T(x')||^2", where="Sec. 4.2, 5.4, Eq. 3"),
    oracle_method("oracle_logit_gaussian", Part("gaussian_noise", {"sigma": 0.1}),
                  "oracle ST (logit) on Gaussian-noised inputs, sigma 0.1", where="Sec. 5.5, Fig. 10"),
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(LogitL2, name="logit_l2", help="logit training: ||S(x') - T(x')||^2 (Yang et al. 2021)")
    registry.register(TeacherLabelCE, name="label_ce", help="label training: CE(S(x'), argmax T(x')) (Yang et al.)")


@hookimpl
def rd_register_inner_attacks(registry):
    registry.register(OraclePGD, name="oracle_pgd", help="oracle-adversarial PGD: argmax L[S(x'), T(x')] (Eq. 3)")
    registry.register(GaussianNoise, name="gaussian_noise", help="x + sigma N(0, I) as training inputs (Fig. 10)")


@hookimpl
def rd_register_datasets(registry):
    registry.register(OracleDataset(), name="oracle", help="a dataset relabelled by an oracle teacher's predictions")


@hookimpl
def rd_register_methods(registry):
    for method in ORACLE_METHODS:
        registry.register(method)
