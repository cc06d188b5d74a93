"""Grid wall time with K runs at a time on one GPU (``launcher: {slots_per_gpu: K}``) against one at a time.

The grid is ``--runs`` runs of the Fashion-MNIST zoo's shape (``benchmarks/fashion_mnist/student_base.yaml``:
``convnet_s`` distilled with ``--method`` from the shipped PGD-AT teacher, batch 128, 10 PGD steps, eps 0.1) on
Fashion-MNIST-shaped synthetic data (1x28x28, 10 classes: the GPU machine is offline), the seeds differing.
Each K in ``--slots`` runs the whole grid in a fresh folder through ``bench``'s local launcher on the one GPU
``--gpu``; the result is the wall time of each grid and its speed-up over K = 1 (a ratio measured in the same
session, on the same GPU), written as JSON and Markdown to ``--out``.

Usage (a GPU machine; the script has not been run on one yet)::

    python benchmarks/bench_grid_slots.py --slots 1 4 --runs 8      # -> benchmarks/results/gpu/grid_slots.{json,md}
    python benchmarks/bench_grid_slots.py --smoke                   # CPU-sized check of this script (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "robust_distill" / "assets" / "fmnist_teacher_pgd_at.pt"


def zoo_run(method: str, epochs: int, n_train: int, device: str) -> dict[str, Any]:
    """One run of the zoo's shape on synthetic Fashion-MNIST-shaped data."""
    return {
        "method": method, "device": device, "channels_last": True,
        "data": {"dataset": "synthetic", "val_size": min(1000, n_train // 5), "batch_size": 128,
                 "eval_batch_size": 500, "options": {"n_train": n_train, "n_test": 500, "channels": 1,
                                                     "size": 28, "num_classes": 10}},
        "student": "timm:convnet_s", "teachers": {"robust": f"checkpoint:{TEACHER}"},
        "threat": {"eps": 0.1, "step_size": 0.025, "steps": 10},
        "optim": {"epochs": epochs, "lr": 0.1, "weight_decay": 5.0e-4,
                  "schedule": {"key": "multistep", "kwargs": {"milestones": [0.5, 0.75], "gamma": 0.1}}},
        "eval": {"n_examples": min(1000, n_train // 5), "attacks": ["clean", "pgd20"], "select": "pgd20",
                 "final_attacks": ["clean", "pgd20"], "final_n_examples": 500},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, nargs="+", default=[1, 4], help="runs at a time on the GPU, one grid each")
    p.add_argument("--runs", type=int, default=8, help="runs per grid")
    p.add_argument("--method", default="rslad")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--gpu", default="0", help="the GPU (CUDA_VISIBLE_DEVICES id) every run is placed on")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu" / "grid_slots"),
                   help="writes OUT.json and OUT.md")
    p.add_argument("--smoke", action="store_true", help="CPU, 2 tiny runs, results in a temp folder")
    args = p.parse_args(argv)
    os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu  # the launcher's one GPU (set before torch sees CUDA)
    import torch

    from robust_distill.analysis.bench import run_grid
    from robust_distill.core.manager import get_registries

    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU: run this on a GPU machine, or --smoke to check the script on CPU", file=sys.stderr)
        return 2
    if args.smoke:
        args.runs, args.epochs, args.n_train, args.slots = 2, 1, 256, [1, 2]
        args.out = str(Path(tempfile.mkdtemp(prefix="grid-slots-smoke-")) / "grid_slots")
    regs = get_registries()
    rows = []
    with tempfile.TemporaryDirectory(prefix="grid-slots-") as tmp:
        for k in args.slots:
            grid = {"output_dir": f"{tmp}/slots{k}", "base": zoo_run(args.method, args.epochs, args.n_train, device),
                    "grid": {"seed": list(range(args.runs))}, "launcher": {"slots_per_gpu": k}}
            start = time.perf_counter()
            states = run_grid(grid, regs, log=lambda msg: print(msg, file=sys.stderr, flush=True))
            wall = time.perf_counter() - start
            minutes = [json.loads((Path(tmp) / f"slots{k}" / name / "status.json").read_text()).get("minutes")
                       for name in states]
            rows.append({"slots": k, "runs": args.runs, "done": sum(s == "done" for s in states.values()),
                         "wall_s": round(wall, 1), "run_minutes": minutes})
    base = next((r["wall_s"] for r in rows if r["slots"] == 1), None)
    for r in rows:
        r["speedup_vs_1"] = round(base / r["wall_s"], 2) if base else None
    result = {"what": f"grid of {args.runs} {args.method} runs (zoo shape, synthetic 1x28x28, {args.epochs} epochs, "
                      f"{args.n_train} images), wall time per slots_per_gpu",
              "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "command": " ".join(sys.argv), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {result['what']}", "", f"{result['device']}, torch {result['torch']}: `{result['command']}`", "",
             "| runs at a time on the GPU | runs done | grid wall time (s) | speed-up over 1 at a time |",
             "|---|---|---|---|"]
    lines += [f"| {r['slots']} | {r['done']}/{r['runs']} | {r['wall_s']} | {r['speedup_vs_1']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out.with_suffix('.json')}, {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
