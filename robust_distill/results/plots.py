"""PNG plots for a run's curves, ``report`` and ``specialization`` (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_distill.files.atomic import atomic_write
from robust_distill.results.runs import ATTACK_TITLES

if TYPE_CHECKING:
    from robust_distill.results.runs import Group

__all__ = ["plot_curves", "plot_accuracy_vs_eps", "plot_clean_vs_robust", "plot_sorted_bnc"]


def _plt() -> Any:
    """matplotlib, imported when a plot is drawn: an optional dependency, and slow to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def _attack_title(attack: str) -> str:
    return ATTACK_TITLES.get(attack, attack)


def _title(g: Group) -> str:
    return ", ".join(f"{v}" for v in g.labels.values()) or "all runs"


def plot_curves(groups: Sequence[Group], path: Path) -> Path:
    """Validation clean (dashed) and robust (solid) accuracy per epoch, one panel per setting."""
    plt = _plt()
    n = len(groups)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.2 * cols, 6.4), 3.0 * rows + 0.4), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, g in zip(axes.flat, groups, strict=False):
        for i, r in enumerate(g.runs):
            split, select = r.config["eval"]["split"], r.config["eval"]["select"]
            pts = [(row["epoch"] + 1, row[f"{split}_{select}"], row.get(f"{split}_clean")) for row in r.rows
                   if f"{split}_{select}" in row]
            if not pts:
                continue
            color = f"C{i}"
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=color,
                    label=f"seed {r.config['seed']}: {_attack_title(select)}")
            if pts[0][2] is not None:
                ax.plot([p[0] for p in pts], [100 * p[2] for p in pts], color=color, linestyle="--",
                        label=f"seed {r.config['seed']}: clean")
            best = r.best_row
            if best:
                ax.scatter([best["epoch"] + 1], [100 * best[f"{split}_{select}"]], color=color, marker="*", s=60)
        if g.labels:
            ax.set_title(_title(g), fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        if i + cols >= n:  # the lowest panel of its column
            ax.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7)
    split = groups[0].runs[0].config["eval"]["split"] if groups and groups[0].runs else "val"
    fig.suptitle(f"Accuracy per epoch on the {'validation' if split == 'val' else split} split: robust solid, "
                 "clean dashed\n* = the selected checkpoint (its gap to the last epoch is robust overfitting)",
                 fontsize=9)
    return _save(fig, path)


def plot_accuracy_vs_eps(groups: Sequence[Group], keys: Sequence[str], robust: str, path: Path) -> Path | None:
    """Clean and robust accuracy against the training epsilon, one line per remaining setting."""
    eps_key = next((k for k in keys if k in ("threat.eps", "eval.eps")), None)
    if eps_key is None:
        return None
    series: dict[str, list[tuple[float, float, float]]] = {}
    for g in groups:
        label = ", ".join(v for k, v in g.labels.items() if k != eps_key)
        eps = float(g.labels[eps_key])
        clean = [v for r in g.runs if (v := r.metric("clean", "best")) is not None]
        rob = [v for r in g.runs if (v := r.metric(robust, "best")) is not None]
        if clean and rob:
            series.setdefault(label, []).append((eps, statistics.fmean(clean), statistics.fmean(rob)))
    plt = _plt()
    fig, (ax_c, ax_r) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for i, (label, pts) in enumerate(sorted(series.items())):
        pts.sort()
        ax_c.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", color=f"C{i}", label=label)
        ax_r.plot([p[0] for p in pts], [100 * p[2] for p in pts], marker="o", color=f"C{i}", label=label)
    ax_c.set_title("clean accuracy (%)")
    ax_r.set_title(f"{_attack_title(robust)} accuracy (%)")
    for ax in (ax_c, ax_r):
        ax.set_xlabel(f"{eps_key} (inner maximisation radius)" if eps_key == "threat.eps" else eps_key)
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=7)
    return _save(fig, path)


def plot_clean_vs_robust(groups: Sequence[Group], robust: str, path: Path) -> Path:
    """Each setting's mean clean accuracy against its mean robust accuracy (best checkpoints)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    points = []
    for i, g in enumerate(groups):
        clean = [v for r in g.runs if (v := r.metric("clean", "best")) is not None]
        rob = [v for r in g.runs if (v := r.metric(robust, "best")) is not None]
        if clean and rob:
            point = (100 * statistics.fmean(clean), 100 * statistics.fmean(rob))
            ax.scatter(*point, color=f"C{i % 10}", marker="os^Dv<>"[i // 10 % 7])
            points.append((point, _title(g), f"C{i % 10}"))
    _label_points(ax, points)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"{_attack_title(robust)} accuracy (%)")
    ax.set_title("Each setting's best checkpoint (mean over seeds): up and right is better", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _label_points(ax: Any, points: list[tuple[tuple[float, float], str, str]]) -> None:
    """A label beside each point; labels that would overlap an earlier one move down a line at a time."""
    if not points:
        return
    xs, ys = [p[0][0] for p in points], [p[0][1] for p in points]
    dx, dy = 0.09 * (max(xs) - min(xs) or 1), 0.035 * (max(ys) - min(ys) or 1)
    placed: list[tuple[float, float]] = []
    for (x, y), label, color in sorted(points, key=lambda p: -p[0][1]):
        shift = 0
        while any(abs(x - px) < dx and abs(y - shift * dy - py) < dy for px, py in placed):
            shift += 1
        placed.append((x, y - shift * dy))
        ax.annotate(label, (x, y), xytext=(4, 3 - 9 * shift), textcoords="offset points", fontsize=7, color=color,
                    arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5} if shift else None)


def plot_sorted_bnc(curves: dict[str, Sequence[float]], path: Path, title: str = "") -> Path:
    """Sorted best-normalized-correlation curves, one per layer (Sec. 5 of the specialization paper)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (layer, values) in enumerate(curves.items()):
        vals = sorted(values, reverse=True)
        ax.plot([j / max(len(vals) - 1, 1) for j in range(len(vals))], vals, color=f"C{i}", label=layer)
    ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.8, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("teacher nodes, sorted (fraction)")
    ax.set_ylabel("best normalized correlation")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)
