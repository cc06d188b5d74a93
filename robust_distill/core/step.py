"""The data one training step shares between its parts, each value computed at most once.

A :class:`Step` is created by the engine for every batch and handed to the inner attack, the outer loss
and the teacher updater in turn. Model outputs are asked for by *who* (``"student"`` or a teacher role
such as ``"robust"``/``"natural"``) and *on which input* (``"clean"``, ``"adv"`` or any input a part
added with :meth:`Step.add_input`), and are cached: when RSLAD's inner attack and its outer loss both
need ``T(x)``, the teacher runs once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from robust_distill.core.precision import InputGradScale
    from robust_distill.core.threat import ThreatModel

__all__ = ["Step"]


class Step:
    """One training iteration.

    :ivar x: clean batch in [0, 1], shape (B, C, H, W).
    :ivar y: labels, shape (B,).
    :ivar student: the student as the outer loss must call it (DDP-wrapped under ``torchrun``).
    :ivar student_module: the bare student module (for attacks: no DDP hooks, no grad sync).
    :ivar teachers: teacher role -> module, e.g. ``{"robust": T}`` or ``{"robust": Ta, "natural": Tn}``.
    :ivar threat: the training threat model at this point of training (after any eps schedule).
    :ivar epoch: 0-based epoch; ``epochs`` the total; ``progress`` in [0, 1).
    :ivar lr_factor: the learning-rate schedule's current multiplier (MTARD decays its weight step with it).
    :ivar logs: scalar diagnostics a part wants in the metrics file (``{"w_adv": 0.7}``). Prefer detached
        tensors (``loss.detach()``) to ``loss.item()``: the engine sums them on the device and reads them
        once per logging interval, while ``.item()`` stops the GPU at every step.
    :ivar input_grad_scale: under ``optim.precision: fp16``, the inner attack's objective scale
        (:class:`~robust_distill.core.precision.InputGradScale`); ``None`` otherwise.
    :ivar attack_weights: the engine's fast path for the inner attack's frozen models
        (:class:`~robust_distill.engine.fastpath.AttackWeights`: a context), entered by ``InnerPGD``; ``None``: none.
    """

    def __init__(self, x: Tensor, y: Tensor, *, student: nn.Module, teachers: Mapping[str, nn.Module],
                 threat: ThreatModel, epoch: int = 0, epochs: int = 1, iteration: int = 0,
                 iterations: int = 1, student_module: nn.Module | None = None,
                 grad_teachers: frozenset[str] = frozenset(), lr_factor: float = 1.0,
                 input_grad_scale: InputGradScale | None = None,
                 attack_weights: Callable[[], AbstractContextManager[None]] | None = None) -> None:
        self.y = y
        self.student = student
        self.student_module = student_module if student_module is not None else student
        self.teachers = teachers
        self.threat = threat
        self.epoch, self.epochs = epoch, epochs
        self.iteration, self.iterations = iteration, iterations
        self.grad_teachers = grad_teachers
        self.lr_factor = lr_factor
        self.input_grad_scale = input_grad_scale
        self.attack_weights = attack_weights
        self.inputs: dict[str, Tensor] = {"clean": x}
        self.logs: dict[str, float | Tensor] = {}
        self._cache: dict[tuple[str, str], Tensor] = {}

    # -- inputs -----------------------------------------------------------------------------------
    @property
    def x(self) -> Tensor:
        """The clean batch (input ``clean``)."""
        return self.inputs["clean"]

    @property
    def x_adv(self) -> Tensor:
        """The inner attack's output (input ``adv``); an error before the attack has run."""
        try:
            return self.inputs["adv"]
        except KeyError:
            raise RuntimeError("step.x_adv is read before the inner attack produced it") from None

    @property
    def progress(self) -> float:
        """The fraction of training done at this step, in [0, 1] (epochs and steps within the epoch)."""
        return (self.epoch + self.iteration / max(self.iterations, 1)) / max(self.epochs, 1)

    def add_input(self, name: str, x: Tensor) -> None:
        """Add (or replace) a named input; cached outputs on a replaced input are dropped."""
        self.inputs[name] = x
        for key in [k for k in self._cache if k[1] == name]:
            del self._cache[key]

    # -- outputs ----------------------------------------------------------------------------------
    def student_logits(self, which: str = "adv") -> Tensor:
        """``S(input)`` in the student's current mode (train during the outer step), with grad."""
        key = ("student", which)
        if key not in self._cache:
            self._cache[key] = self.student(self.inputs[which])
        return self._cache[key]

    def student_forwards(self, sequence: Sequence[str], needed: Collection[str] = ()) -> None:
        """Run the student on the inputs named in ``sequence``, in that order, as an official code does.

        In train mode every forward moves the student's BN running statistics, which evaluation uses, so
        the number and the order of an official code's forwards matter even where an output is unused or
        computed twice (loss and gradient do not change). For each name in ``sequence``: if it is in
        ``needed`` and not cached yet, this forward computes the step's output (with its graph, cached: the
        loss reads it with :meth:`student_logits`); otherwise it runs without gradient and is discarded.
        The outer losses' ``reproduce_*_forward`` options call it before computing their terms.
        """
        for which in sequence:
            if which in needed and ("student", which) not in self._cache:
                self.student_logits(which)
            else:
                with torch.no_grad():
                    self.student(self.inputs[which])

    def teacher_logits(self, which: str = "clean", role: str = "robust") -> Tensor:
        """``T_role(input)``, detached: a target, never a path for gradients into the teacher."""
        return self._teacher(which, role).detach()

    def teacher_logits_graph(self, which: str = "adv", role: str = "robust") -> Tensor:
        """``T_role(input)`` with its graph, for teacher updaters that train the teacher on this step.

        Only roles listed in ``grad_teachers`` (declared by the teacher updater) keep a graph.
        """
        if role not in self.grad_teachers:
            raise RuntimeError(f"teacher {role!r} is frozen in this run; its outputs carry no graph")
        out = self._teacher(which, role)
        if not out.requires_grad:  # first computed while parameters were frozen (inside an attack)
            out = self._cache[(role, which)] = self._model(role)(self.inputs[which])
        return out

    def _model(self, role: str) -> nn.Module:
        try:
            return self.teachers[role]
        except KeyError:
            raise KeyError(
                f"This step has no teacher {role!r}; configured teachers: {sorted(self.teachers)}"
            ) from None

    def _teacher(self, which: str, role: str) -> Tensor:
        key = (role, which)
        if key not in self._cache:
            model = self._model(role)
            if role in self.grad_teachers and torch.is_grad_enabled():
                self._cache[key] = model(self.inputs[which])
            else:
                with torch.no_grad():
                    self._cache[key] = model(self.inputs[which])
        return self._cache[key]
