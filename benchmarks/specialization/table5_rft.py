"""Table 5 and Figures 15-16 of the specialization paper on the Fashion-MNIST reproduction: robust feature training
(RFT) vs standard (ST) and adversarial training (AT).

    python benchmarks/specialization/table5_rft.py generate [benchmarks/results/specialization]
    python benchmarks/specialization/table5_rft.py table [benchmarks/results/specialization]

Yang et al., AISTATS 2021, App. A.11. ``generate``: the robust-feature dataset D_R of the AT student of epoch 3
(the paper's AT at 150 epochs): for each of the 10k training images the students use, x_r = argmin alpha
||L_t(x_r) - L_t(x)|| + ||f_M(x) - f_M(x_r)|| (Eq. 35, alpha 0.5; f_M the AT student's penultimate features, L_t
the oracle's logits; :mod:`robust_distill.analysis.robust_features`), started from another training image, written
to ``rft/robust_features.pt`` (the ``robust_features`` dataset) with its statistics in ``rft/robust_features.json``.
``RFT_STEPS`` (default 200) sets the descent's steps. ``table``: the RFT student (fine-tuned from ST (logit) of
epoch 3 for 3 epochs on D_R with the teacher's logits, ``table5_rft.sh``) against ST (logit) at epochs 3 and 6 and
AT at epoch 3, measured as by ``claims.py`` (cached in ``analysis/<run>/epoch_<N>.json``, so the committed ST and
AT numbers are reused); writes ``table5_rft.md``, ``table5_rft.json``, ``fig15_bnc_rft.png``,
``fig16_epsilon_rft.png``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import EPS, LAYERS, N_EXAMPLES, PCA_IMAGES, STEP, STEPS, mean_mbnc, pct, table, verdict  # noqa: E402
from table4_ccat import measure  # noqa: E402

from robust_distill.analysis.robust_features import (  # noqa: E402
    robust_feature_stats,
    robust_features,
    save_robust_features,
    training_positions,
)
from robust_distill.analysis.specialization_report import plot_bnc_layers, plot_epsilon_curves  # noqa: E402
from robust_distill.analysis.subspace import InputSubspace, first_layer, fit_input_subspace  # noqa: E402
from robust_distill.core.manager import get_registries  # noqa: E402
from robust_distill.files.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from robust_distill.files.checkpoint import build_from_checkpoint  # noqa: E402

HERE = Path(__file__).resolve().parent
ALPHA, START, STEP_SIZE = 0.5, "other", 3.0
#: the students of Table 5: (run, epoch, label); the paper's epochs / 50
STUDENTS = [("at", 3, "AT (3)"), ("st_logit", 3, "ST (3)"), ("st_logit", 6, "ST (6)"), ("rft", 3, "RFT (3)")]
PAPER = {"AT (3)": 83.27, "ST (3)": 35.88, "ST (6)": 61.73, "RFT (3)": 45.39}  # Table 5, robust accuracy (%)


def generate(root: Path) -> int:
    out = root / "rft" / "robust_features.pt"
    if out.is_file():
        print(f"{out} exists", file=sys.stderr)
        return 0
    torch.set_num_threads(1)
    regs = get_registries()
    data = yaml.safe_load((HERE / "student_base.yaml").read_text())["data"]
    teacher, _ = build_from_checkpoint(root / "teacher" / "pruned.pt", regs)
    robust, _ = build_from_checkpoint(root / "at" / "epoch_3.pt", regs)
    base = data["options"]["base"]
    bundle = regs.datasets.get(base).load()
    pos = training_positions(bundle, val_size=data["val_size"], split_seed=data.get("split_seed", 0),
                             train_subset=data["train_subset"])
    x = bundle.train_x[pos]
    steps = int(os.environ.get("RFT_STEPS", "200"))
    t0 = time.process_time()
    history: list[float] = []
    x_r = robust_features(robust, teacher, x, alpha=ALPHA, steps=steps, step_size=STEP_SIZE, start=START,
                          history=history)
    seconds = time.process_time() - t0
    settings = {"alpha": ALPHA, "steps": steps, "step_size": STEP_SIZE, "start": START, "anneal": True,
                "robust_model": str(root / "at" / "epoch_3.pt"), "teacher": str(root / "teacher" / "pruned.pt"),
                "representation": "input of the classifier layer (fc)", "images": int(x.shape[0])}
    stats = robust_feature_stats(robust, teacher, x, x_r, alpha=ALPHA)
    save_robust_features(out, x_r, pos, base=base, settings=settings)
    atomic_write_json({"settings": settings, "stats": stats, "cpu_seconds": round(seconds, 1),
                       "objective_curve": history[::max(1, steps // 20)] + history[-1:]}, out.with_suffix(".json"))
    print(json.dumps(stats, indent=1))
    return 0


def make_table(root: Path) -> int:
    torch.set_num_threads(1)
    regs = get_registries()
    teacher, _ = build_from_checkpoint(root / "teacher" / "pruned.pt", regs)
    bundle = regs.datasets.get("fashion_mnist").load()
    subspace = InputSubspace.load(root / "input_subspace.pt") if (root / "input_subspace.pt").is_file() else None
    if subspace is None:
        subspace = fit_input_subspace(bundle.train_x[:PCA_IMAGES], first_layer(teacher)[1], explained_variance=0.99)
        subspace.save(root / "input_subspace.pt")
    reps = {label: measure(root, run, epoch, teacher, bundle.test_x[:N_EXAMPLES], subspace)
            for run, epoch, label in STUDENTS}
    gen = json.loads((root / "rft" / "robust_features.json").read_text())

    def row(name: str, fn) -> list[str]:
        return [name, *(fn(reps[label]) for label in reps)]

    rows = [["paper: robust accuracy (epochs x 50, CIFAR-10)", *(f"{PAPER[label]:.2f}" for label in reps)],
            row("oracle PGD-20 (Eq. 3, both restarts)", lambda r: pct(r["robustness"]["oracle"])),
            row("out-of-plane attack", lambda r: pct(r["robustness"]["oracle_out"])),
            row("in-plane attack", lambda r: pct(r["robustness"]["oracle_in"])),
            row("clean agreement", lambda r: pct(r["robustness"]["clean"])),
            *(row(f"MBNC {layer}", lambda r, i=i: f"{r['layers'][i]['mbnc']:.3f}") for i, layer in enumerate(LAYERS)),
            row("MBNC, mean of the layers", lambda r: f"{mean_mbnc(r):.3f}"),
            row("mean eps_in (lowest layer)", lambda r: f"{r['epsilon']['mean_eps_in']:.3f}"),
            row("mean eps_out (lowest layer)", lambda r: f"{r['epsilon']['mean_eps_out']:.3f}")]
    rob = {k: r["robustness"]["oracle"] for k, r in reps.items()}
    spec = {k: mean_mbnc(r) for k, r in reps.items()}
    eps = {k: (r["epsilon"]["mean_eps_in"], r["epsilon"]["mean_eps_out"]) for k, r in reps.items()}
    others = [k for k in reps if k != "AT (3)"]
    at_best = sum(rob["AT (3)"] > rob[k] for k in others) + sum(spec["AT (3)"] > spec[k] for k in others)
    rft_up = (rob["RFT (3)"] > rob["ST (3)"]) + (spec["RFT (3)"] > spec["ST (3)"])
    close = abs(spec["RFT (3)"] - spec["ST (6)"]) < abs(spec["RFT (3)"] - spec["ST (3)"])
    st6_more_robust = rob["ST (6)"] > rob["RFT (3)"]
    claims = [
        ("AT is the most robust and the most specialized (Table 5, Fig. 15)",
         "AT's robust accuracy and MBNC are above RFT's and both ST students'.",
         True if at_best == 6 else (False if at_best <= 2 else None),
         f"AT is ahead in {at_best} of 6 (student, measure) comparisons (robustness {pct(rob['AT (3)'])}% vs "
         + ", ".join(f"{k} {pct(rob[k])}%" for k in others) + f"; mean MBNC {spec['AT (3)']:.3f} vs "
         + ", ".join(f"{k} {spec[k]:.3f}" for k in others) + ")."),
        ("RFT improves on the ST student it starts from", "RFT (fine-tuned from ST at 150 epochs for 150 more, on "
         "D_R) is more robust and more specialized than ST at 150 epochs.",
         {2: True, 0: False}.get(int(rft_up)),
         f"RFT (3) vs ST (3): robustness {pct(rob['RFT (3)'])}% vs {pct(rob['ST (3)'])}%, mean MBNC "
         f"{spec['RFT (3)']:.3f} vs {spec['ST (3)']:.3f}."),
        ("RFT specializes like ST at twice the epochs, but is less robust (Fig. 15, 16)",
         "RFT's specialization is close to ST at 300 epochs' (closer than to ST at 150), while ST at 300 epochs is "
         "the more robust; RFT's epsilon_out curve is slightly lower.",
         True if close and st6_more_robust and eps["RFT (3)"][1] < eps["ST (6)"][1] else (
             False if not close and not st6_more_robust else None),
         f"|MBNC(RFT) - MBNC(ST 6)| = {abs(spec['RFT (3)'] - spec['ST (6)']):.3f}, |MBNC(RFT) - MBNC(ST 3)| = "
         f"{abs(spec['RFT (3)'] - spec['ST (3)']):.3f}; robustness ST (6) {pct(rob['ST (6)'])}% vs RFT "
         f"{pct(rob['RFT (3)'])}%; mean eps_in / eps_out RFT {eps['RFT (3)'][0]:.3f} / {eps['RFT (3)'][1]:.3f}, "
         f"ST (6) {eps['ST (6)'][0]:.3f} / {eps['ST (6)'][1]:.3f}."),
    ]
    styles = {"AT (3)": {"color": "black", "linestyle": "--"}, "ST (3)": {"color": "C0", "linestyle": ":"},
              "ST (6)": {"color": "C0", "linestyle": "-"}, "RFT (3)": {"color": "C3", "linestyle": "-"}}
    bnc = {k: {name: layer["bnc"] for name, layer in zip(LAYERS, r["layers"], strict=True)} for k, r in reps.items()}
    curves = {k: (r["epsilon"]["curve_eps_in"], r["epsilon"]["curve_eps_out"]) for k, r in reps.items()}
    files = [plot_bnc_layers(bnc, root / "fig15_bnc_rft.png", "Sorted BNC: RFT vs ST and AT", styles),
             plot_epsilon_curves(curves, root / "fig16_epsilon_rft.png", "epsilon_in / epsilon_out: RFT vs ST and AT",
                                 styles)]
    s, g = gen["stats"], gen["settings"]
    lines = ["# Table 5 (robust feature training) of the specialization paper on Fashion-MNIST", "",
             "Yang et al., AISTATS 2021, App. A.11. Generated by `benchmarks/specialization/table5_rft.py` from the "
             "runs of `benchmarks/specialization/table5_rft.sh`. D_R: the robust-feature images of the "
             f"{g['images']} training images for the AT student of epoch 3 (Eq. 35, alpha {g['alpha']}, "
             f"{g['steps']} normalised-gradient steps from another training image; {gen['cpu_seconds']:.0f} CPU s): "
             f"relative representation error {s['rel_rep_error']:.3f}, the oracle puts {pct(s['teacher_agreement'])}% "
             f"of x_r in x's class, the AT student {pct(s['model_agreement'])}%, mean pixel L2 to x "
             f"{s['pixel_l2']:.2f}. RFT: ST (logit) of epoch 3 fine-tuned 3 epochs on D_R with the teacher's logits "
             f"(`oracle_logit`, labels T(x_r)). Epochs are the paper's divided by 50. Single seed; {N_EXAMPLES} test "
             f"images; robustness at eps {EPS} with PGD-{STEPS} (step {STEP}).", "",
             *table(["", *reps], rows), ""]
    for title, claim, held, text in claims:
        lines += [f"## {title}: {verdict(held)}", "", f"*Claim:* {claim}", "", text, ""]
    lines += ["Figures: " + ", ".join(f"[{f.name}]({f.name})" for f in files), ""]
    atomic_write_text("\n".join(lines), root / "table5_rft.md")
    atomic_write_json({"paper": PAPER, "generation": gen, "verdicts": {c[0]: c[2] for c in claims},
                       "students": reps}, root / "table5_rft.json")
    print("\n".join(lines))
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("generate", "table"):
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[1] if len(argv) > 1 else "benchmarks/results/specialization")
    return generate(root) if argv[0] == "generate" else make_table(root)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
