"""Evaluate a model against a list of attacks, per sample, with the training RNG left untouched.

Examples are attacked in fixed chunks, each after seeding the RNG from the chunk's index, so results do not
depend on the other examples or on the process: under ``torchrun`` the chunks are shared out across the
processes and the per-sample results gathered, equal to a single-process evaluation (see :func:`evaluate`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import model_mode
from .components import EvalAttack
from .data import EvalSet, TensorEvalSet, iterate_eval, to_device, to_float
from .distributed import all_reduce_tensor, rank_and_world
from .precision import autocast
from .progress import Progress, progress_scope

__all__ = ["EvalResult", "evaluate", "evaluate_set", "make_eval_attacks", "AttackContractError", "TransferAttack",
           "chunk_size", "chunk_seed"]


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
        self.chunk_size = getattr(base, "chunk_size", None)
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


@contextmanager
def _deterministic_cudnn() -> Iterator[None]:
    """cuDNN's fixed, deterministic algorithms (no autotuning): the same chunk gives the same bits on any rank."""
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags


def chunk_size(attack: EvalAttack, batch_size: int, n: int) -> int:
    """How many examples one call of ``attack`` gets: its own ``chunk_size`` (AutoAttack: its batch size),
    all of them for a legacy ``whole_set`` attack, else the evaluation batch size."""
    if getattr(attack, "chunk_size", None):
        return int(attack.chunk_size)  # type: ignore[attr-defined]
    return max(n, 1) if getattr(attack, "whole_set", False) else batch_size


def chunk_seed(seed: int, chunk: int) -> int:
    """The RNG seed of one chunk: a function of the run's seed and the chunk's index only."""
    return (seed * 1_000_003 + chunk) % 2**63


def evaluate(model: nn.Module, x: Tensor, y: Tensor, attacks: Mapping[str, EvalAttack], **options: Any) -> EvalResult:
    """Per-sample correctness of ``model`` on the tensors ``(x, y)``: :func:`evaluate_set` on them."""
    return evaluate_set(model, TensorEvalSet(x, y, torch.arange(x.shape[0])), attacks, **options)


def evaluate_set(model: nn.Module, data: EvalSet, attacks: Mapping[str, EvalAttack], *,
                 batch_size: int = 256, device: torch.device | str = "cpu", seed: int = 0,
                 progress: bool = False, desc: str = "eval", precision: str = "fp32",
                 shard: bool = True) -> EvalResult:
    """Per-sample correctness of ``model`` (put in eval mode) on ``data`` under each attack, in ``data``'s
    order (tensors in memory or images streamed from files: :class:`~robust_distill.data.EvalSet`).

    The examples are cut into fixed chunks (``batch_size``, or the attack's own ``chunk_size``: AutoAttack's
    500; a streamed set caps a chunk at its ``chunk`` images); every chunk is attacked alone, right after
    ``torch.manual_seed(chunk_seed(seed, index))``, so an example's result depends only on its chunk, never
    on what else is evaluated or on which process does it. Under ``torchrun`` (``shard``) chunk ``k`` goes to
    process ``k mod world_size`` (which reads only its own chunks) and the per-sample correctness is summed
    over the processes: N processes evaluate N times faster and every process returns the numbers of a
    single-process evaluation, exactly. On CUDA the evaluation uses cuDNN's deterministic algorithms for the
    same reason.

    Runs inside ``torch.random.fork_rng``: evaluation does not shift the training random stream (APGD and
    Square re-seed the global RNG; this isolates them too). ``precision`` is ``fp32`` (default: numbers
    comparable with the papers) or ``bf16`` (autocast). Every adversarial chunk is checked to lie in
    [0, 1] and in the attack's eps ball. ``progress``: a bar on a terminal, lines elsewhere
    (:mod:`robust_distill.progress`), per attack and per AutoAttack stage.
    """
    device = torch.device(device)
    n = data.n
    result = EvalResult(n=n)
    rank, world = rank_and_world() if shard else (0, 1)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), model_mode(model, False), _deterministic_cudnn():
        for name, attack in attacks.items():
            eps = getattr(attack, "eps", None)
            size = min(chunk_size(attack, batch_size, n), getattr(data, "chunk", None) or max(n, 1))
            mine = list(range(rank, -(-n // size), world))
            correct = torch.zeros(n, dtype=torch.int32, device=device)
            bar = Progress(len(mine), f"{desc} {name}", unit="batch", enabled=progress)
            hits = seen = 0
            for k, (xb, yb) in zip(mine, data.batches(size, mine), strict=True):
                start = k * size
                xb, yb = to_float(xb, device), to_device(yb, device)
                torch.manual_seed(chunk_seed(seed, k))
                with autocast(device, precision), progress_scope(progress, f"{desc} {name}"):
                    x_adv = attack(model, xb, yb)
                _check_contract(name, xb, x_adv, eps)
                for i, xa, ya in iterate_eval(x_adv, yb, batch_size):
                    with torch.no_grad(), autocast(device, precision):
                        correct[start + i:start + i + xa.shape[0]] = (model(xa).argmax(1) == ya).int()
                if progress:  # one host sync per chunk, only when someone reads the line
                    hits, seen = hits + int(correct[start:start + xb.shape[0]].sum()), seen + xb.shape[0]
                    bar.update(1, items=xb.shape[0], stats={"acc": f"{100 * hits / max(seen, 1):.2f}%"})
            bar.close()
            result.correct[name] = all_reduce_tensor(correct).cpu().bool()
    return result
