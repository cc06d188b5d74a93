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
    launcher: local            # how runs are started: local processes (slots per GPU) or submitit (Slurm);
                               # see robust_distill/analysis/launch.py
    report: false              # true: write report.md (robust-distill report) when the runs have ended

Every run is a ``robust-distill train`` process in ``<output_dir>/<run name>/`` with its layered config
(``run.yaml``), started by the grid's launcher (:mod:`.launch`); the grid file, the config of every run still
to run and the launcher are validated before the first run starts (finished runs are not: a grid can grow after
its inputs' checkpoints are gone). Each run's state is in its ``status.json``
(``submitted``/``running``/``done``/``failed`` with the error, ``interrupted``); a ``running`` whose process is
gone reads as ``interrupted``. A run killed while the grid runs is started again (``launcher.resubmit``);
re-running the same grid skips finished runs, resumes interrupted ones from their ``last.pt`` and retries
failed ones; a failed run never stops the grid.

One ``bench`` per grid folder (it holds the folder's lock), and none while a run folder is still being
trained by another process. Killing ``bench`` (SIGTERM, SIGHUP, Ctrl-C, or even SIGKILL on Linux) stops
its children, which resume from their ``last.pt`` on the next ``bench``; with the submitit launcher,
SIGTERM, SIGHUP and Ctrl-C cancel its jobs, which outlive a SIGKILL (they are the cluster's).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from robust_distill.analysis.launch import Launcher, Started, killed, launcher_problems, make_launcher, signal_name
from robust_distill.analysis.report import build_report
from robust_distill.config import apply_overrides, read_yaml, resolve_config
from robust_distill.engine.processes import pid_alive, signals_raise
from robust_distill.engine.progress import Progress
from robust_distill.errors import ConfigError
from robust_distill.files.atomic import atomic_write_json, atomic_write_text, remove_stale_temp_files
from robust_distill.files.lock import FolderLock, FolderLockedError, lock_holder

__all__ = ["GridRun", "load_grid", "check_grid", "expand_grid", "run_grid"]

GRID_KEYS = {"output_dir", "base", "set", "grid", "exclude", "per_method", "parallel", "threads_per_run",
             "torchrun", "runs", "launcher", "report"}


@dataclass
class GridRun:
    name: str
    raw: dict[str, Any]
    folder: Path

    @property
    def status_file(self) -> Path:
        return self.folder / "status.json"

    def status(self) -> dict[str, Any]:
        """The run's state; ``running`` only while the process that status.json names is alive."""
        if (self.folder / "summary.json").is_file():
            return {"state": "done"}
        try:
            status = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {"state": "pending"}
        if (status.get("state") == "running" and status.get("host", socket.gethostname()) == socket.gethostname()
                and not pid_alive(status.get("pid"))):
            return {**status, "state": "interrupted", "note": f"process {status.get('pid')} is gone"}
        return status


def _set(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``raw`` with ``dotted`` set to ``value``; ``null`` on a top-level key removes it (``teachers: null``)."""
    if value is None and "." not in dotted:
        return {k: v for k, v in raw.items() if k != dotted}
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("..."):
        text = text[:-3].strip()
    return apply_overrides(raw, [f"{dotted}={text}"])


def _slug(value: Any, parts: int = 1) -> str:
    """A value as folder-name text: a checkpoint spec by its file's stem (with ``parts`` > 1, also the names of
    its ``parts - 1`` parent folders), another spec by what follows its last ``:``, a float in 4 digits."""
    text = str(value)
    if isinstance(value, str) and ("/" in text or ":" in text):
        path = text.split(":", 1)[-1]
        if text.endswith(".pt"):
            p = Path(path)
            text = "_".join([*(f.name for f in reversed(list(p.parents)[:parts - 1]) if f.name), p.stem])
        else:
            text = text.split(":")[-1]
        text = text.replace("/", "_")
    elif isinstance(value, float):
        text = f"{value:.4g}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _axis_slugs(axes: Mapping[str, list[Any]]) -> dict[tuple[str, str], str]:
    """Folder-name text for each (key, repr(value)) of the grid's axes: the short :func:`_slug`, unless different
    values of one key share it (the ``best.pt`` of two run folders): then as many parent folders as tell them
    apart. Names of grids without such values are unchanged."""
    out: dict[tuple[str, str], str] = {}
    for key, values in axes.items():
        distinct = list({repr(v): v for v in values}.items())
        for parts in range(1, 64):
            slugs = {r: _slug(v, parts) for r, v in distinct}
            if len(set(slugs.values())) == len(slugs) or parts == 63:
                break
        out.update({(key, r): text for r, text in slugs.items()})
    return out


def run_name(assignment: Mapping[str, Any], slugs: Mapping[tuple[str, str], str] | None = None) -> str:
    """``method=adaad,seed=0,eps=0.1`` style folder names from the varying keys (``slugs``: from
    :func:`_axis_slugs`, to tell apart values that share a short name)."""
    return ",".join(f"{k.split('.')[-1]}={(slugs or {}).get((k, repr(v))) or _slug(v)}" for k, v in assignment.items())


def load_grid(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a grid file (duplicate YAML keys, unknown grid keys and bad values are errors)."""
    p = Path(path)
    grid = read_yaml(p, "grid file") or {}
    if not isinstance(grid, dict):
        raise ConfigError([f"the top level must be a mapping of grid keys ({', '.join(sorted(GRID_KEYS))})."], str(p))
    base = grid.get("base", {})
    if isinstance(base, str):
        base_path = (p.parent / base) if not Path(base).is_absolute() else Path(base)
        if base_path.is_dir() or not base_path.is_file():
            raise ConfigError([f"base: config file {str(base_path)!r} "
                               + ("is a folder." if base_path.is_dir() else "does not exist.")], str(p))
        grid["base"] = read_yaml(base_path, "base config") or {}
    grid.setdefault("output_dir", str(p.with_suffix("")))
    check_grid(grid, str(p))
    return grid


def _positive(grid: Mapping[str, Any], key: str, none_ok: bool) -> str | None:
    value = grid.get(key)
    if (value is None and none_ok) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return f"{key}: must be {'null or ' if none_ok else ''}an integer >= 1, got {value!r}."


def check_grid(grid: Mapping[str, Any], source: str = "grid") -> None:
    """Every problem of a grid's own keys at once (the run configs are checked by :func:`run_grid`)."""
    problems = [f"{k}: unknown grid key; valid keys: {', '.join(sorted(GRID_KEYS))}."
                for k in sorted(set(grid) - GRID_KEYS)]
    problems += [p for p in (_positive(grid, "parallel", True), _positive(grid, "threads_per_run", True),
                             _positive(grid, "torchrun", True)) if p]
    problems += launcher_problems(grid.get("launcher"), grid.get("torchrun"))
    if not isinstance(grid.get("report", False), bool):
        problems.append(f"report: must be true or false, got {grid['report']!r}.")
    out = grid.get("output_dir")
    if not isinstance(out, str) or not out.strip():
        problems.append(f"output_dir: must be a folder name, got {out!r}.")
    for key in ("base", "set", "grid", "per_method"):
        if grid.get(key) is not None and not isinstance(grid[key], Mapping):
            problems.append(f"{key}: must be a mapping, got {grid[key]!r}.")
    for key in ("exclude", "runs"):
        value = grid.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(e, Mapping) for e in value)):
            problems.append(f"{key}: must be a list of mappings (dotted config key: value), got {value!r}.")
    if problems:
        raise ConfigError(problems, source)
    axes = {k: (list(v) if isinstance(v, list) else [v]) for k, v in (grid.get("grid") or {}).items()}  # copies
    for r in grid.get("runs") or []:
        for k, v in r.items():
            axes.setdefault(k, []).append(v)
    for i, ex in enumerate(grid.get("exclude") or []):
        for k, v in ex.items():
            if k not in axes:
                problems.append(f"exclude[{i}].{k}: not a key of the grid, so it would exclude nothing; the grid's "
                                f"keys: {', '.join(axes) or '(none)'}.")
            elif v not in axes[k]:
                problems.append(f"exclude[{i}].{k}: {v!r} is none of the grid's values for {k} "
                                f"({', '.join(map(repr, axes[k]))}), so it would exclude nothing.")
    if problems:
        raise ConfigError(problems, source)


def expand_grid(grid: Mapping[str, Any]) -> list[GridRun]:
    """The runs of a grid: cartesian product, minus exclusions, plus explicit ``runs``."""
    axes: dict[str, list[Any]] = {k: (v if isinstance(v, list) else [v]) for k, v in (grid.get("grid") or {}).items()}
    out_dir = Path(grid["output_dir"])
    assignments = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    assignments += [dict(r) for r in grid.get("runs", []) or []]
    runs: list[GridRun] = []
    seen: set[str] = set()
    every: dict[str, list[Any]] = {}
    for assignment in assignments:
        for k, v in assignment.items():
            every.setdefault(k, []).append(v)
    slugs = _axis_slugs(every)
    for assignment in assignments:
        if any(all(assignment.get(k) == v for k, v in ex.items()) for ex in grid.get("exclude", []) or []):
            continue
        raw = copy.deepcopy(grid.get("base") or {})
        for key, value in {**(grid.get("set") or {}), **assignment}.items():
            raw = _set(raw, key, value)
        for key, value in ((grid.get("per_method") or {}).get(raw.get("method"), {}) or {}).items():
            raw = _set(raw, key, value)
        name = run_name(assignment, slugs)
        if name in seen:
            raise ConfigError([f"two grid runs are both named {name!r}; make their keys differ."], "grid")
        seen.add(name)
        raw["output_dir"] = str(out_dir / name)
        runs.append(GridRun(name, raw, out_dir / name))
    return runs


def run_grid(grid: Mapping[str, Any], regs: Any, *, parallel: int | None = None, dry_run: bool = False,
             log: Any = None, launcher: str | None = None, slots_per_gpu: int | None = None) -> dict[str, Any]:
    """Run every unfinished run of ``grid``; returns ``{run name: final state}``.

    ``parallel``, ``launcher`` and ``slots_per_gpu`` (``bench``'s flags) override the grid file's.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    check_grid(grid)
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1):
        raise ConfigError([f"--parallel: must be an integer >= 1, got {parallel!r}."], "bench")
    runs = expand_grid(grid)
    problems: list[str] = []
    for run in runs:  # validate everything that will run before anything starts (a finished run will not start
        if run.status()["state"] == "done":  # again: its input files may be gone, as on a fresh checkout)
            continue
        try:
            resolve_config(run.raw, regs, source=f"run {run.name}")
        except ConfigError as exc:
            problems += [f"{run.name}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems, "grid")
    out_dir = Path(grid["output_dir"])
    if dry_run:
        chosen = make_launcher(grid, out_dir, parallel=parallel, launcher=launcher, slots_per_gpu=slots_per_gpu,
                               dry_run=True)
        states = {r.name: r.status()["state"] for r in runs}
        done = sum(s == "done" for s in states.values())
        log(f"grid {out_dir}: {len(runs)} runs, {done} finished, {len(runs) - done} to run; {chosen.describe()}")
        return states
    with FolderLock(out_dir, "grid output_dir"):
        remove_stale_temp_files(out_dir)
        for run in runs:  # a previous bench's child still training, or a train started by hand
            holder = lock_holder(run.folder)
            if holder is not None:
                raise FolderLockedError(run.folder, holder, f"run {run.name} of this grid: folder")
        chosen = make_launcher(grid, out_dir, parallel=parallel, launcher=launcher, slots_per_gpu=slots_per_gpu)
        with signals_raise():  # SIGTERM / SIGHUP: the clean-up below stops the children
            states = _run(runs, chosen, out_dir, log)
        if grid.get("report") and "done" in states.values():
            build_report(out_dir)
            log(f"grid {out_dir}: report.md written")
        return states


def _finish(run: GridRun, started: Started, code: int | None, log: Any) -> str:
    """Record how ``run`` ended in its status.json; returns the state (``done`` or ``failed``)."""
    minutes = round((time.time() - started.started) / 60, 2)
    record = {"minutes": minutes, "attempt": started.attempt, **{k: v for k, v in started.info.items() if k != "pid"}}
    if code == 0 and (run.folder / "summary.json").is_file():
        atomic_write_json({"state": "done", **record}, run.status_file)
        log(f"  done    {run.name} ({minutes:.1f} min)")
        return "done"
    log_file = run.folder / "train.log"  # absent when a job never ran (cancelled while queued, a lost node)
    tail = log_file.read_text(errors="replace").strip().splitlines()[-12:] if log_file.is_file() else []
    error = "\n".join(line for line in [*tail, started.info.get("error", "")] if line.strip())
    atomic_write_json({"state": "failed", "returncode": code, **record, "error": error}, run.status_file)
    log(f"  FAILED  {run.name} ({signal_name(code)}); see {run.folder / 'train.log'}")
    return "failed"


def _run(runs: list[GridRun], launcher: Launcher, out_dir: Path, log: Any) -> dict[str, Any]:
    """Start runs while the launcher has room, record each as it ends, start a killed one again."""
    todo = [r for r in runs if r.status()["state"] != "done"]
    log(f"grid {out_dir}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run; "
        f"{launcher.describe()}")
    queue = [(run, 1) for run in todo]
    active: list[tuple[GridRun, Started]] = []
    counts = {"done": 0, "failed": 0}
    progress = Progress(len(todo), f"grid {out_dir}", unit="run", items_unit="run")
    try:
        while queue or active:
            while queue and launcher.has_room():
                run, attempt = queue.pop(0)
                run.folder.mkdir(parents=True, exist_ok=True)
                atomic_write_text(yaml.safe_dump(run.raw, sort_keys=False), run.folder / "run.yaml")
                started = launcher.start(run.folder, attempt)
                active.append((run, started))
                where = "".join(f", {k} {v}" for k, v in started.info.items() if k in ("gpu", "job_id"))
                log(f"  started {run.name}" + (f" (attempt {attempt})" if attempt > 1 else "") + where)
            time.sleep(0.5)
            progress.update(0, stats={**counts, "running": len(active)})  # a line when one is due
            for item in list(active):
                run, started = item
                ended, code = launcher.poll(started)
                if not ended:
                    continue
                active.remove(item)
                launcher.release(started)
                if (killed(code) and started.attempt <= launcher.resubmit
                        and not (run.folder / "summary.json").is_file()):
                    log(f"  killed  {run.name} ({signal_name(code)}): starting it again, from its last.pt")
                    queue.insert(0, (run, started.attempt + 1))
                    continue
                counts[_finish(run, started, code, log)] += 1
                progress.update(1, items=1, stats={**counts, "running": len(active)})
    finally:
        progress.close()
        launcher.stop([started for _, started in active])
        for run, started in active:
            atomic_write_json({"state": "interrupted", "attempt": started.attempt}, run.status_file)
    states = {r.name: r.status()["state"] for r in runs}
    atomic_write_json(states, out_dir / "grid_status.json")
    failed = [n for n, s in states.items() if s == "failed"]
    log(f"grid {out_dir}: {sum(s == 'done' for s in states.values())}/{len(runs)} done"
        + (f", failed: {', '.join(failed)}" if failed else ""))
    return states
