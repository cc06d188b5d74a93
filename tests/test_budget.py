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
    for seed, minutes in ((0, 30.0), (1, 60.0)):  # seed 1 was stopped after writing its minutes (no summary.json)
        run = results / "a" / f"seed={seed}"
        run.mkdir(parents=True)
        (run / "status.json").write_text(json.dumps({"state": "done" if seed == 0 else "interrupted",
                                                     "minutes": minutes}))
    (results / "a" / "seed=0" / "summary.json").write_text("{}")
    # seed 2 was stopped before it wrote its minutes: its epochs' own seconds count, 600 + 300 + 900 = 30 minutes
    (results / "a" / "seed=2").mkdir()
    (results / "a" / "seed=2" / "status.json").write_text(json.dumps({"state": "interrupted"}))
    (results / "a" / "seed=2" / "metrics.jsonl").write_text(
        '{"epoch": 0, "time_train_s": 600.0, "time_eval_s": 300.0}\n{"epoch": 1, "time_train_s": 900.0}\n')
    text = budget.main(results, grids, tmp_path / "no_such.log")
    # 120 core-minutes; at 2 runs at a time 60 minutes of wall: 1.0 h
    assert "| `a_grid.yaml` | 3 (1) | 120 | 1.0 |" in text
    assert "In all: 120 core-minutes (2.0 core-hours, 1.0 hours on both cores)." in text
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
