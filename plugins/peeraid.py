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

Outer, ``nn.KLDivLoss()`` = KL ``mean`` (sum/(B*C)) everywhere, student and peer in train mode:

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
recomputed with one pass over the augmented training data. The ``peer`` updater does this in
``end_epoch`` (option ``swa_start``; ``null`` disables it) and writes the SWA model to
``output_dir/swa.pt`` (a robust-distill checkpoint: ``robust-distill eval runs/x/swa.pt``). Not as the
official code: the SWA model is not evaluated every epoch and does not take part in ``best.pt`` selection
(the engine evaluates the student only); evaluate ``swa.pt`` after training.

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
  from rank 0 (DDP only synchronises the student); under ``optim.amp`` the peer's gradients are unscaled
  with the step's loss scale and its step is skipped when they are not finite, as the GradScaler does for
  the student.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill import Method, OuterLoss, Part, Step, TeacherUpdater, hookimpl, training_defaults
from robust_distill.attacks import model_mode
from robust_distill.checkpoint import FORMAT, atomic_save
from robust_distill.data import augment, to_float
from robust_distill.distributed import broadcast_buffers, clone_state, sync_gradients
from robust_distill.losses import kl_div

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
    """

    def __init__(self, temperature: float = 5.0, lambda1: float = 0.0, lambda2: float = 1.0,
                 lambda3: float = 1.0, gamma1: float = 1.0, gamma2: float = 0.1, re_temperature: float = 1.0,
                 reproduce_forwards: bool = True, role: str = "peer") -> None:
        self.temperature, self.re_temperature = temperature, re_temperature
        self.lambda1, self.lambda2, self.lambda3 = lambda1, lambda2, lambda3
        self.gamma1, self.gamma2 = gamma1, gamma2
        self.reproduce_forwards, self.role = reproduce_forwards, role

    def __call__(self, step: Step) -> Tensor:
        peer = step.teachers[self.role]
        with model_mode(peer, True):  # the peer trains on x' in train mode (eval mode only in the attack)
            p_adv = step.teacher_logits_graph("adv", self.role)
        if self.reproduce_forwards:  # train_kd: student_logit_target, student_outputs (both S(x')), logit_nat
            step.student_forwards(("adv", "adv", "clean"), needed=("adv", "clean"))
        s_adv = step.student_logits("adv")
        s_nat = step.student_logits("clean")
        t, t_re = self.temperature, self.re_temperature

        peer_ce = F.cross_entropy(p_adv, step.y)
        peer_kd = kl_div(p_adv, s_adv, reduction="mean", temperature=t_re)  # target S(x') NOT detached
        loss_peer = self.gamma1 * peer_ce + self.gamma2 * t_re * t_re * peer_kd

        ce = F.cross_entropy(s_adv, step.y)
        kd_peer = kl_div(s_adv, p_adv.detach(), reduction="mean", temperature=t)
        kd_nat = kl_div(s_adv, s_nat, reduction="mean", temperature=t)  # target S(x) NOT detached
        loss_student = self.lambda1 * ce + t * t * (self.lambda2 * kd_peer + self.lambda3 * kd_nat)

        step.logs.update(loss_peer=loss_peer.item(), loss_student=loss_student.item(), peer_ce=peer_ce.item(),
                         peer_kd=peer_kd.item(), kd_peer=kd_peer.item(), kd_nat=kd_nat.item(),
                         peer_acc=(p_adv.argmax(1) == step.y).float().mean().item())
        return loss_peer + loss_student


class PeerUpdater(TeacherUpdater):
    """Builds the peer, owns its SGD optimizer and steps it after the student; optional SWA of the student.

    :param arch: the peer's architecture, a student spec (``timm:resnet18_cifar``); default: the student's.
    :param arch_kwargs: options of ``arch``.
    :param lr: the peer's base lr (0.1). :param momentum: (0.9). :param weight_decay: (2e-4).
    :param schedule: the peer's lr schedule ``{key, kwargs}``; default: the student's ``optim.schedule``.
    :param swa_start: first (0-based) epoch of the student's SWA (214; below 1: a fraction of the run;
        ``null``: no SWA).
    """

    provides = ("peer",)
    grad_teachers = frozenset({"peer"})

    def __init__(self, arch: str | None = None, arch_kwargs: dict[str, Any] | None = None, lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 2e-4, schedule: dict[str, Any] | None = None,
                 swa_start: float | None = 214) -> None:
        if schedule is not None and "key" not in schedule:
            raise ValueError(f"schedule must be {{key: ..., kwargs: {{...}}}}, got {schedule!r}")
        self.arch, self.arch_kwargs = arch, dict(arch_kwargs or {})
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.schedule_part, self.swa_start = schedule, swa_start
        self.role = "peer"
        self.peer: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: Any = None
        self.run: Any = None
        self.swa: nn.Module | None = None
        self.swa_n = 0
        self._scale: float | None = None

    # -- set-up -----------------------------------------------------------------------------------
    def setup(self, run: Any) -> None:
        from robust_distill.trainer import build_student

        if self.role in run.teachers:
            raise ValueError(f"the peer updater builds the {self.role!r} model itself; remove "
                             f"teachers.{self.role} from the config.")
        cfg, info = run.config, run.data.info
        key = self.arch or cfg.student.key
        kwargs = self.arch_kwargs if self.arch else dict(cfg.student.kwargs)
        peer = build_student(key, kwargs, info, run.regs)
        self.peer = peer.to(run.device, memory_format=run.memory_format).eval()
        self.optimizer = torch.optim.SGD(self.peer.parameters(), lr=self.lr, momentum=self.momentum,
                                         weight_decay=self.weight_decay)
        if self.schedule_part is None:
            self.schedule = run.lr_schedule
        else:
            self.schedule = run.regs.lr_schedules.build(self.schedule_part["key"],
                                                        self.schedule_part.get("kwargs", {}),
                                                        epochs=cfg.optim.epochs)
        self.run = run
        run.teachers[self.role] = self.peer
        if self.swa_start is not None:
            self.swa = copy.deepcopy(run.student).eval().requires_grad_(False)

    # -- per step ---------------------------------------------------------------------------------
    def before_step(self, step: Step) -> None:
        assert self.peer is not None and self.optimizer is not None
        self.peer.eval()  # P(x) for the attack in eval mode; the loss switches to train mode for P(x')
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.lr * self.schedule(step.epoch + step.iteration / max(step.iterations, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        scaler = getattr(self.run, "scaler", None)
        self._scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else None

    def after_step(self, step: Step) -> None:
        assert self.peer is not None and self.optimizer is not None
        grads = [p.grad for p in self.peer.parameters() if p.grad is not None]
        if not grads:
            raise RuntimeError("the peer received no gradient: the peer updater needs the 'peeraid' outer loss "
                               "(or another loss that trains the peer through step.teacher_logits_graph).")
        if self._scale is not None:  # AMP: the engine scaled the loss
            for g in grads:
                g.div_(self._scale)
        sync_gradients(self.peer)
        if all(torch.isfinite(g).all() for g in grads):
            self.optimizer.step()
        broadcast_buffers(self.peer)
        self.optimizer.zero_grad(set_to_none=True)

    # -- per epoch: SWA of the student ------------------------------------------------------------
    def swa_first_epoch(self, epochs: int) -> float:
        assert self.swa_start is not None
        return self.swa_start * epochs if 0 < self.swa_start < 1 else self.swa_start

    def end_epoch(self, run: Any, epoch: int, metrics: Mapping[str, Any]) -> None:
        if self.swa is None or epoch < self.swa_first_epoch(run.config.optim.epochs):
            return
        alpha = 1.0 / (self.swa_n + 1)
        with torch.no_grad():
            for a, s in zip(self.swa.parameters(), run.student.parameters(), strict=True):
                a.mul_(1.0 - alpha).add_(s.detach(), alpha=alpha)
        self.swa_n += 1
        self.update_bn(run, epoch)
        if run.dist.is_main:
            atomic_save({"format": FORMAT, "model": run.spec, "state_dict": self.swa.state_dict(),
                         "epoch": epoch + 1, "swa_n": self.swa_n}, run.output_dir / "swa.pt")

    def update_bn(self, run: Any, epoch: int) -> None:
        """Recompute the SWA model's BN statistics: one pass over the augmented training data, each batch
        weighted by its size (``utils/SWA.py:bn_update``)."""
        assert self.swa is not None
        bns = [m for m in self.swa.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        momenta = {m: m.momentum for m in bns}
        for m in bns:
            m.reset_running_stats()
        data, cfg = run.data, run.config
        seen = 0
        devices = [run.device] if run.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), model_mode(self.swa, True):
            torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7_777_777)
            for start in range(0, data.train_x.shape[0], cfg.data.eval_batch_size):
                x = to_float(data.train_x[start:start + cfg.data.eval_batch_size], run.device)
                if cfg.data.augment:
                    x = augment(x, data.crop_padding, data.flip)
                b = x.shape[0]
                for m in bns:
                    m.momentum = b / (seen + b)
                self.swa(x.contiguous(memory_format=run.memory_format))
                seen += b
        for m, mom in momenta.items():
            m.momentum = mom

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        assert self.peer is not None and self.optimizer is not None
        state: dict[str, Any] = {"peer": clone_state(self.peer), "optimizer": self.optimizer.state_dict(),
                                 "swa_n": self.swa_n}
        if self.swa is not None:
            state["swa"] = clone_state(self.swa)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        assert self.peer is not None and self.optimizer is not None
        self.peer.load_state_dict(state["peer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.swa_n = int(state["swa_n"])
        if self.swa is not None and "swa" in state:
            self.swa.load_state_dict(state["swa"])


PEERAID = Method(
    name="peeraid",
    inner_attack=Part("kl_pgd", {"target": "teacher_clean", "role": "peer", "start": "gaussian",
                                 "clamp_start": False, "bn_mode": "eval"}),
    outer_loss=Part("peeraid", {"temperature": 5.0, "lambda1": 0.0, "lambda2": 1.0, "lambda3": 1.0,
                                "gamma1": 1.0, "gamma2": 0.1, "re_temperature": 1.0}),
    teacher_updater=Part("peer", {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "swa_start": 214}),
    teachers=("peer",),
    defaults=training_defaults(epochs=300, weight_decay=2e-4, milestones=[214, 259, 284]),
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
