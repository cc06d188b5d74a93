"""``robust-distill report RESULTS_DIR``: tables (Markdown, CSV) and plots from finished runs.

Runs are grouped by every config key that varies across them except the seed; each group is one table
row with mean +- std over its seeds, for the best checkpoint (selected on ``eval.split`` by
``eval.select``) and the last one. When runs have final test evaluations (``eval.final_attacks``) those
are the table's columns, as in the papers (Clean / FGSM / PGD-20 / CW-inf / AutoAttack).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from robust_distill import _moved
from robust_distill.files.atomic import atomic_write_text
from robust_distill.results.plots import plot_accuracy_vs_eps, plot_clean_vs_robust, plot_curves
from robust_distill.results.runs import (
    ATTACK_TITLES,
    Group,
    RunResult,
    group_runs,
    load_runs,
    short_label,
)

__all__ = ["RunResult", "load_runs", "build_report", "spearman", "select_runs"]
__getattr__ = _moved.old_names(__name__)  # the names of 0.1 that moved, for one release

# The robust column of a report (best - last gap, plots, teacher correlation): the strongest attack present.
ROBUST_ORDER = ("autoattack", "autoattack_apgd", "apgd_ce", "pgd20", "cw_inf", "pgd20_trades", "pgd10", "fgsm")


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
    from scipy.stats import spearmanr  # scipy: optional (the test extra), slow to import

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _attacks(runs: list[RunResult]) -> list[str]:
    finals = [a for r in runs for a in r.config["eval"].get("final_attacks", [])]
    if finals:
        return list(dict.fromkeys(finals))
    return list(dict.fromkeys(a for r in runs for a in r.config["eval"]["attacks"]))


def select_runs(runs: list[RunResult], where: Mapping[str, Sequence[str]]) -> list[RunResult]:
    """Runs whose flattened config value at each key of ``where`` is one of the given (string) values."""
    def keep(r: RunResult) -> bool:
        flat = r.flat
        return all(str(flat.get(k)) in {str(v) for v in values} or short_label(flat.get(k)) in values
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
