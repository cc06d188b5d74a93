"""benchmarks/fashion_mnist/budget.py: a grid's cost is the sum of its runs' recorded minutes, on grids written here."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .scripts import load_script


def test_core_minutes_and_wall_at_the_grids_parallel(tmp_path: Path):
    budget = load_script("benchmarks/fashion_mnist/budget.py")
    grids, results = tmp_path / "grids", tmp_path / "results"
    grids.mkdir()
    (grids / "a_grid.yaml").write_text(yaml.safe_dump({
        "output_dir": str(results / "a"), "parallel": 2, "base": {"method": "pgd_at"}, "grid": {"seed": [0, 1, 2]}}))
    for seed, minutes in ((0, 30.0), (1, 60.0)):  # seed 2 never ran; seed 1 was stopped (no summary.json)
        run = results / "a" / f"seed={seed}"
        run.mkdir(parents=True)
        (run / "status.json").write_text(json.dumps({"state": "done" if seed == 0 else "interrupted",
                                                     "minutes": minutes}))
    (results / "a" / "seed=0" / "summary.json").write_text("{}")
    text = budget.main(results, grids, tmp_path / "no_such.log")
    # 90 core-minutes; at 2 runs at a time 45 minutes of wall: 0.75 h, printed to 1 decimal
    assert "| `a_grid.yaml` | 3 (1) | 90 | 0.8 |" in text
    assert "In all: 90 core-minutes (1.5 core-hours, 0.8 hours on both cores)." in text
    assert (results / "budget.md").read_text() == text


def test_specialization_steps_add_their_wall_minutes(tmp_path: Path):
    budget = load_script("benchmarks/fashion_mnist/budget.py")
    grids, results = tmp_path / "grids", tmp_path / "results"
    grids.mkdir()
    results.mkdir()
    log = tmp_path / "cpu_times.log"
    log.write_text("teacher: 50.61 s user, 15.84 s system, 1200.00 s wall\n"
                   "prune: 7.36 s user, 1.83 s system, 60.00 s wall\n"
                   "teacher: 107.37 s user, 31.94 s system, 600.00 s wall\n"
                   "Command exited with non-zero status 1\n")  # what /usr/bin/time adds for a failed step
    assert budget.script_steps(log) == {"teacher": (2, 30.0), "prune": (1, 1.0)}
    text = budget.main(results, grids, log)
    assert "| teacher | 2 | 30 |" in text and "| prune | 1 | 1 |" in text
    assert "In all: 31 core-minutes (0.5 core-hours, 0.3 hours on both cores)." in text
