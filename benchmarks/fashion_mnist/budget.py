"""What each Fashion-MNIST grid cost on the 2 CPU cores, from its runs' own ``status.json`` (the minutes each run
took from start to end, on one core beside whatever else ran; a run stopped before its end has none, and counts the
training and validation seconds its epochs logged in ``metrics.jsonl``, without its unfinished final evaluation).
Writes ``budget.md`` into the results folder.

The sum of a grid's run-minutes is its cost in core-minutes; its wall time is about that divided by the runs it
ran at a time (``parallel``), when nothing else shared the machine. The specialization scripts (run_all.sh,
table4_ccat.sh, table5_rft.sh) run one step at a time on one core and log each step's wall seconds to
``benchmarks/results/specialization/cpu_times.log``: their cost is added from there, step by step.

    python benchmarks/fashion_mnist/budget.py [benchmarks/results/fashion_mnist]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from robust_distill.analysis.bench import expand_grid, load_grid
from robust_distill.files.atomic import read_jsonl

GRIDS = Path(__file__).resolve().parent
SPECIALIZATION_LOG = GRIDS.parents[1] / "benchmarks" / "results" / "specialization" / "cpu_times.log"


def epoch_seconds(metrics: Path) -> float:
    """The training and validation seconds a run's epochs logged (0 when it logged none)."""
    rows = read_jsonl(metrics, "metrics file") if metrics.is_file() else []
    return sum(r.get("time_train_s", 0.0) + r.get("time_eval_s", 0.0) for r in rows)


def grid_cost(grid_file: Path) -> dict:
    grid = load_grid(grid_file)
    runs = expand_grid(grid)
    minutes, done = 0.0, 0
    for run in runs:
        status = run.folder / "status.json"
        state = json.loads(status.read_text()) if status.is_file() else {}
        if state.get("minutes"):
            minutes += float(state["minutes"])
        else:  # stopped before its end: the epochs' own training and validation seconds (metrics.jsonl)
            minutes += epoch_seconds(run.folder / "metrics.jsonl") / 60
        done += (run.folder / "summary.json").is_file()
    return {"grid": grid_file.name, "runs": len(runs), "done": done, "minutes": minutes,
            "parallel": grid.get("parallel") or 1}


def script_steps(log: Path) -> dict[str, tuple[int, float]]:
    """Each step of ``cpu_times.log`` (lines ``NAME: U s user, S s system, W s wall``, one per run of the step):
    how many times it ran and its wall minutes in all, one core each."""
    steps: dict[str, tuple[int, float]] = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        name, _, times = line.partition(": ")
        wall = times.rsplit(", ", 1)[-1]
        if not wall.endswith(" s wall"):
            continue
        n, minutes = steps.get(name, (0, 0.0))
        steps[name] = (n + 1, minutes + float(wall.removesuffix(" s wall")) / 60)
    return steps


def main(results: Path, grids: Path = GRIDS, log: Path = SPECIALIZATION_LOG) -> str:
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
    steps = script_steps(log)
    if steps:
        lines += ["", f"The specialization scripts, from `{log.name}` (every run of each step, one core):", "",
                  "| step | runs | core-minutes |", "|---|---|---|"]
        for name, (n, minutes) in steps.items():
            total += minutes
            lines.append(f"| {name} | {n} | {minutes:.0f} |")
    lines += ["", f"In all: {total:.0f} core-minutes ({total / 60:.1f} core-hours, {total / 120:.1f} hours on both "
              "cores)."]
    text = "\n".join(lines) + "\n"
    (results / "budget.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/fashion_mnist")))
