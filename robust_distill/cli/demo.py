"""``robust-distill demo``: distil a robust Fashion-MNIST student with AdaAD and print its robustness.

1. The teacher is the robust ``convnet_m`` shipped with the package (``assets/fmnist_teacher_pgd_at.pt``,
   trained by ``robust-distill train benchmarks/fashion_mnist/teacher_pgd_at.yaml``); if it is missing,
   a smaller one is first trained here with the project's own PGD-AT.
2. AdaAD distils it into ``convnet_s`` (12x fewer parameters) at eps = 0.1.
3. Teacher and student are evaluated on the first test images: clean, PGD-20 and AutoAttack's APGD-CE +
   APGD-T stages (reference implementation; ``full_autoattack`` adds FAB-T and Square, which cost most of
   AutoAttack's time on a CPU), and a table is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .. import hookimpl
from ..checkpoint import build_from_checkpoint
from ..config import resolve_config
from ..distributed import resolve_device
from ..evaluation import evaluate, make_eval_attacks
from ..plugin import get_registries
from ..trainer import train
from . import command, integer
from .eval import markdown_table

__all__ = ["run_demo", "SHIPPED_TEACHER"]

SHIPPED_TEACHER = Path(__file__).parent.parent / "assets" / "fmnist_teacher_pgd_at.pt"
EPS = 0.1

COMMON: dict[str, Any] = {
    "seed": 0,
    "device": "auto",
    "channels_last": True,
    "data": {"dataset": "fashion_mnist", "val_size": 5000, "batch_size": 128, "eval_batch_size": 500},
    "threat": {"eps": EPS, "step_size": EPS / 4, "steps": 10},
    "eval": {"n_examples": 1000, "attacks": ["clean", "pgd20"], "select": "pgd20"},
}


def _config(**overrides: Any) -> dict[str, Any]:
    raw = {**COMMON, **overrides}
    raw["data"] = {**COMMON["data"], **overrides.get("data", {})}
    return raw


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_demo(output_dir: Path = Path("runs/demo"), epochs: int | None = None, n_test: int | None = None,
             quick: bool = False, full_autoattack: bool = False) -> dict[str, Any]:
    """Run the demo; returns the table rows (also printed) and the wall-clock time."""
    start = time.perf_counter()
    regs = get_registries()
    epochs = epochs or (1 if quick else 3)
    n_test = n_test or (32 if quick else 500)
    subset = 256 if quick else 10000
    evaluation = {**COMMON["eval"], "n_examples": 128 if quick else 1000}

    teacher_path = SHIPPED_TEACHER
    teacher_dir = "teacher_quick" if quick else "teacher"  # two configs: `train` resumes only its own
    if not teacher_path.is_file() or quick:
        _say("Training a robust teacher with PGD-AT first (no shipped teacher found)...")
        cfg = resolve_config(_config(
            method="pgd_at", student="timm:convnet_s" if quick else "timm:convnet_m",
            output_dir=str(output_dir / teacher_dir), data={"train_subset": subset}, eval=evaluation,
            optim={"epochs": 1 if quick else 3, "schedule": {"key": "multistep", "kwargs": {"milestones": [0.7]}}}),
            regs)
        train(cfg)
        teacher_path = output_dir / teacher_dir / "best.pt"
    else:
        _say(f"Teacher: {teacher_path} (shipped; PGD-AT, eps {EPS})")

    _say(f"Distilling convnet_s from it with AdaAD ({epochs} epochs on {subset} training images)...")
    student_cfg = resolve_config(_config(
        method="adaad", student="timm:convnet_s", teachers={"robust": f"checkpoint:{teacher_path}"},
        output_dir=str(output_dir / "student_adaad"), data={"train_subset": subset}, eval=evaluation,
        optim={"epochs": epochs, "lr": 0.1, "weight_decay": 5e-4,
               "schedule": {"key": "multistep", "kwargs": {"milestones": [0.5, 0.75]}}}), regs)
    train(student_cfg, resume=False)

    robust = "autoattack" if full_autoattack else "autoattack_apgd"
    _say(f"Evaluating on the first {n_test} test images (clean, PGD-20, {robust})...")
    bundle = regs.datasets.get("fashion_mnist").load()
    x, y = bundle.test_x[:n_test], bundle.test_y[:n_test]
    attacks = make_eval_attacks(["clean", "pgd20", robust], regs, eps=EPS, num_classes=10)
    device = resolve_device(COMMON["device"])
    rows = []
    for name, path in ((f"teacher {'convnet_s' if quick else 'convnet_m'} (PGD-AT)", teacher_path),
                       ("student convnet_s (AdaAD)", output_dir / "student_adaad" / "best.pt")):
        model, _ = build_from_checkpoint(path, regs)
        acc = evaluate(model, x, y, attacks, batch_size=500, device=device, progress=True,
                       desc=name.split(' (')[0]).accuracy
        rows.append({"model": name, "params": f"{sum(p.numel() for p in model.parameters()) / 1e3:.0f}k",
                     **acc})
    minutes = (time.perf_counter() - start) / 60
    table = markdown_table(rows, [("model", "model"), ("params", "params"), ("clean", "clean (%)"),
                                  ("pgd20", "PGD-20 (%)"),
                                  (robust, "AutoAttack (%)" if full_autoattack else "AA APGD-CE+T (%)")])
    print(f"\nFashion-MNIST, L-inf eps = {EPS}, first {n_test} test images\n\n{table}\n\n"
          f"Total time: {minutes:.1f} min. Outputs in {output_dir}/.")
    return {"rows": rows, "minutes": minutes}


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--epochs", type=integer(1), default=None, help="student epochs (default: the demo's)")
    p.add_argument("--n-test", type=integer(1), default=None, help="test examples for the final table")
    p.add_argument("--quick", action="store_true", help="a tiny smoke version (seconds, not minutes)")
    p.add_argument("--full-autoattack", action="store_true",
                   help="AutoAttack standard (adds FAB-T and Square: ~20 min more on 2 CPU cores) instead of "
                        "its APGD-CE + APGD-T stages")


@command("demo", "the main job: distil a robust Fashion-MNIST student with AdaAD and print its robustness", _demo_args)
def cmd_demo(ns: argparse.Namespace) -> int:
    run_demo(output_dir=Path(ns.output_dir), epochs=ns.epochs, n_test=ns.n_test, quick=ns.quick,
             full_autoattack=ns.full_autoattack)
    return 0


@hookimpl
def rd_register_commands(commands):
    commands.register(cmd_demo)
