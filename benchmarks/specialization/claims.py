"""Test the specialization paper's claims on the Fashion-MNIST reproduction; write claims.md, tables, plots, JSON.

    python benchmarks/specialization/claims.py [benchmarks/results/specialization]

Yang et al., AISTATS 2021, "Understanding Robustness in Teacher-Student Setting: A New Perspective". For every
student kept by run_all.sh (epoch_N.pt of each run) this measures, against the pruned oracle teacher:

* specialization: BNC / MBNC / unspecialized-specialized ratio of the four conv layers (post-ReLU nodes, on the
  first 500 test images), and epsilon_in / epsilon_out of the lowest layer in the top-k PCA subspace of its 5x5
  input patches (k holding 99% of the patch variance of the first 5000 training images);
* robustness w.r.t. the oracle at eps 0.1 (PGD-20, step 0.025): ``oracle`` (Eq. 3, ||S(x') - T(x')||^2 through
  both networks, two restarts, robust if the student agrees with T(x') at both), ``oracle_in`` / ``oracle_out``
  (only the restart closer to / farther from the input subspace: Table 2's in-plane / out-of-plane attacks),
  ``data`` (Eq. 4: CE to T(x) through the student only) and ``clean`` agreement.

Each student's numbers are cached in ``analysis/<run>/epoch_<N>.json`` (delete to recompute).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robust_distill.analysis.report import spearman
from robust_distill.analysis.specialization_report import (
    plot_bnc_layers,
    plot_epsilon_curves,
    plot_epsilon_vs_nc,
    plot_input_spectrum,
    specialization_report,
)
from robust_distill.analysis.subspace import InputSubspace, first_layer, fit_input_subspace
from robust_distill.core.manager import get_registries
from robust_distill.files.atomic import atomic_write_json, atomic_write_text
from robust_distill.files.checkpoint import build_from_checkpoint

N_EXAMPLES = 500
PCA_IMAGES = 5000
EPS, STEP, STEPS = 0.1, 0.025, 20
PAIRS = [(f"acts.{i}", f"acts.{i}") for i in range(4)]
LAYERS = [f"{t} ~ {s}" for t, s in PAIRS]
RUNS = {"st_logit": "ST (logit)", "st_label": "ST (label)", "st_gaussian": "ST (logit) + Gaussian",
        "at": "AT", "inplane_at": "in-plane AT", "outplane_at": "out-of-plane AT"}
FIG2 = "st_logit"  # Fig. 2 (right): the last kept student of standard training with logits


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


# -------------------------------------------------------------------------------------------------
# Measurements
# -------------------------------------------------------------------------------------------------


def analyse(root: Path) -> tuple[dict[str, dict[int, dict[str, Any]]], InputSubspace]:
    regs = get_registries()
    torch.set_num_threads(1)
    teacher, _ = build_from_checkpoint(root / "teacher" / "pruned.pt", regs)
    bundle = regs.datasets.get("fashion_mnist").load()
    x = bundle.test_x[:N_EXAMPLES]
    sub_path = root / "input_subspace.pt"
    if sub_path.is_file():
        subspace = InputSubspace.load(sub_path)
    else:
        subspace = fit_input_subspace(bundle.train_x[:PCA_IMAGES], first_layer(teacher)[1], explained_variance=0.99)
        subspace.save(sub_path)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for run in RUNS:
        for ckpt in sorted((root / run).glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1])):
            epoch = int(ckpt.stem.split("_")[1])
            cache = root / "analysis" / run / f"epoch_{epoch}.json"
            if not cache.is_file():
                t0 = time.process_time()
                student, _ = build_from_checkpoint(ckpt, regs)
                rep = specialization_report(teacher, student, PAIRS, x, subspace=subspace,
                                            robustness={"eps": EPS, "step_size": STEP, "steps": STEPS})
                mats = rep.pop("_matrices")
                if run == FIG2:
                    rep["matrices"] = {k: [[round(v, 5) for v in row] for row in m.tolist()] for k, m in mats.items()}
                rep["cpu_seconds"] = round(time.process_time() - t0, 1)
                atomic_write_json(rep, cache)
                print(f"analysed {run} epoch {epoch} ({rep['cpu_seconds']} CPU s)", file=sys.stderr, flush=True)
            out.setdefault(run, {})[epoch] = json.loads(cache.read_text())
    return out, subspace


def batch_subspace_agreement(sub: InputSubspace, batch: int = 128) -> dict[str, float]:
    """How far the subspace fitted on one batch (the attacks' default) is from the one fitted on PCA_IMAGES
    training images: the cosines of the principal angles between the two k-dimensional subspaces."""
    x = get_registries().datasets.get("fashion_mnist").load().test_x[:batch]
    small = fit_input_subspace(x, kernel_size=sub.kernel_size, stride=sub.stride, padding=sub.padding, k=sub.k)
    cosines = torch.linalg.svdvals(small.basis.double().T @ sub.basis.double())
    k99 = fit_input_subspace(x, kernel_size=sub.kernel_size, stride=sub.stride, padding=sub.padding).k
    return {"batch": batch, "min_cos": float(cosines.min()), "mean_cos": float(cosines.mean()), "k_at_99": k99}


def training_cost(root: Path) -> dict[str, dict[str, float]]:
    """Per run: CPU-core seconds of training (sum of the epochs' time_train_s, one thread) and of evaluation."""
    cost = {}
    for run in ["teacher", *RUNS]:
        metrics = root / run / "metrics.jsonl"
        if metrics.is_file():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            cost[run] = {"epochs": len(rows), "train_s": sum(r.get("time_train_s", 0) for r in rows),
                         "eval_s": sum(r.get("time_eval_s", 0) for r in rows)}
    return cost


# -------------------------------------------------------------------------------------------------
# Claims
# -------------------------------------------------------------------------------------------------


def mbnc(rep: dict[str, Any]) -> list[float]:
    return [layer["mbnc"] for layer in rep["layers"]]


def two_runs(a: dict[str, dict[int, dict[str, Any]]], first: str, second: str) -> tuple[dict, dict, list[int]]:
    """The kept students of two runs and the epochs both kept."""
    return a[first], a[second], sorted(set(a[first]) & set(a[second]))


def mean_mbnc(rep: dict[str, Any]) -> float:
    return statistics.fmean(mbnc(rep))


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def verdict(held: bool | str | None) -> str:
    """True / False / None (partly) / ``"untestable"`` (the runs cannot decide it) as the verdict's words."""
    return {True: "**held**", False: "**did not hold**", None: "**partly held**", "untestable": "**no verdict**"}[held]


def claim_table1(a: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], bool | None]:
    at, st = a["at"], a["st_logit"]
    last_st = max(st)
    header = ["agreement with the oracle (%)"] + [f"AT ({e})" for e in sorted(at)] + [f"ST logit ({last_st})"]
    rows = []
    for key, name in (("oracle", "oracle PGD-20 (Eq. 3, both restarts)"), ("data", "data PGD-20 (Eq. 4)"),
                      ("clean", "clean")):
        rows.append([name] + [pct(at[e]["robustness"][key]) for e in sorted(at)]
                    + [pct(st[last_st]["robustness"][key])])
    rob = [at[e]["robustness"]["oracle"] for e in sorted(at)]
    increases = rob[-1] > rob[0]
    monotone = all(b >= a_ - 0.01 for a_, b in zip(rob, rob[1:], strict=False))
    beats = rob[0] > st[last_st]["robustness"]["oracle"]
    held = (increases and beats) if (increases and beats) or not (increases or beats) else None
    text = [*table(header, rows), "",
            f"AT's oracle-robust accuracy {'rises' if increases else 'does not rise'} from {pct(rob[0])}% "
            f"(epoch {min(at)}) to {pct(rob[-1])}% (epoch {max(at)})"
            f"{'' if monotone else ' (not monotonically)'}; already at epoch {min(at)} it is "
            f"{'above' if beats else 'below'} ST (logit) after {last_st} epochs "
            f"({pct(st[last_st]['robustness']['oracle'])}%)."]
    return text, held


def claim_at_specialization(a: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], bool | None]:
    at, st = a["at"], a["st_logit"]
    rows, wins = [], []
    for e in sorted(set(at) & set(st)):
        for name, rep in (("AT", at[e]), ("ST (logit)", st[e])):
            eps = rep["epsilon"]
            ratio = [layer["ratio"] for layer in rep["layers"]]
            rows.append([str(e), name, *(f"{v:.3f}" for v in mbnc(rep)),
                         *("inf" if r is None else f"{r:.2f}" for r in ratio),
                         f"{eps['mean_eps_in']:.3f}", f"{eps['mean_eps_out']:.3f}", pct(rep["robustness"]["oracle"])])
        wins.append({"mbnc": [x > y for x, y in zip(mbnc(at[e]), mbnc(st[e]), strict=True)],
                     "in": at[e]["epsilon"]["mean_eps_in"] < st[e]["epsilon"]["mean_eps_in"],
                     "out": at[e]["epsilon"]["mean_eps_out"] < st[e]["epsilon"]["mean_eps_out"]})
    header = ["epoch", "student", *(f"MBNC L{i}" for i in range(4)), *(f"unspec/spec L{i}" for i in range(4)),
              "mean eps_in", "mean eps_out", "oracle PGD-20 (%)"]
    n_mbnc = sum(sum(w["mbnc"]) for w in wins)
    n_in, n_out = sum(w["in"] for w in wins), sum(w["out"] for w in wins)
    total = len(wins)
    held = True if (n_mbnc == 4 * total and n_in == total and n_out == total) else (
        False if n_mbnc <= 2 * total and n_in <= total // 2 and n_out <= total // 2 else None)
    text = [*table(header, rows), "",
            f"AT's MBNC is higher than ST (logit)'s in {n_mbnc} of {4 * total} (layer, epoch) cells; its mean "
            f"epsilon_in is lower at {n_in} of {total} epochs, its mean epsilon_out at {n_out} of {total}."]
    return text, held


def claim_fig2(a: dict[str, dict[int, dict[str, Any]]], sub: InputSubspace) -> tuple[list[str], bool | None]:
    last = max(a[FIG2])
    rep = a[FIG2][last]
    r_in, r_out = rep["epsilon"]["pearson_nc_eps_in"], rep["epsilon"]["pearson_nc_eps_out"]
    others = {f"{RUNS[run]} ({e})": a[run][e]["epsilon"]["pearson_nc_eps_in"] for run in a for e in a[run]}
    held = r_in < -0.5
    agree = batch_subspace_agreement(sub)
    text = [f"Input subspace: {sub.describe()}. Fitted on one batch of {agree['batch']} test images instead (the "
            f"in-/out-of-plane attacks' default), the same number of directions spans nearly the same subspace: "
            f"cosines of the principal angles {agree['min_cos']:.4f} (smallest) to 1, mean {agree['mean_cos']:.4f}; "
            f"99% of that batch's patch variance needs {agree['k_at_99']} directions.",
            f"ST (logit), epoch {last}, every (student node, teacher node) pair of the lowest layer: Pearson(NC, "
            f"epsilon_in) = {r_in:.3f}, Pearson(NC, epsilon_out) = {r_out:.3f}. Over every kept student, "
            f"Pearson(NC, epsilon_in) ranges from {min(others.values()):.3f} to {max(others.values()):.3f}."]
    return text, held


def claim_table3(a: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], bool | None]:
    lo, la, epochs = two_runs(a, "st_logit", "st_label")
    rows = [[f"{name}{what}"] + [pct(runs[e]["robustness"][key]) for e in epochs]
            for key, what in (("oracle", " training"), ("data", ", data PGD-20"), ("clean", ", clean agreement"))
            for name, runs in (("logit", lo), ("label", la))]
    wins = sum(lo[e]["robustness"]["oracle"] > la[e]["robustness"]["oracle"] for e in epochs)
    up_lo = lo[epochs[-1]]["robustness"]["oracle"] > lo[epochs[0]]["robustness"]["oracle"]
    up_la = la[epochs[-1]]["robustness"]["oracle"] > la[epochs[0]]["robustness"]["oracle"]
    held = True if wins == len(epochs) and up_lo and up_la else (False if wins <= len(epochs) // 2 else None)
    text = [*table(["oracle PGD-20 (%)"] + [f"ST ({e})" for e in epochs], rows), "",
            f"Logit training is more robust than label training at {wins} of {len(epochs)} epochs; robustness "
            f"{'rises' if up_lo else 'does not rise'} with epochs for logit training and "
            f"{'rises' if up_la else 'does not rise'} for label training."]
    return text, held


def claim_fig8(a: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], bool | None]:
    lo, la, epochs = two_runs(a, "st_logit", "st_label")
    rows, cells, n = [], 0, 0
    for e in epochs:
        rows.append([str(e), *(f"{x:.3f} / {y:.3f}" for x, y in zip(mbnc(lo[e]), mbnc(la[e]), strict=True)),
                     f"{lo[e]['epsilon']['mean_eps_in']:.3f} / {la[e]['epsilon']['mean_eps_in']:.3f}",
                     f"{lo[e]['epsilon']['mean_eps_out']:.3f} / {la[e]['epsilon']['mean_eps_out']:.3f}"])
        cells += sum(x > y for x, y in zip(mbnc(lo[e]), mbnc(la[e]), strict=True))
        n += 4
    d_in = {k: r[epochs[-1]]["epsilon"]["mean_eps_in"] - r[epochs[0]]["epsilon"]["mean_eps_in"]
            for k, r in (("logit", lo), ("label", la))}
    d_out = {k: r[epochs[-1]]["epsilon"]["mean_eps_out"] - r[epochs[0]]["epsilon"]["mean_eps_out"]
             for k, r in (("logit", lo), ("label", la))}
    held = True if cells == n else (False if cells <= n // 2 else None)
    text = [*table(["epoch", *(f"MBNC L{i} logit / label" for i in range(4)), "mean eps_in logit / label",
                    "mean eps_out logit / label"], rows), "",
            f"Logit training has the higher MBNC in {cells} of {n} (layer, epoch) cells. From epoch {epochs[0]} to "
            f"{epochs[-1]} the mean epsilon_in changes by {d_in['logit']:+.3f} (logit) and {d_in['label']:+.3f} "
            f"(label), the mean epsilon_out by {d_out['logit']:+.3f} and {d_out['label']:+.3f} (Fig. 9: label training "
            "does not improve the in-plane specialization; it reduces epsilon_out more)."]
    return text, held


def claim_table2(a: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], bool | None]:
    models = {"in-plane AT": a["inplane_at"], "out-of-plane AT": a["outplane_at"], "AT": a["at"]}
    e = max(a["inplane_at"])
    rows, severe = [], 0
    for name, runs in models.items():
        r = runs[e]["robustness"]
        rows.append([f"{name} ({e})", pct(r["oracle_in"]), pct(r["oracle_out"]), pct(r["oracle"]), pct(r["clean"])])
        severe += r["oracle_in"] < r["oracle_out"]
    r_in, r_out = models["in-plane AT"][e]["robustness"], models["out-of-plane AT"][e]["robustness"]
    better = r_in["oracle"] > r_out["oracle"]
    held = True if severe == 3 and better else (False if severe <= 1 and not better else None)
    text = [*table(["student", "in-plane attack", "out-of-plane attack", "both (standard)", "clean"], rows), "",
            f"The in-plane attack is the more severe one for {severe} of 3 students; in-plane AT is "
            f"{'more' if better else 'less'} robust than out-of-plane AT against both restarts "
            f"({pct(r_in['oracle'])}% vs {pct(r_out['oracle'])}%)."]
    return text, held


def claim_fig7(a: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], bool | None]:
    e = max(a["inplane_at"])
    reps = {"in-plane AT": a["inplane_at"][e], "out-of-plane AT": a["outplane_at"][e], "AT": a["at"][e]}
    rows = [[f"{k} ({e})", f"{r['epsilon']['mean_eps_in']:.3f}", f"{r['epsilon']['mean_eps_out']:.3f}",
             f"{mean_mbnc(r):.3f}"] for k, r in reps.items()]
    i, o = reps["in-plane AT"]["epsilon"], reps["out-of-plane AT"]["epsilon"]
    wins = (i["mean_eps_in"] < o["mean_eps_in"]) + (i["mean_eps_out"] < o["mean_eps_out"])
    held = True if wins == 2 else (False if wins == 0 else None)
    text = [*table(["student", "mean eps_in", "mean eps_out", "MBNC (mean of 4 layers)"], rows), "",
            f"In-plane AT has the lower epsilon in {wins} of the 2 directions."]
    return text, held


def claim_fig10(a: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], bool | None]:
    lo, ga, epochs = two_runs(a, "st_logit", "st_gaussian")
    rows, wins = [], 0
    for e in epochs:
        rows.append([str(e), f"{lo[e]['epsilon']['mean_eps_in']:.3f} / {ga[e]['epsilon']['mean_eps_in']:.3f}",
                     f"{lo[e]['epsilon']['mean_eps_out']:.3f} / {ga[e]['epsilon']['mean_eps_out']:.3f}",
                     f"{mean_mbnc(lo[e]):.3f} / {mean_mbnc(ga[e]):.3f}",
                     f"{pct(lo[e]['robustness']['oracle_out'])} / {pct(ga[e]['robustness']['oracle_out'])}",
                     f"{pct(lo[e]['robustness']['oracle'])} / {pct(ga[e]['robustness']['oracle'])}"])
        wins += (ga[e]["epsilon"]["mean_eps_in"] < lo[e]["epsilon"]["mean_eps_in"]) + (
            ga[e]["epsilon"]["mean_eps_out"] < lo[e]["epsilon"]["mean_eps_out"])
    n = 2 * len(epochs)
    held = True if wins == n else (False if wins <= n // 2 else None)
    text = [*table(["epoch", "mean eps_in without / with", "mean eps_out without / with", "MBNC without / with",
                    "out-of-plane attack (%) without / with", "oracle PGD-20 (%) without / with"], rows), "",
            f"Gaussian augmentation gives the lower epsilon in {wins} of {n} (direction, epoch) cells."]
    return text, held


def claim_correlation(a: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], bool | None]:
    points = [(rep["robustness"]["oracle"], mean_mbnc(rep), rep["epsilon"]["mean_eps_in"],
               rep["epsilon"]["mean_eps_out"]) for run in a for rep in a[run].values()]
    rob = [p[0] for p in points]
    s_mbnc = spearman([p[1] for p in points], rob)
    s_in = spearman([p[2] for p in points], rob)
    s_out = spearman([p[3] for p in points], rob)
    held = s_mbnc > 0.5 and s_in < -0.5
    text = [f"Over all {len(points)} kept students (every run and epoch), the Spearman correlation between "
            f"oracle-robust accuracy and the mean MBNC of the four layers is {s_mbnc:.3f}; with the mean epsilon_in "
            f"{s_in:.3f}, with the mean epsilon_out {s_out:.3f}."]
    return text, held


# -------------------------------------------------------------------------------------------------
# Figures
# -------------------------------------------------------------------------------------------------


def shades(cmap: str, n: int) -> list[Any]:
    import matplotlib

    return [matplotlib.colormaps[cmap](0.35 + 0.65 * i / max(n - 1, 1)) for i in range(n)]


def figures(a: dict[str, dict[int, dict[str, Any]]], sub: InputSubspace, out: Path) -> list[Path]:
    files = [plot_input_spectrum(sub.eigenvalues.tolist(), sub.k, out / "fig2_input_spectrum.png")]
    last = max(a[FIG2])
    m = a[FIG2][last]["matrices"]
    files.append(plot_epsilon_vs_nc(torch.tensor(m["rho"]), torch.tensor(m["eps_in"]), torch.tensor(m["eps_out"]),
                                    out / "fig2_nc_vs_epsilon.png",
                                    title=f"ST (logit), epoch {last}: every node pair of the lowest layer"))

    def series(runs: list[tuple[str, str, str]], epochs: Callable[[str], list[int]]) -> tuple[dict, dict, dict]:
        bnc, eps, styles = {}, {}, {}
        for run, cmap, ls in runs:
            es = epochs(run)
            for color, e in zip(shades(cmap, len(es)), es, strict=True):
                label = f"{RUNS[run]} ({e})"
                rep = a[run][e]
                bnc[label] = {name: layer["bnc"] for name, layer in zip(LAYERS, rep["layers"], strict=True)}
                eps[label] = (rep["epsilon"]["curve_eps_in"], rep["epsilon"]["curve_eps_out"])
                styles[label] = {"color": color, "linestyle": ls}
        return bnc, eps, styles

    def last(run: str) -> list[int]:
        return [max(a[run])]

    def every(run: str) -> list[int]:
        return sorted(a[run])

    bnc, eps, st = series([("at", "Blues", "-"), ("st_logit", "Reds", "--")],
                          lambda r: every(r) if r == "at" else last(r))
    files.append(plot_bnc_layers(bnc, out / "fig3_bnc_at_vs_st.png", "Sorted BNC: AT over epochs vs ST (logit)", st))
    files.append(plot_epsilon_curves(eps, out / "fig4_epsilon_at_vs_st.png",
                                     "epsilon_in / epsilon_out: AT over epochs vs ST (logit)", st))
    bnc, eps, st = series([("st_logit", "Blues", "-"), ("st_label", "Reds", "--")], every)
    files.append(plot_bnc_layers(bnc, out / "fig8_bnc_logit_vs_label.png", "Sorted BNC: ST with logit vs label", st))
    files.append(plot_epsilon_curves(eps, out / "fig9_epsilon_logit_vs_label.png",
                                     "epsilon_in / epsilon_out: ST with logit vs label", st))
    e = max(a["inplane_at"])
    bnc, eps, st = series([("inplane_at", "Blues", "-"), ("outplane_at", "Reds", "--"), ("at", "Greys", ":")],
                          lambda r: [e])
    files.append(plot_epsilon_curves(eps, out / "fig7_epsilon_inplane_vs_outplane.png",
                                     f"epsilon_in / epsilon_out: in-plane, out-of-plane and standard AT ({e} epochs)",
                                     st))
    bnc, eps, st = series([("st_logit", "Blues", "-"), ("st_gaussian", "Reds", "--")], every)
    files.append(plot_epsilon_curves(eps, out / "fig10_epsilon_gaussian.png",
                                     "epsilon_in / epsilon_out: ST (logit) without / with Gaussian noise (sigma 0.1)",
                                     st))
    return files


# -------------------------------------------------------------------------------------------------


CLAIMS: list[tuple[str, str, Callable[..., tuple[list[str], bool | None]]]] = [
    ("Specialization correlates with robustness (the paper's thesis, Sec. 5)",
     "The more a student is specialized to the oracle, the more robust it is.", claim_correlation),
    ("Table 1: AT vs ST robustness over epochs",
     "AT's robustness increases with epochs and surpasses ST (logit) at its longest training even at AT's first "
     "snapshot (the paper: AT at 50 epochs beats ST at 300).", claim_table1),
    ("Figures 3, 4, 6: AT specializes more than ST",
     "AT has higher sorted-BNC curves / MBNC, fewer unspecialized nodes, and lower epsilon_in and epsilon_out "
     "curves than ST (logit).", claim_at_specialization),
    ("Figure 2: epsilon_in correlates negatively with NC",
     "Over every student-teacher node pair of the lowest layer (standard training), a small epsilon_in goes with "
     "a large NC: a strongly negative Pearson score.", claim_fig2),
    ("Table 3: logit vs label training, robustness",
     "Logit training is more robust than label training at every epoch, and both improve with training.",
     claim_table3),
    ("Figures 8, 9: logit vs label training, specialization",
     "Logit training gives higher sorted-BNC curves than label training at every layer and epoch.", claim_fig8),
    ("Table 2: in-plane vs out-of-plane AT, robustness",
     "The in-plane attack is more severe than the out-of-plane one, and in-plane AT is more robust than "
     "out-of-plane AT.", claim_table2),
    ("Figure 7: in-plane vs out-of-plane AT, specialization",
     "In-plane AT gives lower epsilon_in and epsilon_out curves than out-of-plane AT.", claim_fig7),
    ("Figure 10: Gaussian augmentation",
     "Training on Gaussian-noised (high-rank) inputs lowers both epsilon_in and epsilon_out curves.", claim_fig10),
]


def main(root: Path) -> int:
    a, sub = analyse(root)
    missing = [run for run in RUNS if run not in a]
    if missing:
        print(f"runs without kept students: {', '.join(missing)}; run benchmarks/specialization/run_all.sh",
              file=sys.stderr)
        return 1
    files = figures(a, sub, root)
    cost = training_cost(root)
    pruning = json.loads((root / "teacher" / "pruned.json").read_text())
    teacher = json.loads((root / "teacher" / "summary.json").read_text())
    lines = ["# The specialization paper on Fashion-MNIST: claims", "",
             "Yang et al., AISTATS 2021. Generated by `benchmarks/specialization/claims.py` from the runs of "
             "`benchmarks/specialization/run_all.sh`; single seed; test numbers on the first "
             f"{N_EXAMPLES} test images, robustness at eps {EPS} with PGD-{STEPS} (step {STEP}).", "",
             f"Teacher: widths {'-'.join(map(str, pruning['widths_before']))}, best validation accuracy "
             f"{pct(teacher['best_value'])}%, pruned ("
             + (f"fan-out norm below {pruning['threshold']} x its layer's largest"
                if pruning.get("threshold") is not None else "the channels of largest fan-out norm kept")
             + ") to "
             f"{'-'.join(map(str, pruning['widths_after']))} (largest logit change "
             f"{pruning.get('max_abs_logit_change', float('nan')):.3g}, predictions changed on "
             f"{pct(pruning.get('prediction_changes', float('nan')))}% of {pruning.get('check_images', 0)} test "
             "images); "
             f"students {'-'.join(map(str, pruning['student_widths']))} (1.1x).", ""]
    verdicts = {}
    for title, claim, fn in CLAIMS:
        text, held = fn(a, sub) if fn is claim_fig2 else fn(a)
        verdicts[title] = held
        lines += [f"## {title}: {verdict(held)}", "", f"*Claim:* {claim}", "", *text, ""]
    lines += ["## Cost (one CPU core, on a machine shared with other jobs)", "",
              *table(["run", "epochs", "training (s)", "per-epoch evaluation (s)"],
                     [[run, str(c["epochs"]), f"{c['train_s']:.0f}", f"{c['eval_s']:.0f}"] for run, c in cost.items()]),
              "", f"Analysis of {sum(len(v) for v in a.values())} students: "
              f"{sum(rep.get('cpu_seconds', 0) for v in a.values() for rep in v.values()):.0f} CPU seconds.", "",
              "Figures: " + ", ".join(f"[{f.name}]({f.name})" for f in files), ""]
    atomic_write_text("\n".join(lines), root / "claims.md")
    atomic_write_json({"verdicts": verdicts, "cost": cost,
                       "students": {run: {str(e): {k: v for k, v in rep.items() if k != "matrices"}
                                          for e, rep in reps.items()} for run, reps in a.items()}},
                      root / "claims.json")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/specialization")))
