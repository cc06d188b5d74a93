"""|S_U| against student capacity: the analogue of the capacity table of "Why robust teachers fail" (ICML 2026,
Sec. 3) from the runs of ``capacity_grid.yaml``.

For every student size: the samples every PGD-AT run misclassifies under attack at its peak epoch ("PGD-AT
unlearnable"), the same for TRADES, their intersection over all runs (S_U) and the samples every run gets right
(S_L), all with :func:`robust_distill.analysis.unlearnable_sets`; plus the runs' validation robust accuracy at
their peak. Writes ``capacity.md``, ``capacity.json`` and ``capacity.png`` into the results folder.

    python benchmarks/fashion_mnist/capacity_table.py benchmarks/results/fashion_mnist/capacity [--seeds 0 1]

Only sizes whose runs have all finished are tabulated (an intersection over fewer runs is larger, so sizes with
missing runs would not compare); ``--seeds`` restricts every size to the same seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from robust_distill.analysis.unlearnable import unlearnable_sets
from robust_distill.core.manager import get_registries
from robust_distill.engine.run import build_student
from robust_distill.files.atomic import atomic_write_json, atomic_write_text

METHODS = ("pgd_at", "trades")


def _params(student: str, dataset: str) -> int:
    regs = get_registries()
    info = regs.datasets.get(dataset).info()
    return sum(p.numel() for p in build_student(student, {}, info, regs).parameters())


def capacity_table(results: Path, seeds: list[int] | None = None) -> dict[str, Any]:
    groups: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    seen: dict[str, set[int]] = defaultdict(set)  # method -> seeds of any size: every size needs them all
    dataset = "fashion_mnist"
    for run in sorted(p for p in results.iterdir() if (p / "run.yaml").is_file()):
        raw = yaml.safe_load((run / "run.yaml").read_text())
        seed = raw.get("seed", 0)
        if seeds is not None and seed not in seeds:
            continue
        student = raw["student"] if isinstance(raw["student"], str) else raw["student"]["key"]
        dataset = raw["data"]["dataset"]
        seen[raw["method"]].add(seed)
        groups.setdefault(student, defaultdict(list))
        if (run / "summary.json").is_file():
            groups[student][raw["method"]].append(run)
    expected = sum(len(seen[m]) for m in METHODS)
    rows, skipped = [], {}
    for student, by_method in groups.items():
        finished = sum(len(by_method.get(m, [])) for m in METHODS)
        if finished < expected:
            skipped[student] = f"{finished} of {expected} runs finished"
            continue
        every = [r for m in METHODS for r in by_method[m]]
        all_sets = unlearnable_sets(every)
        row: dict[str, Any] = {"student": student, "params": _params(student, dataset),
                               "runs": {m: len(by_method[m]) for m in METHODS}, "n_recorded": all_sets["n_recorded"],
                               "S_U": all_sets["size_unlearnable"], "S_L": all_sets["size_learnable"]}
        for m in METHODS:
            sets = unlearnable_sets(by_method[m])
            summaries = [json.loads((r / "summary.json").read_text()) for r in by_method[m]]
            values = [100 * s["best_value"] for s in summaries]
            row[f"{m}_unlearnable"] = sets["size_unlearnable"]
            row[f"{m}_robust"] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
            row[f"{m}_peak_epochs"] = sorted(s["best_epoch"] + 1 for s in summaries)
            row["select"] = summaries[0]["select"]
        rows.append(row)
    rows.sort(key=lambda r: r["params"])
    return {"results": str(results), "seeds": seeds, "rows": rows, "skipped": skipped}


def markdown(table: dict[str, Any]) -> str:
    rows = table["rows"]
    if not rows:
        return "No student size has all its runs finished yet.\n"
    n = rows[0]["n_recorded"]
    select = rows[0]["select"].replace("val_", "validation ").replace("pgd", "PGD-")
    lines = [f"| student | params | runs (PGD-AT + TRADES) | PGD-AT unlearnable | TRADES unlearnable | S_U (all runs) "
             f"| S_L (all runs) | {select} at peak, PGD-AT (%) | {select} at peak, TRADES (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        counts = [f"{r[k]} ({100 * r[k] / r['n_recorded']:.1f}%)"
                  for k in ("pgd_at_unlearnable", "trades_unlearnable", "S_U", "S_L")]
        robust = [f"{r[f'{m}_robust'][0]:.1f} ± {r[f'{m}_robust'][1]:.1f}" for m in METHODS]
        lines.append(f"| `{r['student'].split(':')[-1]}` | {r['params']:,} | {r['runs']['pgd_at']} + "
                     f"{r['runs']['trades']} | " + " | ".join(counts + robust) + " |")
    lines += ["", f"Counts are of the first {n} training images (recorded at every epoch); a sample is unlearnable "
              "for a method if every run of it misclassifies it under PGD at the run's peak-robust epoch, in S_U if "
              "every run does, in S_L if every run gets it right."]
    if table["skipped"]:
        missing = "; ".join(f"`{s}` ({why})" for s, why in table["skipped"].items())
        lines.append(f"Not tabulated (runs missing): {missing}.")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> Path | None:
    from robust_distill.results.plots import _plt, _save

    rows = table["rows"]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    params = [r["params"] for r in rows]
    for key, label, style in (("pgd_at_unlearnable", "PGD-AT unlearnable", "o--"),
                              ("trades_unlearnable", "TRADES unlearnable", "s--"), ("S_U", "S_U (all runs)", "D-")):
        ax.plot(params, [100 * r[key] / r["n_recorded"] for r in rows], style, label=label)
    for r in rows:
        ax.annotate(r["student"].split(":")[-1], (r["params"], 100 * r["S_U"] / r["n_recorded"]),
                    textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_ylabel(f"% of the first {rows[0]['n_recorded']} training images")
    ax.set_title("Fashion-MNIST: robustly unlearnable samples vs capacity", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="the grid's output folder")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="use only these seeds (every size alike)")
    ns = p.parse_args(argv)
    results = Path(ns.results)
    table = capacity_table(results, ns.seeds)
    md = markdown(table)
    atomic_write_json(table, results / "capacity.json")
    atomic_write_text("# |S_U| against student capacity (Fashion-MNIST)\n\n" + md, results / "capacity.md")
    plot(table, results / "capacity.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
