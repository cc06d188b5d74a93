"""``robust-distill bench GRID.yaml``: a grid of training runs, each in its own folder, resumable.

A grid file::

    output_dir: runs/my-grid
    base:                      # a config (mapping), or the path of a YAML config
      method: rslad
      student: timm:convnet_s
      ...
    set:                       # dotted keys set in every run (on top of base)
      optim.epochs: 4
    grid:                      # cartesian product of these dotted keys
      method: [pgd_at, rslad, adaad]
      seed: [0, 1]
      threat.eps: [0.1, 0.2]
    exclude:                   # combinations to skip (every listed key must match)
      - {method: pgd_at, threat.eps: 0.2}
    per_method:                # overrides applied to the runs of one method (null on a top-level key
      pgd_at: {teachers: null}   # removes it; on a dotted key it sets null)
    parallel: 1                # runs at a time
    threads_per_run: null      # OMP/torch threads per run (default: cores / parallel)
    torchrun: null             # processes per run under torchrun (multi-GPU), e.g. 4

Every run is a ``robust-distill train`` subprocess in ``<output_dir>/<run name>/`` with its layered
config (``run.yaml``); all configs are validated before the first run starts. Each run's state is in its
``status.json`` (``running``/``done``/``failed`` with the error). Re-running the same grid skips finished
runs, resumes interrupted ones from their ``last.pt`` and retries failed ones; a failed run never stops
the grid.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .._io import atomic_write_json, atomic_write_text
from ..config import ConfigError, apply_overrides, resolve_config
from ..progress import Progress

__all__ = ["GridRun", "load_grid", "expand_grid", "run_grid"]

GRID_KEYS = {"output_dir", "base", "set", "grid", "exclude", "per_method", "parallel", "threads_per_run",
             "torchrun", "runs"}


@dataclass
class GridRun:
    name: str
    raw: dict[str, Any]
    folder: Path

    @property
    def status_file(self) -> Path:
        return self.folder / "status.json"

    def status(self) -> dict[str, Any]:
        if (self.folder / "summary.json").is_file():
            return {"state": "done"}
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "pending"}


def _set(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``raw`` with ``dotted`` set to ``value``; ``null`` on a top-level key removes it (``teachers: null``)."""
    if value is None and "." not in dotted:
        return {k: v for k, v in raw.items() if k != dotted}
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("..."):
        text = text[:-3].strip()
    return apply_overrides(raw, [f"{dotted}={text}"])


def _slug(value: Any) -> str:
    text = str(value)
    if isinstance(value, str) and ("/" in text or ":" in text):
        text = Path(text.split(":", 1)[-1]).stem if text.endswith(".pt") else text.split(":")[-1]
        text = text.replace("/", "_")
    elif isinstance(value, float):
        text = f"{value:.4g}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def run_name(assignment: Mapping[str, Any]) -> str:
    """``method=adaad,seed=0,eps=0.1`` style folder names from the varying keys."""
    return ",".join(f"{k.split('.')[-1]}={_slug(v)}" for k, v in assignment.items())


def load_grid(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"grid file {str(p)!r} does not exist."], str(p))
    grid = yaml.safe_load(p.read_text()) or {}
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ConfigError([f"{k}: unknown grid key; valid keys: {', '.join(sorted(GRID_KEYS))}." for k in unknown],
                          str(p))
    base = grid.get("base", {})
    if isinstance(base, str):
        base_path = (p.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise ConfigError([f"base: config file {str(base_path)!r} does not exist."], str(p))
        grid["base"] = yaml.safe_load(base_path.read_text()) or {}
    grid.setdefault("output_dir", str(p.with_suffix("")))
    return grid


def expand_grid(grid: Mapping[str, Any]) -> list[GridRun]:
    """The runs of a grid: cartesian product, minus exclusions, plus explicit ``runs``."""
    axes: dict[str, list[Any]] = {k: (v if isinstance(v, list) else [v]) for k, v in (grid.get("grid") or {}).items()}
    out_dir = Path(grid["output_dir"])
    assignments = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    assignments += [dict(r) for r in grid.get("runs", []) or []]
    runs: list[GridRun] = []
    seen: set[str] = set()
    for assignment in assignments:
        if any(all(assignment.get(k) == v for k, v in ex.items()) for ex in grid.get("exclude", []) or []):
            continue
        raw = copy.deepcopy(grid.get("base") or {})
        for key, value in {**(grid.get("set") or {}), **assignment}.items():
            raw = _set(raw, key, value)
        for key, value in ((grid.get("per_method") or {}).get(raw.get("method"), {}) or {}).items():
            raw = _set(raw, key, value)
        name = run_name(assignment)
        if name in seen:
            raise ConfigError([f"two grid runs are both named {name!r}; make their keys differ."], "grid")
        seen.add(name)
        raw["output_dir"] = str(out_dir / name)
        runs.append(GridRun(name, raw, out_dir / name))
    return runs


def _command(run: GridRun, nproc: int | None) -> list[str]:
    cli = ["-m", "robust_distill", "train", str(run.folder / "run.yaml")]
    if nproc and nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cli]
    return [sys.executable, *cli]


def run_grid(grid: Mapping[str, Any], regs: Any, *, parallel: int | None = None, dry_run: bool = False,
             log: Any = None) -> dict[str, Any]:
    """Run every unfinished run of ``grid``; returns ``{run name: final state}``."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    runs = expand_grid(grid)
    problems: list[str] = []
    for run in runs:  # validate everything before anything starts
        try:
            resolve_config(run.raw, regs, source=f"run {run.name}")
        except ConfigError as exc:
            problems += [f"{run.name}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems, "grid")
    out_dir = Path(grid["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if r.status()["state"] != "done"]
    log(f"grid {out_dir}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run")
    if dry_run:
        return {r.name: r.status()["state"] for r in runs}

    parallel = max(1, parallel or int(grid.get("parallel") or 1))
    threads = grid.get("threads_per_run") or max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    active: list[tuple[GridRun, subprocess.Popen[bytes], float, Any]] = []
    queue = list(todo)
    counts = {"done": 0, "failed": 0}
    progress = Progress(len(todo), f"grid {out_dir}", unit="run", items_unit="run")
    try:
        while queue or active:
            while queue and len(active) < parallel:
                run = queue.pop(0)
                run.folder.mkdir(parents=True, exist_ok=True)
                atomic_write_text(yaml.safe_dump(run.raw, sort_keys=False), run.folder / "run.yaml")
                started = time.time()
                atomic_write_json({"state": "running", "started": started, "pid": os.getpid()}, run.status_file)
                logfile = open(run.folder / "train.log", "ab")  # noqa: SIM115  (closed when the run ends)
                proc = subprocess.Popen(_command(run, grid.get("torchrun")), env=env, stdout=logfile,
                                        stderr=logfile)
                active.append((run, proc, started, logfile))
                log(f"  started {run.name}")
            time.sleep(0.5)
            progress.update(0, stats={**counts, "running": len(active)})  # a line when one is due
            for item in list(active):
                run, proc, started, logfile = item
                if proc.poll() is None:
                    continue
                active.remove(item)
                logfile.close()
                minutes = (time.time() - started) / 60
                ok = proc.returncode == 0 and (run.folder / "summary.json").is_file()
                counts["done" if ok else "failed"] += 1
                progress.update(1, items=1, stats={**counts, "running": len(active)})
                if ok:
                    atomic_write_json({"state": "done", "minutes": round(minutes, 2)}, run.status_file)
                    log(f"  done    {run.name} ({minutes:.1f} min)")
                else:
                    tail = (run.folder / "train.log").read_text(errors="replace").strip().splitlines()[-12:]
                    atomic_write_json({"state": "failed", "returncode": proc.returncode, "minutes": round(minutes, 2),
                                       "error": "\n".join(tail)}, run.status_file)
                    log(f"  FAILED  {run.name} (exit {proc.returncode}); see {run.folder / 'train.log'}")
    finally:
        progress.close()
        for _, proc, _, _ in active:  # interrupted: stop the children; their last.pt lets them resume
            proc.terminate()
        for run, proc, _, logfile in active:
            proc.wait()
            logfile.close()
            atomic_write_json({"state": "interrupted"}, run.status_file)
    states = {r.name: r.status()["state"] for r in runs}
    atomic_write_json(states, out_dir / "grid_status.json")
    failed = [n for n, s in states.items() if s == "failed"]
    log(f"grid {out_dir}: {sum(s == 'done' for s in states.values())}/{len(runs)} done"
        + (f", failed: {', '.join(failed)}" if failed else ""))
    return states
