"""The specialization report of a teacher-student pair, as numbers (JSON) and plots (PNG).

Combines the node-level measures of :mod:`robust_distill.analysis` (NC, BNC, MBNC, the
unspecialized/specialized ratio) with the lowest layer's in-/out-of-subspace errors of
:mod:`robust_distill.analysis.subspace` and, optionally, the student's robustness with respect to the oracle
teacher. Used by ``robust-distill specialization`` and by ``benchmarks/specialization/claims.py``; the
plot functions take several students at once (the paper's figures compare training settings and epochs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robust_distill.analysis.specialization import specialization
from robust_distill.analysis.subspace import InputSubspace, epsilon_analysis, node_weights, oracle_robustness, pearson
from robust_distill.files.atomic import atomic_write_json
from robust_distill.results.plots import _plt, _save

__all__ = ["specialization_report", "write_report", "plot_input_spectrum", "plot_epsilon_vs_nc",
           "plot_epsilon_curves", "plot_bnc_layers"]


def specialization_report(teacher: nn.Module, student: nn.Module, pairs: Sequence[tuple[str, str]], x: Tensor, *,
                          subspace: InputSubspace | None = None,
                          first_conv: tuple[str | None, str | None] = (None, None),
                          robustness: Mapping[str, Any] | None = None, batch_size: int = 256,
                          device: str | torch.device = "cpu", thresholds: tuple[float, float] = (0.8, 0.9)
                          ) -> dict[str, Any]:
    """Everything the paper measures on one teacher-student pair, on the inputs ``x``.

    ``pairs``: (teacher layer, student layer) module names whose outputs are the nodes; with a ``subspace``
    the first pair must be the lowest layer (its NC matrix pairs the nodes for epsilon_in / epsilon_out of
    the convolutions ``first_conv``, default each network's first ``nn.Conv2d``). ``robustness``: keyword
    arguments of :func:`~robust_distill.analysis.subspace.oracle_robustness` (``eps``, ``step_size``,
    ``steps``) to add the student's agreement with the teacher under oracle attacks.
    """
    stats = specialization(teacher, student, pairs, x, batch_size=batch_size, device=device,
                           unspecialized_below=thresholds[0], specialized_above=thresholds[1])
    out: dict[str, Any] = {
        "n_examples": int(x.shape[0]), "thresholds": list(thresholds),
        "layers": [{"teacher_layer": s.teacher_layer, "student_layer": s.student_layer, "nodes": len(s.bnc),
                    "bnc": s.bnc, "mbnc": s.mbnc, "unspecialized": s.unspecialized, "specialized": s.specialized,
                    "ratio": s.ratio if math.isfinite(s.ratio) else None} for s in stats]}
    if subspace is not None:
        eps = epsilon_analysis(node_weights(student, first_conv[1]), node_weights(teacher, first_conv[0]), subspace,
                               stats[0].rho)  # type: ignore[arg-type]
        out["epsilon"] = {**eps.summary(), "layer": f"{pairs[0][0]} ~ {pairs[0][1]}"}
        out["subspace"] = {"k": subspace.k, "dim": subspace.dim, "explained_variance": subspace.explained,
                           "eigenvalues": subspace.eigenvalues.tolist(), "kernel_size": list(subspace.kernel_size),
                           "stride": list(subspace.stride), "padding": list(subspace.padding)}
        out["_matrices"] = {"rho": eps.rho, "eps_in": eps.eps_in, "eps_out": eps.eps_out}
    if robustness:
        out["robustness"] = oracle_robustness(student, teacher, x, subspace=subspace, device=device,
                                              **dict(robustness))
    return out


def write_report(report: Mapping[str, Any], out: str | Path, *, title: str = "") -> list[Path]:
    """``specialization.json`` and the plots of one pair in the folder ``out``; returns the files."""
    out = Path(out)
    files = [out / "specialization.json"]
    atomic_write_json({k: v for k, v in report.items() if not k.startswith("_")}, files[0])
    layers = {f"{s['teacher_layer']} ~ {s['student_layer']}": s["bnc"] for s in report["layers"]}
    files.append(plot_bnc_layers({title or "student": layers}, out / "sorted_bnc.png", title=title))
    if "epsilon" in report:
        eps, sub, mats = report["epsilon"], report["subspace"], report["_matrices"]
        files.append(plot_input_spectrum(sub["eigenvalues"], sub["k"], out / "input_spectrum.png"))
        files.append(plot_epsilon_vs_nc(mats["rho"], mats["eps_in"], mats["eps_out"], out / "epsilon_vs_nc.png",
                                        title=title))
        files.append(plot_epsilon_curves({title or "student": (eps["curve_eps_in"], eps["curve_eps_out"])},
                                         out / "epsilon_curves.png", title=title))
    return files


# -------------------------------------------------------------------------------------------------
# Plots
# -------------------------------------------------------------------------------------------------


def _style(styles: Mapping[str, Mapping[str, Any]] | None, label: str, i: int) -> dict[str, Any]:
    return {"color": f"C{i % 10}", **dict((styles or {}).get(label, {}))}


def plot_input_spectrum(eigenvalues: Sequence[float], k: int, path: Path) -> Path:
    """Variance along each principal direction of the input patches, log scale, and the chosen ``k``
    (Fig. 2, left)."""
    plt = _plt()
    ev = torch.tensor(list(eigenvalues), dtype=torch.float64)
    frac = (ev / ev.sum()).tolist()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.semilogy(range(1, len(frac) + 1), frac, marker="o", markersize=3)
    ax.axvline(k + 0.5, color="grey", linestyle="--", linewidth=1)
    kept = float(ev[:k].sum() / ev.sum())
    ax.text(k + 0.7, max(frac) / 3, f"k = {k}: {100 * kept:.1f}% of the variance", fontsize=8)
    ax.set_xlabel("principal direction of the lowest layer's input patches")
    ax.set_ylabel("fraction of the variance")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_epsilon_vs_nc(rho: Tensor, eps_in: Tensor, eps_out: Tensor, path: Path, title: str = "") -> Path:
    """Every (student node, teacher node) pair of the lowest layer: NC against epsilon_in and epsilon_out,
    with Pearson's correlation (Fig. 2, right)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, eps, name in ((axes[0], eps_in, "epsilon_in"), (axes[1], eps_out, "epsilon_out")):
        ax.scatter(eps.flatten().tolist(), rho.flatten().tolist(), s=4, alpha=0.4)
        ax.set_xlabel(name)
        ax.set_title(f"Pearson r = {pearson(rho, eps):.3f}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("normalized correlation (NC)")
    fig.suptitle(title or "lowest layer: every student-teacher node pair", fontsize=9)
    return _save(fig, path)


def plot_epsilon_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, title: str = "",
                        styles: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Sorted epsilon_in and epsilon_out of each teacher node and its best-NC student node, one line per
    student (Fig. 4, 7, 9, 10: a lower curve is a better specialized student)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for i, (label, (cin, cout)) in enumerate(curves.items()):
        for ax, values in ((axes[0], cin), (axes[1], cout)):
            vals = sorted(values)
            ax.plot([j / max(len(vals) - 1, 1) for j in range(len(vals))], vals, label=label,
                    **_style(styles, label, i))
    for ax, name in ((axes[0], "epsilon_in (inside the input subspace)"),
                     (axes[1], "epsilon_out (outside the input subspace)")):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("teacher nodes, sorted (fraction)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("distance of normalized weights")
    axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_bnc_layers(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Path, title: str = "",
                    styles: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Sorted BNC curves, one panel per layer, one line per student (Fig. 3, 8: higher is better)."""
    plt = _plt()
    layers = list(dict.fromkeys(layer for per in curves.values() for layer in per))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers) + 1, 3.6), sharey=True, squeeze=False)
    for li, layer in enumerate(layers):
        ax = axes[0][li]
        for i, (label, per) in enumerate(curves.items()):
            if layer in per:
                vals = sorted(per[layer], reverse=True)
                ax.plot([j / max(len(vals) - 1, 1) for j in range(len(vals))], vals, label=label,
                        **_style(styles, label, i))
        ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
        ax.axhline(0.8, color="grey", linestyle="--", linewidth=1)
        ax.set_title(layer, fontsize=8)
        ax.set_xlabel("teacher nodes, sorted (fraction)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best normalized correlation (BNC)")
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
