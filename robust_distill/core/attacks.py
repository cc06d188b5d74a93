"""The one PGD loop of the project, parameterised by its objective and its start.

Every inner maximisation (PGD-AT's CE, RSLAD's KL to ``T(x)``, AdaAD's KL to ``T(x')``, ...) and the
white-box evaluation attacks that are not torchattacks' own (CW-inf) run through :func:`pgd`.
During the loop only the input requires grad: :func:`frozen_parameters` switches ``requires_grad`` off
for every model involved, so no parameter gradient is built or accumulated
(``benchmarks/bench_frozen_attack.py`` measures the saving).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from robust_distill.core.components import InnerAttack

if TYPE_CHECKING:
    from robust_distill.core.precision import InputGradScale
    from robust_distill.core.step import Step
    from robust_distill.core.threat import ThreatModel

__all__ = ["pgd", "random_start", "frozen_parameters", "model_mode", "InnerPGD", "Start", "BNMode"]

Start = Literal["uniform", "gaussian", "none"]
Start.__doc__ = "Where PGD starts: a uniform or Gaussian draw in the epsilon ball, or the clean input."
BNMode = Literal["eval", "train"]
BNMode.__doc__ = "The student's BatchNorm mode while the inner attack runs (its batch statistics or its running ones)."


@contextmanager
def frozen_parameters(*modules: nn.Module) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on every parameter of ``modules`` (restored after)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextmanager
def model_mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Temporarily put ``module`` in train/eval mode, restoring each submodule's own flag after."""
    flags = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def random_start(x: Tensor, eps: float, start: Start, clamp: bool) -> Tensor:
    """The PGD starting point.

    ``uniform``: ``x + U(-eps, eps)`` (Madry; ARD/IAD and evaluation PGD); ``gaussian``:
    ``x + 0.001 N(0, 1)`` (TRADES family: TRADES, RSLAD, AdaAD, MTARD, CIARD); ``none``: ``x``.
    ``clamp`` clips the start to [0, 1] (ARD/IAD do not; torchattacks and RSLAD's eval PGD do).
    """
    if start == "uniform":
        x0 = x + torch.empty_like(x).uniform_(-eps, eps)
    elif start == "gaussian":
        x0 = x + 0.001 * torch.randn_like(x)
    elif start == "none":
        x0 = x.clone()
    else:
        raise ValueError(f"start must be 'uniform', 'gaussian' or 'none', got {start!r}")
    return x0.clamp(0.0, 1.0) if clamp else x0


def pgd(objective: Callable[[Tensor], Tensor], x: Tensor, *, eps: float, step_size: float, steps: int,
        start: Start = "uniform", clamp_start: bool = True, grad_scale: InputGradScale | None = None) -> Tensor:
    """Maximise ``objective(x_adv)`` over the L-inf ball of radius ``eps`` around ``x`` within [0, 1].

    Sign-gradient ascent with projection after every step, in torchattacks' order (step, clip the
    perturbation to [-eps, eps], clamp to [0, 1]); with ``start="uniform", clamp_start=True`` and a mean
    CE objective it reproduces ``torchattacks.PGD`` exactly. The gradient is taken with
    ``torch.autograd.grad`` w.r.t. the input only. Returns a detached tensor.

    ``grad_scale`` (fp16 autocast, see :class:`robust_distill.core.precision.InputGradScale`) scales the
    objective before the gradient and unscales the gradient, so that float16 does not flush it to zero.
    """
    x = x.detach()
    x_adv = random_start(x, eps, start, clamp_start).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        x_adv = sign_step(objective(x_adv), x_adv, x, eps=eps, step_size=step_size, grad_scale=grad_scale)
    return x_adv


def sign_step(value: Tensor, x_adv: Tensor, x: Tensor, *, eps: float, step_size: float,
              grad_scale: InputGradScale | None = None) -> Tensor:
    """One step of :func:`pgd`: ``clip_[0,1](x + clip_eps(x_adv + step_size * sign(grad value) - x))``.

    ``value`` is the scalar objective computed from ``x_adv`` (which requires grad); ``grad_scale`` scales it
    before the gradient and unscales the gradient (fp16). Returns the next iterate, detached.
    """
    if grad_scale is not None:
        value = grad_scale.scale(value)
    (grad,) = torch.autograd.grad(value, x_adv)
    if grad_scale is not None:
        grad = grad_scale.unscale(grad)
    delta = (x_adv.detach() + step_size * grad.sign() - x).clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0).detach()


class InnerPGD(InnerAttack):
    """Inner maximisation by :func:`pgd` of :meth:`objective` on the step's clean batch.

    :param start: ``"uniform"``, ``"gaussian"`` (0.001 N(0,1)) or ``"none"``.
    :param clamp_start: clip the random start to [0, 1].
    :param bn_mode: mode of the student during the attack: ``"eval"`` (most methods) or ``"train"``
        (ARD, IAD: BN uses batch statistics and its running statistics move at every PGD step).

    Student and teachers have ``requires_grad=False`` while the loop runs. Under fp16 autocast the
    objective is scaled by the step's ``input_grad_scale`` (see :mod:`robust_distill.core.precision`).
    """

    def __init__(self, start: Start = "gaussian", clamp_start: bool = False, bn_mode: BNMode = "eval") -> None:
        if bn_mode not in ("eval", "train"):
            raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
        if start not in ("uniform", "gaussian", "none"):
            raise ValueError(f"start must be 'uniform', 'gaussian' or 'none', got {start!r}")
        self.start, self.clamp_start, self.bn_mode = start, clamp_start, bn_mode

    def objective(self, step: Step, x_adv: Tensor) -> Tensor:
        """The scalar to maximise at ``x_adv`` (sum over the batch; the scale does not matter)."""
        raise NotImplementedError

    def make_objective(self, step: Step) -> Callable[[Tensor], Tensor]:
        """The objective of this step; override to compute per-step constants (targets) once.

        Called inside the attack's context: student in the attack's BN mode, parameters frozen.
        """
        return lambda x_adv: self.objective(step, x_adv)

    def threat(self, step: Step) -> ThreatModel:
        """The threat model the attack uses for ``step`` (the step's own, unless the attack was given one)."""
        return step.threat

    @contextmanager
    def attack_context(self, step: Step) -> Iterator[None]:
        """The student in the attack's BN mode and every model's parameters frozen (restored after), then the
        engine's fast path (``step.attack_weights``: BatchNorm folded, weights in the autocast dtype)."""
        with ExitStack() as stack:
            stack.enter_context(model_mode(step.student_module, self.bn_mode == "train"))
            stack.enter_context(frozen_parameters(step.student_module, *step.teachers.values()))
            if step.attack_weights is not None:
                stack.enter_context(step.attack_weights())
            yield

    def __call__(self, step: Step) -> Tensor:
        threat = self.threat(step)
        with self.attack_context(step):
            return pgd(self.make_objective(step), step.x, eps=threat.eps,
                       step_size=threat.step_size, steps=threat.steps, start=self.start,
                       clamp_start=self.clamp_start, grad_scale=step.input_grad_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(start={self.start!r}, bn_mode={self.bn_mode!r})"
