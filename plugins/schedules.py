"""Learning-rate schedules: ``schedule(epoch) -> multiplier`` of ``optim.lr`` (epoch is fractional)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from robust_distill import hookimpl
from robust_distill.components import epochs_of


def multistep(epochs: int, milestones: Sequence[float] = (100, 150), gamma: float = 0.1,
              reproduce_reset_bug: bool = False) -> Callable[[float], float]:
    """x``gamma`` at each milestone epoch (PyTorch ``MultiStepLR`` stepped per epoch).

    Milestones below 1 are fractions of ``epochs`` (``[0.5, 0.75]``), convenient for short runs.
    ``reproduce_reset_bug`` reproduces ARD's/IAD's ``adjust_learning_rate`` bug: the decay is computed from
    the *initial* lr at every milestone, so the lr stays at ``gamma`` after the first one (0.1 -> 0.01 at
    100 and never 0.001).
    """
    points = sorted(epochs_of(m, epochs) for m in milestones)

    def schedule(epoch: float) -> float:
        passed = sum(1 for m in points if math.floor(epoch + 1e-9) >= m)
        return gamma ** min(passed, 1) if reproduce_reset_bug else gamma ** passed
    return schedule


def constant(epochs: int) -> Callable[[float], float]:
    """The base learning rate throughout."""
    return lambda epoch: 1.0


def cosine(epochs: int, warmup_epochs: float = 0.0, final: float = 0.0) -> Callable[[float], float]:
    """Linear warm-up, then cosine decay to ``final`` x the base lr at the last epoch (per step)."""
    def schedule(epoch: float) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1e-3) / warmup_epochs
        t = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-9)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return schedule


@hookimpl
def rd_register_lr_schedules(registry):
    registry.register(multistep, name="multistep", help="x gamma at milestone epochs (fractions if < 1)")
    registry.register(constant, name="constant")
    registry.register(cosine, name="cosine", help="warm-up then cosine decay, per step")
