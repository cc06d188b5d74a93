"""Table 4 and Figures 11-12 of the specialization paper on the Fashion-MNIST reproduction: CCAT (rho 5, 10, 20) vs AT.

    python benchmarks/specialization/table4_ccat.py [benchmarks/results/specialization]

Yang et al., AISTATS 2021, Sec. 5.6: students trained by CCAT (Stutz et al. 2020; ``method: ccat``, plugins/ccat.py)
for 150 epochs (here 3: the paper's 300 divided by 50, as in-/out-of-plane AT) with rho = 5, 10, 20, against AT
(``oracle_adv``) at the same epoch. Every student is measured as by ``claims.py`` (same images, subspace, attacks,
and the same cache ``analysis/<run>/epoch_<N>.json``: AT's epoch-3 numbers of ``run_all.sh`` are reused):
agreement with the oracle under oracle PGD-20 (Table 4's robust accuracy), BNC / MBNC of the four layers,
epsilon_in / epsilon_out of the lowest one. Writes ``table4_ccat.md``, ``table4_ccat.json``,
``fig11_bnc_ccat.png`` and ``fig12_epsilon_ccat.png`` in the results folder.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import (  # noqa: E402  (claims.py is a script beside this one, not a package)
    EPS,
    LAYERS,
    N_EXAMPLES,
    PAIRS,
    PCA_IMAGES,
    STEP,
    STEPS,
    mean_mbnc,
    pct,
    shades,
    table,
    verdict,
)

from robust_distill.analysis.report import spearman  # noqa: E402
from robust_distill.analysis.specialization_report import (  # noqa: E402
    plot_bnc_layers,
    plot_epsilon_curves,
    specialization_report,
)
from robust_distill.analysis.subspace import InputSubspace, first_layer, fit_input_subspace  # noqa: E402
from robust_distill.core.manager import get_registries  # noqa: E402
from robust_distill.files.atomic import atomic_write_json, atomic_write_text, read_jsonl  # noqa: E402
from robust_distill.files.checkpoint import build_from_checkpoint  # noqa: E402

EPOCH = 3  # the paper's 150 of 300 epochs
RHOS = (5, 10, 20)
RUNS = {**{f"ccat_rho{r}": f"CCAT (rho = {r})" for r in RHOS}, "at": "AT"}
PAPER = {"ccat_rho5": 47.25, "ccat_rho10": 52.04, "ccat_rho20": 49.33, "at": 84.07}  # Table 4, robust accuracy (%)


def measure(root: Path, run: str, epoch: int, teacher: torch.nn.Module, x: torch.Tensor,
            subspace: InputSubspace) -> dict[str, Any]:
    """``claims.py``'s measurements of one student, cached in ``analysis/<run>/epoch_<N>.json``."""
    cache = root / "analysis" / run / f"epoch_{epoch}.json"
    if not cache.is_file():
        ckpt = root / run / f"epoch_{epoch}.pt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt} does not exist: run benchmarks/specialization/table4_ccat.sh")
        t0 = time.process_time()
        student, _ = build_from_checkpoint(ckpt, get_registries())
        rep = specialization_report(teacher, student, PAIRS, x, subspace=subspace,
                                    robustness={"eps": EPS, "step_size": STEP, "steps": STEPS})
        rep.pop("_matrices")
        rep["cpu_seconds"] = round(time.process_time() - t0, 1)
        atomic_write_json(rep, cache)
        print(f"analysed {run} epoch {epoch} ({rep['cpu_seconds']} CPU s)", file=sys.stderr, flush=True)
    return json.loads(cache.read_text())


def attacked_lambda(run: Path) -> list[float]:
    """Per epoch, the mean calibration lambda of the attacked samples (the ``train_ccat_lambda`` metric averages
    over the whole batch, whose unattacked share ``1 - fraction`` has lambda 1); [] for a run without it."""
    rows = read_jsonl(run / "metrics.jsonl", "metrics file")
    if not any("train_ccat_lambda" in r for r in rows):
        return []
    fraction = float(yaml.safe_load((run / "config.yaml").read_text())["inner_attack"]["kwargs"]["fraction"])
    return [(r["train_ccat_lambda"] - (1.0 - fraction)) / fraction for r in rows if "train_ccat_lambda" in r]


def main(root: Path) -> int:
    torch.set_num_threads(1)
    regs = get_registries()
    teacher, _ = build_from_checkpoint(root / "teacher" / "pruned.pt", regs)
    bundle = regs.datasets.get("fashion_mnist").load()
    sub_path = root / "input_subspace.pt"
    if sub_path.is_file():
        subspace = InputSubspace.load(sub_path)
    else:
        subspace = fit_input_subspace(bundle.train_x[:PCA_IMAGES], first_layer(teacher)[1], explained_variance=0.99)
        subspace.save(sub_path)
    reps = {run: measure(root, run, EPOCH, teacher, bundle.test_x[:N_EXAMPLES], subspace) for run in RUNS}

    def row(name: str, fn) -> list[str]:
        return [name, *(fn(reps[run]) for run in RUNS)]

    header = ["", *(f"{label} ({EPOCH})" for label in RUNS.values())]
    rows = [["paper: robust accuracy (150 epochs, CIFAR-10)", *(f"{PAPER[run]:.2f}" for run in RUNS)],
            row("oracle PGD-20 (Eq. 3, both restarts)", lambda r: pct(r["robustness"]["oracle"])),
            row("data PGD-20 (Eq. 4)", lambda r: pct(r["robustness"]["data"])),
            row("clean agreement", lambda r: pct(r["robustness"]["clean"])),
            *(row(f"MBNC {layer}", lambda r, i=i: f"{r['layers'][i]['mbnc']:.3f}") for i, layer in enumerate(LAYERS)),
            row("MBNC, mean of the layers", lambda r: f"{mean_mbnc(r):.3f}"),
            row("specialized nodes (BNC > 0.9), all layers", lambda r: str(sum(s["specialized"] for s in r["layers"]))),
            row("mean eps_in (lowest layer)", lambda r: f"{r['epsilon']['mean_eps_in']:.3f}"),
            row("mean eps_out (lowest layer)", lambda r: f"{r['epsilon']['mean_eps_out']:.3f}")]

    lam = {run: attacked_lambda(root / run) for run in RUNS}
    rows.append(["training lambda of the attacked samples, per epoch",
                 *(", ".join(f"{v:.3f}" for v in lam[run]) or "-" for run in RUNS)])
    rob = {run: reps[run]["robustness"]["oracle"] for run in RUNS}
    spec = {run: mean_mbnc(reps[run]) for run in RUNS}
    ccat = [f"ccat_rho{r}" for r in RHOS]
    at_more_robust = sum(rob["at"] > rob[c] for c in ccat)
    at_more_spec = sum(spec["at"] > spec[c] for c in ccat)
    at_lower_eps = sum(reps["at"]["epsilon"][k] < reps[c]["epsilon"][k] for c in ccat
                       for k in ("mean_eps_in", "mean_eps_out"))
    rank_all = spearman([spec[r] for r in RUNS], [rob[r] for r in RUNS])
    rank_ccat = spearman([spec[c] for c in ccat], [rob[c] for c in ccat])
    best = max(ccat, key=lambda c: rob[c])
    alike = len({rob[c] for c in ccat}) == 1
    surface = all(lam[c] and max(lam[c]) < 1e-6 for c in ccat)
    why = (" Every attacked sample's best iterate lay on the ball's surface in every epoch (lambda 0 for each rho: "
           "uniform targets whatever rho), so rho cannot matter here and the three students are one network."
           if surface else "")
    claims = [
        ("AT is more robust than CCAT (Table 4)", "AT's robust accuracy is above every CCAT student's.",
         {3: True, 0: False}.get(at_more_robust),
         f"AT is more robust than {at_more_robust} of the 3 CCAT students ({pct(rob['at'])}% vs "
         + ", ".join(f"{pct(rob[c])}%" for c in ccat) + ")."),
        ("AT specializes more than CCAT (Fig. 11, 12)",
         "AT has a higher sorted-BNC curve and lower epsilon_in / epsilon_out curves than every CCAT student.",
         True if at_more_spec == 3 and at_lower_eps == 6 else (False if at_more_spec == 0 and at_lower_eps <= 3
                                                                 else None),
         f"AT's mean MBNC is above {at_more_spec} of 3 CCAT students'; its mean epsilon is lower in {at_lower_eps} "
         "of 6 (student, direction) cells."),
        ("Specialization and robustness rank the students alike (Sec. 5.6)",
         "The order of the students by robustness is their order by specialization (the paper: rho 10 > 20 > 5, "
         "AT above all).",
         True if rank_all > 0.99 else (False if rank_all <= 0 else None),
         f"Spearman(mean MBNC, robust accuracy) over the 4 students {rank_all:.2f}, over the 3 CCAT students "
         f"{rank_ccat:.2f}."),
        ("rho = 10 is the most robust CCAT (Table 4)", "CCAT with rho = 10 is more robust than with rho = 5 or 20.",
         "untestable" if alike else best == "ccat_rho10",
         (f"The three CCAT students are equally robust ({pct(rob[best])}%): no order to test." + why) if alike
         else f"The most robust CCAT student is {RUNS[best]} ({pct(rob[best])}%)."),
    ]

    out = root
    bnc = {f"{RUNS[r]} ({EPOCH})": {name: layer["bnc"] for name, layer in zip(LAYERS, reps[r]["layers"], strict=True)}
           for r in RUNS}
    eps = {f"{RUNS[r]} ({EPOCH})": (reps[r]["epsilon"]["curve_eps_in"], reps[r]["epsilon"]["curve_eps_out"])
           for r in RUNS}
    colors = [*shades("Reds", len(RHOS)), "black"]
    styles = {label: {"color": c, "linestyle": "-" if "CCAT" in label else "--"}
              for label, c in zip(bnc, colors, strict=True)}
    files = [plot_bnc_layers(bnc, out / "fig11_bnc_ccat.png", f"Sorted BNC: CCAT (rho 5, 10, 20) vs AT, epoch {EPOCH}",
                             styles),
             plot_epsilon_curves(eps, out / "fig12_epsilon_ccat.png",
                                 f"epsilon_in / epsilon_out: CCAT vs AT, epoch {EPOCH}", styles)]
    lines = ["# Table 4 (CCAT vs AT) of the specialization paper on Fashion-MNIST", "",
             "Yang et al., AISTATS 2021, Sec. 5.6. Generated by `benchmarks/specialization/table4_ccat.py` from the "
             "runs of `benchmarks/specialization/table4_ccat.sh` (CCAT: `method: ccat`, half of each batch attacked "
             "by max_k |S_k(x') - T_k(x')|, soft label lambda onehot(argmax T(x)) + (1 - lambda)/K, lambda = (1 - "
             f"||x'-x||_inf / eps)^rho); the students of epoch {EPOCH} (the paper's 150 of 300 epochs); AT is "
             f"`run_all.sh`'s. Single seed; {N_EXAMPLES} test images; robustness at eps {EPS} with PGD-{STEPS} "
             f"(step {STEP}).", "", *table(header, rows), ""]
    for title, claim, held, text in claims:
        lines += [f"## {title}: {verdict(held)}", "", f"*Claim:* {claim}", "", text, ""]
    lines += ["Figures: " + ", ".join(f"[{f.name}]({f.name})" for f in files), ""]
    atomic_write_text("\n".join(lines), out / "table4_ccat.md")
    atomic_write_json({"epoch": EPOCH, "paper": PAPER, "verdicts": {c[0]: c[2] for c in claims},
                       "students": reps}, out / "table4_ccat.json")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/specialization")))
