"""Networks that train during the run beside the student, and the student's weight average.

* :class:`TrainedModel`: what a teacher updater needs to train a network of its own (CIARD's fine-tuned
  teacher, PeerAiD's peer): its own SGD and learning rate, gradients averaged over the ``torchrun``
  processes (DDP only synchronises the student) and BN buffers broadcast from rank 0, an AMP-correct step,
  a step skipped when its gradients are not finite (as the GradScaler does for the student), and its state
  for resume.
* :class:`StudentSWA`: stochastic weight averaging of the student (Izmailov et al., UAI 2018), for every
  method, switched on by the config's ``swa.start`` (PeerAiD's default).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from robust_distill.core.attacks import model_mode
from robust_distill.core.components import Stateful, TeacherUpdater, epochs_of
from robust_distill.core.precision import autocast
from robust_distill.engine.distributed import broadcast_buffers, clone_state, sync_gradients
from robust_distill.files.atomic import atomic_save
from robust_distill.files.checkpoint import FORMAT

if TYPE_CHECKING:
    from robust_distill.core.context import RunContext

__all__ = ["TrainedModel", "TrainedTeacher", "StudentSWA"]


class TrainedModel(Stateful):
    """A network trained by a teacher updater, with the engine's guarantees.

    Two ways its gradients arise: a loss of its own (:meth:`own_step`, e.g. CIARD's ``CE(T(x'), y)``), or
    the student's objective when that objective also trains it (PeerAiD's joint loss: the engine's
    backward fills its gradients; :meth:`step` with the engine's loss scale).

    :param model: the network (trained in place).
    :param name: the key of its weights in the state dict (the teacher role: ``teacher``, ``peer``).
    :param lr: base learning rate; :meth:`set_lr` changes it per step.
    :param scaler: the engine's GradScaler: when it is enabled (fp16 autocast), a loss of the model's own is
        scaled by a GradScaler of the model's own, and gradients that came through the engine's scaled loss
        are divided by ``loss_scale``.
    :param precision: the run's ``optim.precision``: :meth:`train_on` computes the objective under its autocast
        (a bf16 run trains the model in bf16 too; fp32 by default).
    """

    def __init__(self, model: nn.Module, *, name: str = "model", lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, nesterov: bool = False, scaler: Any = None,
                 precision: str = "fp32") -> None:
        self.model, self.name, self.precision = model, name, precision
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                         nesterov=nesterov)
        amp = scaler is not None and scaler.is_enabled()
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.lr = lr

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group."""
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none``)."""
        self.optimizer.zero_grad(set_to_none=True)

    def own_step(self, loss: Tensor) -> bool:
        """Back-propagate ``loss`` (the model's own objective) and step; returns whether it stepped."""
        self.zero_grad()
        self.scaler.scale(loss).backward()
        sync_gradients(self.model)  # scaled: an inf on any process reaches every process
        self.scaler.unscale_(self.optimizer)
        finite = self._grads_finite()
        if finite:  # (a disabled GradScaler would step on inf/nan gradients)
            self.scaler.step(self.optimizer)
        self.scaler.update()
        broadcast_buffers(self.model)
        self.zero_grad()
        return finite

    def train_on(self, objective: Callable[[nn.Module], Tensor]) -> Tensor:
        """One :meth:`own_step` on ``objective(model)``, computed in train mode with gradients on (under the
        run's autocast), also for a model the run otherwise keeps frozen in eval mode (both restored after);
        returns the loss."""
        frozen = [p for p in self.model.parameters() if not p.requires_grad]
        device = next(self.model.parameters()).device
        with torch.enable_grad(), model_mode(self.model, True):
            for p in frozen:
                p.requires_grad_(True)
            try:
                with autocast(device, self.precision):
                    loss = objective(self.model)
                self.own_step(loss)
            finally:
                for p in frozen:
                    p.requires_grad_(False)
        return loss

    def step(self, loss_scale: float | None = None) -> bool:
        """Step on the gradients the model holds (filled by the engine's backward of the student's loss);
        ``loss_scale`` is the engine's GradScaler scale of that backward (None without fp16 AMP)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            raise RuntimeError("the trained model received no gradient: the outer loss must train it (through "
                               "step.teacher_logits_graph) for its updater to step it.")
        if loss_scale is not None:
            for g in grads:
                g.div_(loss_scale)
        sync_gradients(self.model)
        stepped = self._grads_finite()
        if stepped:
            self.optimizer.step()
        broadcast_buffers(self.model)
        self.zero_grad()
        return stepped

    def state_dict(self) -> dict[str, Any]:
        """The network, optimizer and step counters, for the run's checkpoint."""
        # a snapshot: the optimizer's state dict holds its live momentum buffers
        state = {self.name: clone_state(self.model), "optimizer": copy.deepcopy(self.optimizer.state_dict())}
        return {**state, "scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (resume)."""
        if not state:
            return
        self.model.load_state_dict(state[self.name])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def _grads_finite(self) -> bool:
        """Every gradient finite: one fused check (GradScaler's, with scale 1: the gradients are unchanged) and
        one host synchronisation, not one per parameter (a WRN-34-10 has about 100)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return True
        found = torch.zeros((), device=grads[0].device)
        by_device: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for g in grads:
            by_device.setdefault((g.device, g.dtype), []).append(g)
        for (device, _), group in by_device.items():
            flag = torch.zeros((), device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, flag, torch.ones((), device=device))
            found = found + flag.to(found.device)
        return not bool(found)


class TrainedTeacher(TeacherUpdater):
    """Base of teacher updaters that train a network during the run: ``self.trained`` (a
    :class:`TrainedModel`, created in ``setup``) holds the network, its optimizer and its state, which is the
    updater's checkpointed state."""

    trained: TrainedModel | None = None

    def state_dict(self) -> dict[str, Any]:
        """The trained teacher's :class:`TrainedModel` state, for the run's checkpoint."""
        return self.trained.state_dict() if self.trained is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (resume)."""
        if state:
            assert self.trained is not None, "setup() creates the trained model before the state is restored"
            self.trained.load_state_dict(state)


class StudentSWA(Stateful):
    """Stochastic weight averaging of the student, from epoch ``start`` on (``swa.start`` in the config).

    At the end of each epoch from ``start`` (0-based; below 1: a fraction of the run) the student's
    parameters are averaged into a copy (``1/(n + 1)``), the copy's BN statistics are recomputed with one
    pass over the augmented training data (each batch weighted by its size, as PeerAiD's
    ``utils/SWA.py:bn_update`` and ``torch.optim.swa_utils.update_bn`` do), and the copy is written to
    ``output_dir/swa.pt``: a robust-distill checkpoint (``robust-distill eval runs/x/swa.pt``,
    ``checkpoint:runs/x/swa.pt``). The BN pass draws its augmentation from a generator seeded by
    ``(seed, epoch)``, so a resumed run equals an uninterrupted one. The average is not evaluated per epoch
    and does not take part in ``best.pt`` selection.
    """

    state_attributes = ("average", "n")

    def __init__(self, start: float, student: nn.Module, epochs: int) -> None:
        self.first_epoch = epochs_of(start, epochs)
        self.average = copy.deepcopy(student).eval().requires_grad_(False)
        self.n = 0

    def end_epoch(self, run: RunContext, epoch: int) -> None:
        if epoch < self.first_epoch:
            return
        alpha = 1.0 / (self.n + 1)
        with torch.no_grad():
            for a, s in zip(self.average.parameters(), run.student.parameters(), strict=True):
                a.mul_(1.0 - alpha).add_(s.detach(), alpha=alpha)
        self.n += 1
        self.update_bn(run, epoch)
        if run.dist.is_main:
            atomic_save({"format": FORMAT, "model": dict(run.student_spec),
                         "state_dict": self.average.state_dict(), "epoch": epoch + 1, "swa_n": self.n},
                        run.output_dir / "swa.pt")

    def update_bn(self, run: RunContext, epoch: int) -> None:
        bns = [m for m in self.average.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        momenta = {m: m.momentum for m in bns}
        for m in bns:
            m.reset_running_stats()
        data, cfg = run.data, run.config
        seen = 0
        devices = [run.device] if run.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), model_mode(self.average, True):
            seed = cfg.seed * 1_000_003 + epoch + 7_777_777
            torch.manual_seed(seed)
            for x, _ in data.train_batches(epoch, batch_size=cfg.data.eval_batch_size, seed=seed, device=run.device,
                                           augment=cfg.data.augment, shuffle=False):
                b = x.shape[0]
                for m in bns:
                    m.momentum = b / (seen + b)
                self.average(x.contiguous(memory_format=run.memory_format))
                seen += b
        for m, momentum in momenta.items():
            m.momentum = momentum
