"""PeerAiD (Jung et al., CVPR 2024, "PeerAiD: Improving Adversarial Distillation from a Specialized Peer
Tutor").

Official code: ``jaewonalive/PeerAiD/main.py`` (``train_kd``), ``attack_function.py`` (``LinfPeerAttack``),
``utils/SWA.py``; hyper-parameters from its README commands and ``configs/*.json``.

No pretrained teacher: a peer model P (role ``peer``, built by the ``peer`` teacher updater, by default
with the student's architecture) is trained jointly with the student, on the student's adversarial
examples.

Inner: ``x' = argmax KL(S(x') || P(x))`` (sum over the batch), ``P(x)`` the peer's clean logits in eval mode
computed once, student in eval mode, start ``x + 0.001 N(0,1)`` (not clipped), 10 steps of 2/255, eps 8/255
(``kl_pgd`` with ``target: teacher_clean, role: peer``).

Outer, ``nn.KLDivLoss()`` = KL ``mean`` (sum/(B*C)) everywhere (``outer_loss.kwargs.kl_reduction:
batchmean``, the paper's per-sample KL, multiplies the three KL terms by C, not the CE terms), student and
peer in train mode:

* student: ``l1 CE(S(x'), y) + l2 T^2 KL(S(x')/T || P(x')/T) + l3 T^2 KL(S(x')/T || S(x)/T)`` with ``P(x')``
  detached and ``S(x)`` **not** detached;
* peer: ``g1 CE(P(x'), y) + g2 T_re^2 KL(P(x')/T_re || S(x')/T_re)`` with ``S(x')`` **not** detached, so the
  student also receives gradient from the peer loss;
* both are summed and back-propagated together (``loss_peer + loss_student``); the ``peer`` updater then
  steps the peer's own SGD optimizer.

CIFAR-10 defaults (README, ResNet-18): T = 5, g1 = 1, g2 = 0.1, l1 = 0, l2 = 1, l3 = 1, T_re = 1 (CIFAR-100:
g2 = 1; Tiny-ImageNet: T = 1, g2 = 100, l = (0.035, 35, 20)). Training: 300 epochs, student and peer SGD
lr 0.1, momentum 0.9, wd 2e-4, batch 128, lr / 10 at epochs 214, 259, 284. The official loop is
``for epoch in range(0, 300)`` with ``lr /= 10`` for every milestone ``<= epoch``, i.e. 0-based epochs as
ours: ``multistep`` milestones ``[214, 259, 284]`` reproduce it (one epoch earlier than RSLAD's 215).

SWA (``--swa_s`` in every README command): from epoch 214 (the first lr milestone), at the end of each
epoch the student's parameters are averaged into an SWA copy (``1/(n + 1)``) and its BN statistics are
recomputed with one pass over the augmented training data: the engine's generic SWA
(:class:`robust_distill.engine.trained.StudentSWA`), which PeerAiD's defaults switch on with ``swa: {start: 214}``
(``swa: {start: null}`` disables it). It writes ``output_dir/swa.pt`` (``robust-distill eval
runs/x/swa.pt``). Not as the official code: the SWA model is not evaluated every epoch and does not take
part in ``best.pt`` selection (the engine evaluates the student only); evaluate ``swa.pt`` after training.

Student forwards, as the official code: it runs the student twice on ``x'`` (one output is the peer loss's
target, the other the student loss's input), then on ``x``. One forward on ``x'`` gives the same outputs and
gradients, but the student's BN running statistics (used at evaluation) take two momentum steps toward the
adversarial batch in the official code; we run the same three forwards in the same order (the step keeps the
first output on ``x'``, the repeat runs without gradient). ``outer_loss.kwargs.reproduce_forwards: false``
drops the repeat.

Deliberate differences from the official code:

* SWA's BN pass uses this project's batch augmentation with a generator seeded by ``(seed, epoch)`` (so a
  resumed run equals an uninterrupted one) and ``data.eval_batch_size`` batches.
* Under ``torchrun`` the peer's gradients are averaged over the processes and its BN buffers broadcast
  from rank 0 (DDP only synchronises the student); under fp16 AMP its gradients are unscaled with the
  step's loss scale and its step is skipped when they are not finite, as the GradScaler does for the
  student (:class:`robust_distill.engine.trained.TrainedModel`).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from robust_distill import (
    KLReduction,
    Method,
    OuterLoss,
    Part,
    RunContext,
    Step,
    TrainedModel,
    TrainedTeacher,
    check_kl_reduction,
    hookimpl,
    kl_div,
    model_mode,
    training_defaults,
)

__all__ = ["PeerAiDLoss", "PeerUpdater", "PEERAID"]


class PeerAiDLoss(OuterLoss):
    """Student loss + peer loss of PeerAiD, back-propagated together (needs the ``peer`` updater).

    :param temperature: T of the student's distillation terms (5).
    :param lambda1: weight of ``CE(S(x'), y)`` (0 on CIFAR). :param lambda2: weight of
        ``T^2 KL(S(x')/T || P(x')/T)`` (1). :param lambda3: weight of ``T^2 KL(S(x')/T || S(x)/T)`` (1).
    :param gamma1: weight of the peer's ``CE(P(x'), y)`` (1). :param gamma2: weight of the peer's
        ``T_re^2 KL(P(x')/T_re || S(x')/T_re)`` (0.1 on CIFAR-10, 1 on CIFAR-100).
    :param re_temperature: T_re (1).
    :param reproduce_forwards: run the student twice on ``x'`` and then on ``x``, as the official code does
        (the repeated forward only changes its BN running statistics); ``false``: once on each input.
    :param role: the peer's teacher role (``peer``).
    :param kl_reduction: ``mean`` (sum/(B*C), the official ``nn.KLDivLoss()``) or ``batchmean`` (KL terms x C).
    """

    def __init__(self, temperature: float = 5.0, lambda1: float = 0.0, lambda2: float = 1.0,
                 lambda3: float = 1.0, gamma1: float = 1.0, gamma2: float = 0.1, re_temperature: float = 1.0,
                 reproduce_forwards: bool = True, role: str = "peer", kl_reduction: KLReduction = "mean") -> None:
        self.temperature, self.re_temperature = temperature, re_temperature
        self.lambda1, self.lambda2, self.lambda3 = lambda1, lambda2, lambda3
        self.gamma1, self.gamma2 = gamma1, gamma2
        self.reproduce_forwards, self.role = reproduce_forwards, role
        self.kl_reduction = check_kl_reduction(kl_reduction, type(self).__name__)

    def __call__(self, step: Step) -> Tensor:
        peer = step.teachers[self.role]
        with model_mode(peer, True):  # the peer trains on x' in train mode (eval mode only in the attack)
            p_adv = step.teacher_logits_graph("adv", self.role)
        if self.reproduce_forwards:  # train_kd: student_logit_target, student_outputs (both S(x')), logit_nat
            step.student_forwards(("adv", "adv", "clean"), needed=("adv", "clean"))
        s_adv = step.student_logits("adv")
        s_nat = step.student_logits("clean")
        t, t_re, red = self.temperature, self.re_temperature, self.kl_reduction

        peer_ce = F.cross_entropy(p_adv, step.y)
        peer_kd = kl_div(p_adv, s_adv, reduction=red, temperature=t_re)  # target S(x') NOT detached
        loss_peer = self.gamma1 * peer_ce + self.gamma2 * t_re * t_re * peer_kd

        ce = F.cross_entropy(s_adv, step.y)
        kd_peer = kl_div(s_adv, p_adv.detach(), reduction=red, temperature=t)
        kd_nat = kl_div(s_adv, s_nat, reduction=red, temperature=t)  # target S(x) NOT detached
        loss_student = self.lambda1 * ce + t * t * (self.lambda2 * kd_peer + self.lambda3 * kd_nat)

        step.logs.update(loss_peer=loss_peer.detach(), loss_student=loss_student.detach(), peer_ce=peer_ce.detach(),
                         peer_kd=peer_kd.detach(), kd_peer=kd_peer.detach(), kd_nat=kd_nat.detach(),
                         peer_acc=(p_adv.argmax(1) == step.y).float().mean().detach())
        return loss_peer + loss_student


class PeerUpdater(TrainedTeacher):
    """Builds the peer and trains it (a :class:`~robust_distill.engine.trained.TrainedModel`) on the joint loss.

    :param arch: the peer's architecture, a student spec (``timm:resnet18_cifar``); default: the student's.
    :param arch_kwargs: options of ``arch``.
    :param lr: the peer's base lr (0.1). :param momentum: (0.9). :param weight_decay: (2e-4).
    :param schedule: the peer's lr schedule ``{key, kwargs}``; default: the student's ``optim.schedule``.
    """

    provides = ("peer",)
    grad_teachers = frozenset({"peer"})

    def __init__(self, arch: str | None = None, arch_kwargs: dict[str, Any] | None = None, lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 2e-4, schedule: dict[str, Any] | None = None) -> None:
        if schedule is not None and "key" not in schedule:
            raise ValueError(f"schedule must be {{key: ..., kwargs: {{...}}}}, got {schedule!r}")
        self.arch, self.arch_kwargs = arch, dict(arch_kwargs or {})
        self.lr, self.momentum, self.weight_decay, self.schedule_part = lr, momentum, weight_decay, schedule
        self.role = "peer"
        self.trained: TrainedModel | None = None
        self.schedule: Any = None
        self.scaler: Any = None
        self._scale: float | None = None

    def setup(self, run: RunContext) -> None:
        if self.role in run.teachers:
            raise ValueError(f"the peer updater builds the {self.role!r} model itself; remove "
                             f"teachers.{self.role} from the config.")
        cfg = run.config
        peer = run.build_student(Part(self.arch, self.arch_kwargs) if self.arch else cfg.student).eval()
        self.trained = TrainedModel(peer, name="peer", lr=self.lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay, scaler=run.scaler)
        part = self.schedule_part
        self.schedule = run.lr_schedule if part is None else run.registries.lr_schedules.build(
            part["key"], part.get("kwargs", {}), epochs=cfg.optim.epochs)
        self.scaler = run.scaler
        run.teachers[self.role] = peer

    def before_step(self, step: Step) -> None:
        assert self.trained is not None
        self.trained.model.eval()  # P(x) for the attack in eval mode; the loss switches to train mode for P(x')
        self.trained.zero_grad()
        self.trained.set_lr(self.lr * self.schedule(step.epoch + step.iteration / max(step.iterations, 1)))
        # the scale of this step's backward (the engine updates its scaler before after_step)
        self._scale = self.scaler.get_scale() if self.scaler is not None and self.scaler.is_enabled() else None

    def after_step(self, step: Step) -> None:
        assert self.trained is not None
        self.trained.step(loss_scale=self._scale)


PEERAID = Method(
    name="peeraid",
    inner_attack=Part("kl_pgd", {"target": "teacher_clean", "role": "peer", "start": "gaussian",
                                 "clamp_start": False, "bn_mode": "eval"}),
    outer_loss=Part("peeraid", {"temperature": 5.0, "lambda1": 0.0, "lambda2": 1.0, "lambda3": 1.0,
                                "gamma1": 1.0, "gamma2": 0.1, "re_temperature": 1.0}),
    teacher_updater=Part("peer", {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4}),
    teachers=("peer",),
    defaults=training_defaults(epochs=300, weight_decay=2e-4, milestones=[214, 259, 284], swa={"start": 214}),
    summary="PeerAiD (Jung et al. 2024): a peer trained jointly on the student's examples is the teacher",
    reference="Jung et al., CVPR 2024; jaewonalive/PeerAiD/main.py train_kd, attack_function.py LinfPeerAttack",
)

@hookimpl
def rd_register_outer_losses(registry):
    registry.register(PeerAiDLoss, name="peeraid")


@hookimpl
def rd_register_teacher_updaters(registry):
    registry.register(PeerUpdater, name="peer", help="PeerAiD: a peer model trained jointly with the student")


@hookimpl
def rd_register_methods(registry):
    registry.register(PEERAID)
