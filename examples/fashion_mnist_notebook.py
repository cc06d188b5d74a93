"""Distil a robust Fashion-MNIST student from Python, as in a notebook: train, evaluate, load.

    python examples/fashion_mnist_notebook.py [OUTPUT_DIR]

RSLAD (Zi et al., ICCV 2021) distils the robust PGD-AT teacher shipped with robust-distill (a ``convnet_m``,
``robust_distill/assets/``) into a 12x smaller ``convnet_s`` at eps 0.1, on 20k training images for 4
epochs; the student is then loaded for inference and evaluated on 1,000 test images. Fashion-MNIST is read
from Debian's ``dataset-fashion-mnist`` package (or ``RD_FASHION_MNIST``: a folder with its four IDX files).
The test suite runs :func:`main` at a tiny budget (``tests/test_api.py``).

Measured here (2-core machine shared with other jobs: 261 s of CPU time, 14 minutes of wall time): best epoch 4,
clean 70.30%, PGD-20 47.40% on the first 1,000 test images, equal to the run's own final evaluation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import robust_distill as rd

TEACHER = Path(rd.__file__).parent / "assets" / "fmnist_teacher_pgd_at.pt"

CONFIG = {
    "method": "rslad",
    "student": "timm:convnet_s",
    "teachers": {"robust": f"checkpoint:{TEACHER}"},
    "data": {"dataset": "fashion_mnist", "train_subset": 20_000, "val_size": 1_000},
    "threat": {"eps": 0.1, "step_size": 0.025, "steps": 10},
    "optim": {"epochs": 4, "schedule": {"key": "multistep", "kwargs": {"milestones": [0.5, 0.75]}}},
    "eval": {"n_examples": 500, "final_attacks": ["clean", "pgd20"], "final_n_examples": 1_000},
}


def main(output_dir: str = "runs/fmnist-notebook", n_examples: int = 1_000,
         **overrides: Any) -> tuple[dict[str, Any], rd.Evaluation]:
    """Train (``overrides``: config keys, ``{"optim.epochs": 1}``), load the best student, evaluate it."""
    summary = rd.train(CONFIG, overrides={"output_dir": output_dir, **overrides})
    student = rd.load_model(output_dir)  # best.pt, in eval mode; takes images in [0, 1]
    ev = rd.evaluate(student, dataset="fashion_mnist", attacks=["clean", "pgd20"], eps=0.1, n_examples=n_examples)
    print(f"best epoch {summary['best_epoch'] + 1}: clean {100 * ev.accuracy['clean']:.2f}%, "
          f"PGD-20 {100 * ev.accuracy['pgd20']:.2f}% on {ev.n} test images")
    print(f"{int(ev.correct['pgd20'].sum())} of them survive PGD-20; the first ten: "
          f"{ev.correct['pgd20'][:10].int().tolist()}")
    return summary, ev


if __name__ == "__main__":
    main(*sys.argv[1:2])
