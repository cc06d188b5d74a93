"""Worker of ``test_sharded_eval.py``: evaluates one fixed model against every kind of evaluation attack and
saves the per-sample correctness. Run alone it evaluates everything; under ``torchrun`` each process
evaluates its share of the chunks (``robust_distill.engine.evaluation.evaluate``).

Usage: python tests/sharded_eval_worker.py OUT.pt [DEVICE]
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from robust_distill.core.manager import get_registries
from robust_distill.engine.distributed import init_distributed
from robust_distill.engine.evaluation import EvalResult, evaluate
from robust_distill.files.atomic import atomic_save

EPS = 0.2
N = 20  # AutoAttack's chunk is 8: chunks of 8, 8 and 4; rank 0 gets chunks 0 and 2, rank 1 chunk 1


class Prototypes(nn.Module):
    """Nearest-prototype classifier ``z_c = <x, p_c> - |p_c|^2 / 2`` on the synthetic data's class prototypes:
    accurate, and robust at ``EPS`` for part of the examples only (so every attack breaks some, not all)."""

    def __init__(self, protos: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(protos[0].numel(), protos.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(protos.flatten(1))
            self.linear.bias.copy_(-0.5 * protos.flatten(1).pow(2).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict]:
    regs = get_registries()
    options = {"num_classes": 4, "channels": 3, "size": 4, "n_train": 8, "n_test": N, "noise": 0.3}
    bundle = regs.datasets.get("synthetic").load(**options)
    protos = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))  # the dataset's own prototypes
    model = Prototypes(protos).eval()
    names = ["clean", "fgsm", "pgd20", "cw_inf", "apgd_ce"]
    attacks = {n: regs.eval_attacks.build(n, {}, eps=EPS, num_classes=4) for n in names}
    for name in ("autoattack", "autoattack_apgd"):
        attacks[name] = regs.eval_attacks.build(name, {"batch_size": 8}, eps=EPS, num_classes=4)
    return model, bundle.test_x, bundle.test_y, attacks


def run(device: str = "cpu") -> EvalResult:
    model, x, y, attacks = setup()
    return evaluate(model.to(device), x, y, attacks, batch_size=8, seed=3, device=device)


if __name__ == "__main__":
    device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    ctx = init_distributed(device)
    result = run(f"cuda:{torch.cuda.current_device()}" if device == "cuda" else device)
    if ctx.is_main:
        atomic_save(result.correct, sys.argv[1])
    ctx.close()
