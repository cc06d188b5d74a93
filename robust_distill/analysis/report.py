"""``robust-distill report RESULTS_DIR``: tables (Markdown, CSV) and plots from finished runs.

Runs are grouped by every config key that varies across them except the seed; each group is one table
row with mean +- std over its seeds, for the best checkpoint (selected on ``eval.split`` by
``eval.select``) and the last one. When runs have final test evaluations (``eval.final_attacks``) those
are the table's columns, as in the papers (Clean / FGSM / PGD-20 / CW-inf / AutoAttack).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._io import CorruptFileError, atomic_write_text, read_json, read_jsonl

__all__ = ["RunResult", "load_runs", "build_report", "spearman"]

IGNORED = {"seed", "output_dir"}
ATTACK_TITLES = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "pgd20_trades": "PGD-20 (0.003)",
                 "pgd10": "PGD-10", "cw_inf": "CW-inf", "autoattack": "AutoAttack",
                 "autoattack_apgd": "AA (APGD-CE+T)", "autoattack_fast": "AA-fast", "apgd_ce": "APGD-CE"}
# The robust column of a report (best - last gap, plots, teacher correlation): the strongest attack present.
ROBUST_ORDER = ("autoattack", "autoattack_apgd", "apgd_ce", "pgd20", "cw_inf", "pgd20_trades", "pgd10", "fgsm")


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


def _label(value: Any) -> str:
    text = str(value)
    if text.startswith("checkpoint:"):
        path = Path(text.split(":", 1)[1])
        return f"{path.parent.name}/{path.stem}"
    return text.split(":", 1)[1] if text.startswith(("timm:", "robustbench:")) else text


def _mean_std(values: Iterable[float | None]) -> tuple[float, float, int] | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def _fmt(ms: tuple[float, float, int] | None) -> str:
    if ms is None:
        return "-"
    mean, std, n = ms
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n > 1 else f"{100 * mean:.2f}"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``: average ranks for ties); NaN when either
    side is constant (no ranking to correlate)."""
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


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
            groups[key] = Group(key, {k: _label(flat.get(k)) for k in keys}, [])
        groups[key].runs.append(r)
    return keys, list(groups.values())


def _attacks(runs: list[RunResult]) -> list[str]:
    finals = [a for r in runs for a in r.config["eval"].get("final_attacks", [])]
    if finals:
        return list(dict.fromkeys(finals))
    return list(dict.fromkeys(a for r in runs for a in r.config["eval"]["attacks"]))


def select_runs(runs: list[RunResult], where: Mapping[str, Sequence[str]]) -> list[RunResult]:
    """Runs whose flattened config value at each key of ``where`` is one of the given (string) values."""
    def keep(r: RunResult) -> bool:
        flat = r.flat
        return all(str(flat.get(k)) in {str(v) for v in values} or _label(flat.get(k)) in values
                   for k, values in where.items())
    return [r for r in runs if keep(r)]


def build_report(root: str | Path | Sequence[str | Path], out: str | Path | None = None,
                 teacher_scores: Mapping[str, Any] | None = None, plots: bool = True,
                 where: Mapping[str, Sequence[str]] | None = None, title: str | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.csv``, ``runs.csv`` and PNG plots into ``out`` (default: ``root``).

    ``root`` may be several folders; ``where`` keeps only the runs matching ``{config key: [values]}``.
    """
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    runs = [r for folder in roots for r in load_runs(folder)]
    if where:
        runs = select_runs(runs, where)
    if not runs:
        raise FileNotFoundError(f"No runs under {', '.join(map(str, roots))} (folders with config.yaml and "
                                "metrics.jsonl)" + (f" matching {dict(where)}" if where else "") + ".")
    root = title or ", ".join(map(str, roots))
    out = Path(out or roots[0])
    out.mkdir(parents=True, exist_ok=True)
    keys, groups = group_runs(runs)
    attacks = _attacks(runs)
    robust = next((a for a in ROBUST_ORDER if a in attacks), attacks[-1])
    headers = [k.replace("teachers.", "teacher ").replace(".key", "") for k in keys] + ["seeds"]
    headers += [f"{ATTACK_TITLES.get(a, a)} (best)" for a in attacks]
    headers += [f"{ATTACK_TITLES.get(robust, robust)} (last)", "best - last", "best epoch"]
    table_rows, csv_rows = [], []
    for g in groups:
        cells = [g.labels[k] for k in keys] + [str(len(g.runs))]
        record: dict[str, Any] = {**g.labels, "seeds": len(g.runs)}
        for a in attacks:
            ms = _mean_std(r.metric(a, "best") for r in g.runs)
            cells.append(_fmt(ms))
            record[f"{a}_best_mean"], record[f"{a}_best_std"] = (ms[0], ms[1]) if ms else (None, None)
        last = _mean_std(r.metric(robust, "last") for r in g.runs)
        gap = _mean_std((b - la) if (b := r.metric(robust, "best")) is not None and
                        (la := r.metric(robust, "last")) is not None else None for r in g.runs)
        epochs = [r.best_row.get("epoch") for r in g.runs if r.best_row]
        cells += [_fmt(last), _fmt(gap), ", ".join(str(e + 1) for e in epochs)]
        record.update({f"{robust}_last_mean": last[0] if last else None, "gap_mean": gap[0] if gap else None})
        table_rows.append(cells)
        csv_rows.append(record)

    columns = ("test-set columns from eval.final_attacks" if any(r.summary.get("final") for r in runs)
               else "validation columns")
    md = [f"# Report: {root}", "",
          f"{len(runs)} runs in {len(groups)} settings; mean ± std over seeds, accuracy in %. "
          f"'best' = checkpoint selected on {runs[0].config['eval']['split']} by "
          f"{runs[0].config['eval']['select']}; {columns}; 'best - last' is the robust-overfitting gap.", "",
          "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    md += ["| " + " | ".join(c) + " |" for c in table_rows]

    correlation = None
    if teacher_scores is not None:
        correlation = _teacher_correlation(groups, keys, teacher_scores, robust)
        md += ["", "## Teacher entropy on the robustly unlearnable set vs student robustness", ""] + correlation["md"]

    atomic_write_text("\n".join(md) + "\n", out / "report.md")
    _write_csv(csv_rows, out / "report.csv")
    _write_csv([{"run": str(r.folder), **{k: r.flat.get(k) for k in keys}, "seed": r.config.get("seed"),
                 **{f"{a}_{w}": r.metric(a, w) for a in attacks for w in ("best", "last")}} for r in runs],
               out / "runs.csv")
    files = [out / "report.md", out / "report.csv", out / "runs.csv"]
    if plots:
        from .plots import plot_accuracy_vs_eps, plot_clean_vs_robust, plot_curves
        files += [plot_curves(groups, out / "curves.png")]
        eps_plot = plot_accuracy_vs_eps(groups, keys, robust, out / "accuracy_vs_eps.png")
        files += [eps_plot] if eps_plot else []
        files += [plot_clean_vs_robust(groups, robust, out / "clean_vs_robust.png")]
    return {"markdown": "\n".join(md), "groups": len(groups), "runs": len(runs), "files": [str(f) for f in files],
            "correlation": correlation}


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


def _teacher_correlation(groups: list[Group], keys: list[str], scores: Mapping[str, Any],
                         robust: str) -> dict[str, Any]:
    """Spearman correlation, per method, between each teacher's entropy on S_U and its student's accuracy."""
    teacher_keys = [k for k in keys if k.startswith("teachers.") and k.endswith(".key")]
    by_teacher = {s["teacher"]: s for s in scores.get("teachers", [])}
    md, results = [], []
    others = [k for k in keys if k not in teacher_keys]
    buckets: dict[tuple[str, ...], list[tuple[float, float, float, str]]] = {}
    for g in groups:
        for r in g.runs:
            teacher = next((r.flat.get(k) for k in teacher_keys if r.flat.get(k) in by_teacher), None)
            if teacher is None:
                continue
            bucket = tuple(g.labels[k] for k in others)
            best, last = r.metric(robust, "best"), r.metric(robust, "last")
            if best is not None:
                buckets.setdefault(bucket, []).append(
                    (by_teacher[teacher]["unlearnable"]["entropy"], best, last if last is not None else best,
                     teacher))
    md += [f"Student accuracy: {ATTACK_TITLES.get(robust, robust)}, mean over seeds per teacher.", "",
           "| setting | teachers | Spearman (entropy, best) | Spearman (entropy, last) |", "|---|---|---|---|"]
    for bucket, items in buckets.items():
        per_teacher: dict[str, list[tuple[float, float, float]]] = {}
        for ent, best, last, teacher in items:
            per_teacher.setdefault(teacher, []).append((ent, best, last))
        if len(per_teacher) < 2:
            continue
        ents = [v[0][0] for v in per_teacher.values()]
        bests = [statistics.fmean(x[1] for x in v) for v in per_teacher.values()]
        lasts = [statistics.fmean(x[2] for x in v) for v in per_teacher.values()]
        rho_b, rho_l = spearman(ents, bests), spearman(ents, lasts)
        label = ", ".join(bucket) or "all"
        md.append(f"| {label} | {len(per_teacher)} | {rho_b:+.2f} | {rho_l:+.2f} |")
        results.append({"setting": label, "teachers": list(per_teacher), "entropy_su": ents,
                        "student_best": bests, "student_last": lasts, "spearman_best": rho_b,
                        "spearman_last": rho_l})
    return {"md": md, "results": results}
