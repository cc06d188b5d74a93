"""Inner-attack cost with and without frozen parameters, as a ratio measured in the same run.

The engine switches ``requires_grad`` off for the student's and teachers' parameters while the inner
PGD runs (``robust_distill.core.attacks.frozen_parameters``). Without it autograd records, for every
parameter, what a weight gradient would need, even though ``torch.autograd.grad`` only asks for the
input gradient; research code that calls ``loss.backward()`` in the attack also computes and accumulates
those weight gradients. Variants, interleaved ABCABC... so that background load affects all alike:

* ``frozen``: robust-distill (parameters frozen, ``autograd.grad`` w.r.t. the input);
* ``grad_only``: parameters trainable, ``autograd.grad`` w.r.t. the input (AdaAD/RSLAD training code);
* ``backward``: parameters trainable, ``loss.backward()`` then ``x.grad`` (RSLAD's eval ``attack_pgd``).

Usage: python benchmarks/bench_frozen_attack.py [--setting fmnist|cifar] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from robust_distill import Step, ThreatModel
from robust_distill.core import attacks as attacks_mod
from robust_distill.core.components import DatasetInfo
from robust_distill.core.manager import get_registries
from robust_distill.engine.run import build_student

SETTINGS = {
    "fmnist": (DatasetInfo("fashion_mnist", 10, (1, 28, 28)), "timm:convnet_s", "timm:convnet_m", 128),
    "cifar": (DatasetInfo("cifar10", 10, (3, 32, 32)), "timm:resnet18_cifar", "timm:convnet_l", 32),
}


def backward_pgd(objective, x, *, eps, step_size, steps, start, clamp_start):  # noqa: ANN001
    """The same loop, written as research code does it: ``loss.backward()`` and ``x.grad``."""
    x = x.detach()
    x_adv = attacks_mod.random_start(x, eps, start, clamp_start).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        objective(x_adv).backward()
        delta = (x_adv.detach() + step_size * x_adv.grad.sign() - x).clamp(-eps, eps)
        x_adv = (x + delta).clamp(0.0, 1.0).detach()
    return x_adv


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setting", choices=SETTINGS, default="fmnist")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    info, student_key, teacher_key, batch = SETTINGS[args.setting]
    regs = get_registries()
    torch.manual_seed(0)
    student = build_student(student_key, {}, info, regs)
    teacher = build_student(teacher_key, {}, info, regs).eval()
    x = torch.rand(batch, *info.input_shape)
    y = torch.randint(0, 10, (batch,))
    attack = regs.inner_attacks.build("kl_pgd", {"target": "teacher_adv"})  # AdaAD: both models in the loop
    threat = ThreatModel(eps=8 / 255, step_size=2 / 255, steps=10)

    original_freeze, original_pgd = attacks_mod.frozen_parameters, attacks_mod.pgd
    variants = {
        "frozen": (original_freeze, original_pgd),
        "grad_only": (lambda *m: contextlib.nullcontext(), original_pgd),
        "backward": (lambda *m: contextlib.nullcontext(), backward_pgd),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats + 1):
        for name, (freeze, loop) in variants.items():
            attacks_mod.frozen_parameters, attacks_mod.pgd = freeze, loop
            step = Step(x, y, student=student, teachers={"robust": teacher}, threat=threat)
            t0 = time.perf_counter()
            attack(step)
            if r > 0:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
            for p in [*student.parameters(), *teacher.parameters()]:
                p.grad = None
    attacks_mod.frozen_parameters, attacks_mod.pgd = original_freeze, original_pgd

    base = statistics.median(times["frozen"])
    print(f"AdaAD inner attack, {args.setting}: student {student_key}, teacher {teacher_key}, batch {batch}, "
          f"10 PGD steps, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("| variant | s / attack | ratio to frozen |\n|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
