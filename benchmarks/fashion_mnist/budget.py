"""What each Fashion-MNIST grid cost on the 2 CPU cores, from its runs' own ``status.json`` (the minutes each run
took from start to end, on one core beside whatever else ran; a run stopped before its end has none and counts 0).
Writes ``budget.md`` into the results folder.

The sum of a grid's run-minutes is its cost in core-minutes; its wall time is about that divided by the runs it
ran at a time (``parallel``), when nothing else shared the machine.

    python benchmarks/fashion_mnist/budget.py [benchmarks/results/fashion_mnist]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from robust_distill.analysis.bench import expand_grid, load_grid

GRIDS = Path(__file__).resolve().parent


def grid_cost(grid_file: Path) -> dict:
    grid = load_grid(grid_file)
    runs = expand_grid(grid)
    minutes, done = 0.0, 0
    for run in runs:
        status = run.folder / "status.json"
        if status.is_file():
            state = json.loads(status.read_text())
            minutes += float(state.get("minutes") or 0.0)
        done += (run.folder / "summary.json").is_file()
    return {"grid": grid_file.name, "runs": len(runs), "done": done, "minutes": minutes,
            "parallel": grid.get("parallel") or 1}


def main(results: Path, grids: Path = GRIDS) -> str:
    rows = [grid_cost(p) for p in sorted(grids.glob("*_grid.yaml"))]
    lines = ["# What each grid cost on the 2 CPU cores", "",
             "From each run's `status.json` (minutes from start to end, one core per run, beside whatever else ran "
             "on the machine): core-minutes = the sum over the grid's runs; wall = core-minutes / the grid's "
             "`parallel` when nothing else ran. `python benchmarks/fashion_mnist/budget.py`.", "",
             "| grid | runs (finished) | core-minutes | wall at its `parallel` (h) |", "|---|---|---|---|"]
    total = 0.0
    for r in rows:
        total += r["minutes"]
        lines.append(f"| `{r['grid']}` | {r['runs']} ({r['done']}) | {r['minutes']:.0f} | "
                     f"{r['minutes'] / r['parallel'] / 60:.1f} |")
    lines += ["", f"In all: {total:.0f} core-minutes ({total / 60:.1f} core-hours, {total / 120:.1f} hours on both "
              "cores)."]
    text = "\n".join(lines) + "\n"
    (results / "budget.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/fashion_mnist")))
