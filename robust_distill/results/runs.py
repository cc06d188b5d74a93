"""Run folders read back: a run's resolved config, per-epoch metrics and summary (:class:`RunResult`), and
runs grouped by the config keys that vary between them (:func:`group_runs`), seeds pooled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robust_distill.errors import CorruptFileError
from robust_distill.files.atomic import read_json, read_jsonl

__all__ = ["RunResult", "Group", "load_runs", "group_runs", "varying_keys", "short_label", "ATTACK_TITLES"]

IGNORED = {"seed", "output_dir"}
ATTACK_TITLES = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "pgd20_trades": "PGD-20 (0.003)",
                 "pgd10": "PGD-10", "cw_inf": "CW-inf", "autoattack": "AutoAttack",
                 "autoattack_apgd": "AA (APGD-CE+T)", "autoattack_fast": "AA-fast", "apgd_ce": "APGD-CE"}
def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and k not in ("kwargs", "options"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, (Mapping, list)) else v
    return out


@dataclass
class RunResult:
    """One finished (or partial) run: its resolved config, per-epoch metrics and summary."""

    folder: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def flat(self) -> dict[str, Any]:
        return _flatten(self.config)

    @property
    def select(self) -> str:
        ev = self.config["eval"]
        return f"{ev['split']}_{ev['select']}"

    @property
    def best_row(self) -> dict[str, Any]:
        if self.summary.get("best_epoch") is not None:
            for r in self.rows:
                if r["epoch"] == self.summary["best_epoch"]:
                    return r
        evaluated = [r for r in self.rows if self.select in r]
        return max(evaluated, key=lambda r: r[self.select]) if evaluated else {}

    @property
    def last_row(self) -> dict[str, Any]:
        evaluated = [r for r in self.rows if self.select in r]
        return evaluated[-1] if evaluated else {}

    def metric(self, attack: str, which: str) -> float | None:
        """Test accuracy under ``attack`` of the ``best``/``last`` checkpoint (validation if no final eval)."""
        final = self.summary.get("final", {}).get(which, {})
        if attack in final:
            return final[attack]
        row = self.best_row if which == "best" else self.last_row
        return row.get(f"{self.config['eval']['split']}_{attack}")


def load_runs(root: str | Path) -> list[RunResult]:
    """Every run folder under ``root`` (a folder with ``config.yaml`` and ``metrics.jsonl``)."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"results folder {str(root)!r} " + ("is a file, not a folder." if Path(root).exists()
                                                                    else "does not exist."))
    runs = []
    for cfg_path in sorted(Path(root).rglob("config.yaml")):
        folder = cfg_path.parent
        metrics = folder / "metrics.jsonl"
        if not metrics.is_file():
            continue
        rows = read_jsonl(metrics, "metrics file")
        summary_path = folder / "summary.json"
        summary = read_json(summary_path, "run summary") if summary_path.is_file() else {}
        try:
            config = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError as exc:
            raise CorruptFileError(f"run config {str(cfg_path)!r} is not valid YAML ({exc}).") from None
        if not isinstance(config, Mapping) or not isinstance(config.get("eval"), Mapping):
            raise CorruptFileError(f"run config {str(cfg_path)!r} is not a robust-distill config.yaml.")
        runs.append(RunResult(folder, config, rows, summary))
    return runs


def varying_keys(runs: list[RunResult]) -> list[str]:
    """Config keys that differ between runs, minus the seed and the keys a method's defaults imply."""
    flats = [r.flat for r in runs]
    value = lambda f, k: json.dumps(f.get(k), sort_keys=True, default=str)  # noqa: E731
    keys = sorted({k for f in flats for k in f} - IGNORED)
    keys = [k for k in keys if len({value(f, k) for f in flats}) > 1]
    if "method" in keys:  # parts and defaults that come with the method are not settings of their own
        implied = [k for k in keys if k != "method" and all(
            len({value(f, k) for f in flats if f.get("method") == m}) == 1 for m in {f.get("method") for f in flats})]
        keys = ["method"] + [k for k in keys if k != "method" and k not in implied]
    return keys


def short_label(value: Any) -> str:
    text = str(value)
    if text.startswith("checkpoint:"):
        path = Path(text.split(":", 1)[1])
        return f"{path.parent.name}/{path.stem}"
    return text.split(":", 1)[1] if text.startswith(("timm:", "robustbench:")) else text


@dataclass
class Group:
    key: tuple[Any, ...]
    labels: dict[str, str]
    runs: list[RunResult]


def group_runs(runs: list[RunResult]) -> tuple[list[str], list[Group]]:
    keys = varying_keys(runs)
    groups: dict[tuple[Any, ...], Group] = {}
    for r in runs:
        flat = r.flat
        key = tuple(json.dumps(flat.get(k), sort_keys=True, default=str) for k in keys)
        if key not in groups:
            groups[key] = Group(key, {k: short_label(flat.get(k)) for k in keys}, [])
        groups[key].runs.append(r)
    return keys, list(groups.values())
