"""How stable is the robustly unlearnable set S_U? From the run files of ``su_grid.yaml`` (issue 21, item 4).

"Why robust teachers fail" (Sec. 3) defines S_U as the training samples that every one of 60 models (6 methods x
10 seeds) misclassifies under attack at its peak robust epoch, and argues that it is a property of the data and
the architecture, not of a run. Two measurements of that here:

1. |S_U| and |S_L| as runs are added (runs ordered seed-major: every method's seed 0, then seed 1, ...): a set that
   is a property of the data levels off instead of shrinking towards 0.
2. Agreement of S_U computed from two disjoint halves of the runs (even and odd seeds, every method in both):
   Jaccard index |A & B| / |A | B|, against the Jaccard index two random sets of the same sizes would have in
   expectation (|A| |B| / n over |A| + |B| - |A| |B| / n, on n recorded samples).

The verdict "S_U is stable" holds when the last third of the runs removes less than 5% of S_U and the halves'
Jaccard index is at least twice the random one.

    python benchmarks/fashion_mnist/su_stability.py [benchmarks/results/fashion_mnist/su]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from robust_distill.analysis.unlearnable import jaccard, unlearnable_sets


def ordered_runs(root: Path) -> list[Path]:
    runs = [p.parent for p in root.glob("*/train_records.pt") if (p.parent / "summary.json").is_file()]

    def key(run: Path) -> tuple[int, str]:
        fields = dict(part.split("=", 1) for part in run.name.split(","))
        return int(fields.get("seed", 0)), fields.get("method", "")
    return sorted(runs, key=key)


def main(root: Path) -> str:
    runs = ordered_runs(root)
    if len(runs) < 4:
        raise SystemExit(f"{len(runs)} finished runs with train_records.pt in {root}: run su_grid.yaml first")
    lines = ["# Stability of S_U (convnet_s, Fashion-MNIST)", "",
             f"{len(runs)} runs of `su_grid.yaml` (6 methods x seeds, 5k images, 3 epochs, eps 0.1), each at its peak "
             "validation PGD-20 epoch, per-sample PGD-20 on the first 2,000 training images.", "",
             "| runs | last run added | |S_U| | |S_L| |", "|---|---|---|---|"]
    sizes = []
    for k in range(1, len(runs) + 1):
        sets = unlearnable_sets(runs[:k])
        sizes.append(sets["size_unlearnable"])
        lines.append(f"| {k} | {runs[k - 1].name} | {sets['size_unlearnable']} | {sets['size_learnable']} |")
    n = sets["n_recorded"]
    seed = {run: int(dict(part.split("=", 1) for part in run.name.split(",")).get("seed", 0)) for run in runs}
    even, odd = [r for r in runs if seed[r] % 2 == 0], [r for r in runs if seed[r] % 2]
    if not even or not odd:
        raise SystemExit("the halves need runs of both an even and an odd seed")
    a = set(unlearnable_sets(even)["indices_unlearnable"])
    b = set(unlearnable_sets(odd)["indices_unlearnable"])
    expected = len(a) * len(b) / n
    random_j = expected / (len(a) + len(b) - expected) if a or b else float("nan")
    j = jaccard(a, b)
    third = sizes[len(sizes) - len(sizes) // 3 - 1]
    shrink = (third - sizes[-1]) / third if third else float("nan")
    holds = shrink < 0.05 and j >= 2 * random_j
    lines += ["", f"Halves (even / odd seeds, {len(even)} and {len(odd)} runs): |S_U| {len(a)} and "
              f"{len(b)}, Jaccard {j:.3f} against {random_j:.3f} for random sets of those sizes.",
              f"The last third of the runs removed {100 * shrink:.1f}% of S_U ({third} -> {sizes[-1]}).", "",
              "Verdict: S_U is stable across methods and seeds (levels off: < 5% removed by the last third; halves "
              "agree at >= 2x chance): " + ("**held**." if holds else "**did not hold**.")]
    sets = unlearnable_sets(runs)
    sets["data"] = {"dataset": "fashion_mnist", "options": {}, "root": None}
    (root / "unlearnable.json").write_text(json.dumps(sets) + "\n")
    text = "\n".join(lines) + "\n"
    (root / "su_stability.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/fashion_mnist/su")))
