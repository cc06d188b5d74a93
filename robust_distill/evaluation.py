"""Evaluate a model against a list of attacks, per sample, with the training RNG left untouched."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .attacks import model_mode
from .components import EvalAttack
from .data import iterate_eval, to_float
from .progress import Progress, progress_scope

__all__ = ["EvalResult", "evaluate", "make_eval_attacks", "AttackContractError", "TransferAttack"]


class AttackContractError(RuntimeError):
    """An evaluation attack returned inputs outside its epsilon ball or outside [0, 1]."""


@dataclass
class EvalResult:
    """Accuracy per attack and per-sample correctness (bool tensors, in input order)."""

    n: int
    correct: dict[str, Tensor] = field(default_factory=dict)

    @property
    def accuracy(self) -> dict[str, float]:
        return {name: c.float().mean().item() for name, c in self.correct.items()}

    def worst_case(self, names: list[str]) -> Tensor:
        """Per-sample correctness under all of ``names`` (a sample counts only if it survives every one)."""
        out = torch.ones(self.n, dtype=torch.bool)
        for n in names:
            out &= self.correct[n]
        return out


def make_eval_attacks(names: list[str], regs: object, *, eps: float, num_classes: int) -> dict[str, EvalAttack]:
    """Instantiate registered evaluation attacks by name for radius ``eps``."""
    return {name: regs.eval_attacks.build(name, {}, eps=eps, num_classes=num_classes)  # type: ignore[attr-defined]
            for name in names}


class TransferAttack(EvalAttack):
    """Black-box transfer: ``base`` crafts ``x_adv`` on a ``surrogate`` model, then the target is tested."""

    def __init__(self, base: EvalAttack, surrogate: nn.Module, surrogate_name: str = "surrogate") -> None:
        self.base, self.surrogate = base, surrogate.eval()
        self.eps = getattr(base, "eps", None)
        self.name = f"transfer_{getattr(base, 'name', 'attack')}"
        self.label = f"Transfer {getattr(base, 'label', self.name)} from {surrogate_name}"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.base(self.surrogate, x, y)


def _check_contract(name: str, x: Tensor, x_adv: Tensor, eps: float | None) -> None:
    if x_adv.shape != x.shape:
        raise AttackContractError(f"attack {name!r} returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    if x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
        raise AttackContractError(f"attack {name!r} returned inputs outside [0, 1]")
    if eps is not None and (x_adv - x).abs().max() > eps + 1e-5:
        raise AttackContractError(
            f"attack {name!r} left the eps={eps:g} ball (max |delta| = {(x_adv - x).abs().max():.4g})")


def evaluate(model: nn.Module, x: Tensor, y: Tensor, attacks: Mapping[str, EvalAttack], *,
             batch_size: int = 256, device: torch.device | str = "cpu", seed: int = 0,
             progress: bool = False, desc: str = "eval") -> EvalResult:
    """Per-sample correctness of ``model`` (put in eval mode) on ``(x, y)`` under each attack.

    Runs inside ``torch.random.fork_rng`` seeded with ``seed``: evaluation is reproducible and does not
    shift the training random stream (APGD/Square re-seed the global RNG; this isolates them too).
    Every adversarial batch is checked to lie in [0, 1] and in the attack's eps ball. An attack with
    ``whole_set = True`` (AutoAttack) gets all examples at once and batches them itself. ``progress``: a bar
    on a terminal, lines elsewhere (:mod:`robust_distill.progress`), per attack and per AutoAttack stage.
    """
    device = torch.device(device)
    result = EvalResult(n=x.shape[0])
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), model_mode(model, False):
        torch.manual_seed(seed)
        for name, attack in attacks.items():
            eps = getattr(attack, "eps", None)
            correct = torch.zeros(x.shape[0], dtype=torch.bool)
            whole = getattr(attack, "whole_set", False)
            chunk = x.shape[0] if whole else batch_size
            bar = Progress(-(-x.shape[0] // chunk), f"{desc} {name}", unit="batch", enabled=progress)
            for start, xb, yb in iterate_eval(x, y, chunk):
                xb, yb = to_float(xb, device), yb.to(device)
                with progress_scope(progress, f"{desc} {name}"):
                    x_adv = attack(model, xb, yb)
                _check_contract(name, xb, x_adv, eps)
                for i, xa, ya in iterate_eval(x_adv, yb, batch_size):
                    with torch.no_grad():
                        correct[start + i:start + i + xa.shape[0]] = (model(xa).argmax(1) == ya).cpu()
                done = start + xb.shape[0]
                bar.update(1, items=xb.shape[0], stats={"acc": f"{100 * correct[:done].float().mean().item():.2f}%"})
            bar.close()
            result.correct[name] = correct
    return result
