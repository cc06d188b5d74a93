"""Is there a robust-overfitting regime on CPU? The verdict of overfit_grid.yaml, computed from its run files.

For each run: the epoch of peak validation PGD-20 (the best checkpoint), that peak and the last epoch's value, and
the final test evaluation of both checkpoints (clean, PGD-20, AutoAttack APGD-CE+T). Issue 21 asks for a regime in
which best and last differ by at least 3 points: the verdict holds for a run when its test PGD-20 and APGD gaps
(best - last) are both >= 3 points. Writes ``verdict.md`` into the results folder.

    python benchmarks/fashion_mnist/overfit_verdict.py [benchmarks/results/fashion_mnist/overfit]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GAP = 0.03  # best - last, on test accuracy


def run_row(folder: Path) -> dict:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluated = [r for r in rows if "val_pgd20" in r]
    peak = max(evaluated, key=lambda r: r["val_pgd20"])
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    final = summary.get("final") or {}
    return {"run": folder.name, "epochs": len(rows), "peak_epoch": peak["epoch"] + 1, "val_peak": peak["val_pgd20"],
            "val_last": evaluated[-1]["val_pgd20"], "best": final.get("best", {}), "last": final.get("last", {})}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main(root: Path) -> str:
    runs = [run_row(p.parent) for p in sorted(root.glob("*/metrics.jsonl"))]
    lines = ["# Robust overfitting on 2 CPU cores: verdict", "",
             f"From `{root}` (`benchmarks/fashion_mnist/overfit_grid.yaml`: PGD-AT, 2,000 Fashion-MNIST training "
             "images, 100 epochs, lr 0.1 x0.1 at epochs 50 and 75, eps 0.1). Test numbers on the first 1,000 test "
             "images; gap = best checkpoint - last checkpoint.", "",
             "| run | epochs done | peak epoch (val PGD-20) | val PGD-20 peak / last | test clean best / last | "
             "test PGD-20 best / last (gap) | test APGD-CE+T best / last (gap) | gap >= 3 points |",
             "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for r in runs:
        b, la = r["best"], r["last"]
        gaps = [b[a] - la[a] for a in ("pgd20", "autoattack_apgd") if a in b and a in la]
        holds = len(gaps) == 2 and min(gaps) >= GAP
        verdicts.append(holds)
        lines.append(
            f"| {r['run']} | {r['epochs']} | {r['peak_epoch']} | {pct(r['val_peak'])} / {pct(r['val_last'])} | "
            f"{pct(b.get('clean'))} / {pct(la.get('clean'))} | {pct(b.get('pgd20'))} / {pct(la.get('pgd20'))} "
            f"({pct(gaps[0]) if gaps else '-'}) | {pct(b.get('autoattack_apgd'))} / {pct(la.get('autoattack_apgd'))} "
            f"({pct(gaps[1]) if len(gaps) > 1 else '-'}) | {'yes' if holds else 'no'} |")
    finished = bool(runs) and all(r["best"] for r in runs)
    overfit = [r["run"] for r, holds in zip(runs, verdicts, strict=True) if holds]
    if overfit:
        verdict = f"a regime with a best/last gap of >= 3 points exists: {', '.join(overfit)}."
    elif finished:
        verdict = "no run shows a best/last gap of >= 3 points on both test PGD-20 and APGD."
    else:
        verdict = "not all runs have finished (no final evaluation yet): no verdict."
    lines += ["", f"Verdict: {verdict}"]
    text = "\n".join(lines) + "\n"
    (root / "verdict.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/fashion_mnist/overfit")))
