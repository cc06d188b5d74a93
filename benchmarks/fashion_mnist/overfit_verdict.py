"""Is there a robust-overfitting regime on CPU, and does self-distillation behave in it as "Why robust teachers
fail" says? The verdicts of overfit_grid.yaml and overfit_sd_grid.yaml, computed from their run files.

For each run: the epoch of peak validation PGD-20 (the best checkpoint), that peak and the last epoch's value, and
the final test evaluation of both checkpoints (clean, PGD-20, AutoAttack APGD-CE+T). Issue 21 asks for a regime in
which best and last differ by at least 3 points: the verdict holds for a run when its test PGD-20 and APGD gaps
(best - last) are both >= 3 points.

The paper's self-distillation rows: a student of the teacher's best checkpoint stays near its peak (small
best - last gap), a student of its last checkpoint overfits (a larger gap, a lower final robust accuracy). The
claim holds here when, averaged over the seeds, the best-teacher students have both the smaller test APGD gap and
the higher last-checkpoint test APGD. Writes ``overfit_verdict.md`` into the results folder.

With ``overfit_noise/teacher_entropy.json`` (``robust-distill teacher-score`` of one run's best.pt and last.pt on
its S_U; docs/results.md has the commands) it adds the teachers' entropy on S_U, the paper's reading of its rows.

    python benchmarks/fashion_mnist/overfit_verdict.py [benchmarks/results/fashion_mnist]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from robust_distill.analysis.unlearnable import jaccard, unlearnable_sets
from robust_distill.files.atomic import read_json, read_jsonl
from robust_distill.files.checkpoint import load_checkpoint

GAP = 0.03  # best - last, on test accuracy


def run_rows(root: Path) -> list[dict]:
    """:func:`run_row` of every run under ``root`` validated at least once (a run just started is left out)."""
    return [row for p in sorted(root.glob("*/metrics.jsonl")) if (row := run_row(p.parent)) is not None]


def run_row(folder: Path) -> dict | None:
    rows = read_jsonl(folder / "metrics.jsonl", "metrics file")
    evaluated = [r for r in rows if "val_pgd20" in r]
    if not evaluated:
        return None
    peak = max(evaluated, key=lambda r: r["val_pgd20"])
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    final = summary.get("final") or {}
    return {"run": folder.name, "epochs": len(rows), "peak_epoch": peak["epoch"] + 1, "val_peak": peak["val_pgd20"],
            "val_last": evaluated[-1]["val_pgd20"], "train_loss": rows[-1].get("train_loss"),
            "decay": after_first_decay(rows), "best": final.get("best", {}), "last": final.get("last", {})}


def after_first_decay(rows: list[dict]) -> tuple[float, float, float] | None:
    """Rice et al.'s curve, read from a run's metrics: validation PGD-20 at the first lr decay (the last validation
    before the lr falls) and the lowest and highest validation after it; ``None`` if the lr never fell."""
    lr0 = rows[0].get("lr")
    decayed = [r["epoch"] for r in rows if lr0 is not None and r.get("lr", lr0) < lr0]
    if not decayed:
        return None
    before = [r["val_pgd20"] for r in rows if "val_pgd20" in r and r["epoch"] < decayed[0]]
    after = [r["val_pgd20"] for r in rows if "val_pgd20" in r and r["epoch"] >= decayed[0]]
    return (before[-1], min(after), max(after)) if before and after else None


def decay_cell(decay: tuple[float, float, float] | None) -> str:
    return "-" if decay is None else f"{pct(decay[0])} -> {pct(decay[1])}-{pct(decay[2])}"


def epochs_of(folder: Path) -> int:
    """The epochs the run was configured for (its config.yaml)."""
    return int(yaml.safe_load((folder / "config.yaml").read_text())["optim"]["epochs"])


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


REGIMES = (("overfit", "`overfit_grid.yaml`: PGD-AT convnet_s (24k parameters), 2,000 training images; 100 epochs, "
                        "lr 0.1 x0.1 at epochs 50 and 75, eps 0.1"),
           ("overfit_m", "`overfit_m_grid.yaml`: PGD-AT convnet_m (288k parameters), 1,000 training images; 100 "
                         "epochs, lr 0.1 x0.1 at epochs 50 and 75, eps 0.1"),
           ("overfit_eps", "`overfit_eps_grid.yaml`: PGD-AT convnet_m, 1,000 training images; 60 epochs, lr 0.1 x0.1 "
                           "at epochs 30 and 45, eps 0.2 (training and evaluation), wd 5e-4 and 0"),
           ("overfit_steps", "`overfit_steps_grid.yaml`: PGD-AT convnet_m, 1,000 training images in batches of 16 "
                             "(63 optimiser steps per epoch, 8x the others); 60 epochs, lr 0.05 x0.1 at epochs 30 and "
                             "45, eps 0.1, validation every 2 epochs"),
           ("overfit_small", "`overfit_small_grid.yaml`: PGD-AT convnet_m, 250 training images in batches of 16; "
                             "200 epochs, lr 0.05 x0.1 at epochs 100 and 150, eps 0.1, validation every 4 epochs"),
           ("overfit_long", "`overfit_long_grid.yaml`: PGD-AT convnet_m, 250 training images in batches of 16; "
                            "400 epochs, lr 0.05 x0.1 at epochs 200 and 300, eps 0.1, validation every 5 epochs, "
                            "per-sample PGD-20 on the 250 training images at each validation"),
           ("overfit_wide", "`overfit_wide_grid.yaml`: PGD-AT convnet_m at 1.5x its widths (48, 96, 192; 0.65M "
                            "parameters), no weight decay, 250 training images in batches of 16; 250 epochs, lr 0.05 "
                            "x0.1 at epochs 125 and 188, eps 0.1, validation every 5 epochs with per-sample PGD-20 on "
                            "the training images"),
           ("overfit_wide_eps", "`overfit_wide_eps_grid.yaml`: as overfit_wide at eps 0.15 (training and evaluation), "
                                "validation every 10 epochs"),
           ("overfit_noaug", "`overfit_noaug_grid.yaml`: overfit_m's run (PGD-AT convnet_m, 1,000 training images; "
                             "100 epochs, lr 0.1 x0.1 at epochs 50 and 75, eps 0.1) without data augmentation (every "
                             "earlier regime trained with random 2-pixel crops), validation every 2 epochs with "
                             "per-sample PGD-20 on 250 training images"),
           ("overfit_noise", "`overfit_noise_grid.yaml`: overfit_small's run (PGD-AT convnet_m, 250 training images in "
                             "batches of 16; 200 epochs, lr 0.05 x0.1 at epochs 100 and 150, eps 0.1) with symmetric "
                             "label noise on the training images (`data.label_noise` 0.2 and 0.4: that fraction of "
                             "their labels moved to another class; validation and test labels clean), validation every "
                             "5 epochs with per-sample PGD-20 on the 250 training images"))


#: Why the nine clean-label tries did not overfit (their numbers are in the tables above).
CLEAN_LABELS = [
    "Why the first nine tries (clean labels) did not overfit, from the same files: robust overfitting (Rice et al. "
    "2020) sets in once a model fits its training adversarial examples, i.e. the adversarial training loss falls "
    "towards 0 after the lr decay. In the first five it does not: the last training loss (adversarial CE) is "
    "0.3-0.8 at eps 0.1 and above 1.1 at eps 0.2, with or without weight decay, and 8x the optimiser steps "
    "(overfit_steps: 3,780 steps of batch 16) leave it at 0.54, so the number of steps is not what is missing. "
    "The sixth (overfit_long: 250 images, 400 epochs) is the first to fit its training set under attack "
    "(adversarial CE 0.14) and the first with a positive gap, 2.3 / 2.1 points, under the 3 asked for. Tries seven "
    "to nine removed, one at a time, what could hold memorisation back: more capacity and no weight decay "
    "(overfit_wide), a larger radius on top (overfit_wide_eps, eps 0.15), and data augmentation (overfit_noaug). "
    "None reaches a 3-point validation gap and none shows Rice et al.'s curve, a jump at the lr decay followed by "
    "a decline: after the first decay validation PGD-20 rises or holds (the column \"at the 1st lr decay -> "
    "after\"), so peak - last there is the maximum over noisy validations. The test evaluations of overfit_wide and "
    "overfit_noaug (APGD-CE+T on 1,000 images, about 40 min per checkpoint on a shared core) were stopped; the same "
    "`bench` command resumes them while the checkpoints exist. The tenth (overfit_noise) adds the lever Dong et al. "
    "2022 identify, label noise on the training images.", ""]


def setting(run: str) -> str:
    """A run folder's name without its seed (``label_noise=0.4,seed=0`` -> ``label_noise=0.4``): runs of one
    setting share their training labels, so S_U may be taken over them together."""
    return ",".join(part for part in run.split(",") if not part.startswith("seed="))


def noisy_indices(run: Path) -> set[int] | None:
    """The recorded training images whose label ``data.label_noise`` changed (``None``: clean labels)."""
    rec = load_checkpoint(run / "train_records.pt")
    return set(rec["indices"][rec["noisy"]].tolist()) if "noisy" in rec else None


def su_peak_vs_last(runs: list[Path], overfit: list[str]) -> list[str]:
    """S_U at each run's peak robust epoch (the paper's rule) against S_U at its last epoch, for the runs of one
    setting that kept per-sample training records (``eval.train_records``); with label noise, how many members of
    each S_U carry a wrong label (scored against the label the model was trained on).

    Verdict (fixed before the runs): the peak-epoch rule matters in an overfitting regime when S_U at the last
    epoch keeps less than 80% of S_U at the peak (Jaccard index < 0.8), in a regime whose runs overfit.
    """
    if not runs:
        return []
    peak, last = unlearnable_sets(runs, at="peak"), unlearnable_sets(runs, at="last")
    a, b = set(peak["indices_unlearnable"]), set(last["indices_unlearnable"])
    j = jaccard(a, b)
    kept = len(a & b) / len(a) if a else float("nan")
    who = ("one run: the training images this model misclassifies under PGD-20" if len(runs) == 1
           else f"{len(runs)} runs: the training images every run misclassifies under PGD-20")
    name = setting(runs[0].name)
    noisy = noisy_indices(runs[0])
    head = "| epoch rule | |S_U| | |S_L| |" + (" noisy labels in S_U |" if noisy is not None else "")
    rows = (("peak (the paper's)", peak, a), ("last", last, b))
    lines = [f"### S_U at the peak epoch vs the last{f' ({name})' if name else ''}", "",
             f"From `train_records.pt` ({who}; {peak['n_recorded']} images recorded"
             + (f", {len(noisy)} of them with a noisy label" if noisy is not None else "") + "). Peak epoch(s): "
             f"{', '.join(str(e + 1) for e in peak['runs'].values())}; last: "
             f"{', '.join(str(e + 1) for e in last['runs'].values())}.", "",
             head, "|---|---|---|" + ("---|" if noisy is not None else "")]
    lines += [f"| {label} | {sets['size_unlearnable']} | {sets['size_learnable']} |"
              + (f" {len(members & noisy)} |" if noisy is not None else "") for label, sets, members in rows]
    lines += ["", f"S_U at the last epoch keeps {len(a & b)} of the peak's {len(a)} ({pct(kept)}%) and adds "
              f"{len(b - a)}; Jaccard {j:.3f}.", ""]
    if not overfit:
        return lines + ["Verdict: no run of this regime overfits (gap < 3 points), so this does not test the "
                        "paper's reason for the peak-epoch rule.", ""]
    matters = j < 0.8
    return lines + ["Verdict: in this overfitting regime the peak-epoch rule " +
                    ("**changes S_U** (Jaccard < 0.8): the paper's premise, S_U taken at each model's peak, matters."
                     if matters else "**barely changes S_U** (Jaccard >= 0.8)."), ""]


def regime(root: Path, what: str) -> tuple[list[str], list[str]]:
    """One regime's table and verdict lines, and the runs in which the gap holds."""
    runs = run_rows(root)
    lines = [f"## {root.name}", "", f"From `{root}` ({what}). "
             "Test numbers on the first 1,000 test images; gap = best checkpoint - last checkpoint.", "",
             "| run | epochs done | last train loss (adv. CE) | peak epoch (val PGD-20) | val PGD-20 peak / last | "
             "val PGD-20 at the 1st lr decay -> after (min-max) | test clean best / last | "
             "test PGD-20 best / last (gap) | test APGD-CE+T best / last (gap) | gap >= 3 points |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    overfit = []
    for r in runs:
        b, la = r["best"], r["last"]
        gaps = [b[a] - la[a] for a in ("pgd20", "autoattack_apgd") if a in b and a in la]
        holds = len(gaps) == 2 and min(gaps) >= GAP
        if holds:
            overfit.append(f"{root.name}/{r['run']}")
        lines.append(
            f"| {r['run']} | {r['epochs']} | {r['train_loss']:.2f} | "
            f"{r['peak_epoch']} | {pct(r['val_peak'])} / {pct(r['val_last'])} | {decay_cell(r['decay'])} | "
            f"{pct(b.get('clean'))} / {pct(la.get('clean'))} | {pct(b.get('pgd20'))} / {pct(la.get('pgd20'))} "
            f"({pct(gaps[0]) if gaps else '-'}) | {pct(b.get('autoattack_apgd'))} / {pct(la.get('autoattack_apgd'))} "
            f"({pct(gaps[1]) if len(gaps) > 1 else '-'}) | {'yes' if holds else 'no'} |")
    finished = bool(runs) and all(r["best"] for r in runs)
    trained = bool(runs) and all(r["epochs"] == epochs_of(root / r["run"]) for r in runs)
    if overfit:
        verdict = f"a best/last gap of >= 3 points: {', '.join(overfit)}."
    elif finished:
        verdict = "no run shows a best/last gap of >= 3 points on both test PGD-20 and APGD."
    elif trained and all(r["val_peak"] - r["val_last"] < GAP for r in runs):
        verdict = ("every run has trained all its epochs but the test evaluation was not run (re-running the grid's "
                   "`bench` command does it); on validation no run overfits: peak - last PGD-20 < 3 points in each.")
    else:
        verdict = "not every run has finished (no final evaluation yet): no verdict."
    recorded = [p.parent for p in sorted(root.glob("*/train_records.pt")) if (p.parent / "summary.json").is_file()]
    lines += ["", f"Verdict: {verdict}", ""]
    for name in sorted({setting(r.name) for r in recorded}):
        group = [r for r in recorded if setting(r.name) == name]
        lines += su_peak_vs_last(group, [o for o in overfit if setting(o.split("/")[-1]) == name])
    return lines, overfit


def main(results: Path) -> str:
    lines = ["# Robust overfitting on 2 CPU cores: verdicts", "",
             "Issue 21 asks for a regime in which the best and the last checkpoint differ by >= 3 points (test "
             "PGD-20 and AutoAttack APGD-CE+T both), to test self-distillation best vs last, S_U at the peak epoch "
             "and the patch model's robust error in it.", ""]
    found = []
    for name, what in REGIMES:
        if (results / name).is_dir():
            section, overfit = regime(results / name, what)
            lines += section
            found += overfit
    lines += ["Overall: " + (f"a regime exists ({', '.join(found)})." if found else "no regime found yet."), ""]
    lines += CLEAN_LABELS
    lines += self_distillation(results / "overfit_sd")
    if (results / "overfit_sd_t1").is_dir():
        lines += self_distillation(results / "overfit_sd_t1", min_seeds=1)
    lines += teacher_entropy(results / "overfit_noise" / "teacher_entropy.json")
    text = "\n".join(lines) + "\n"
    (results / "overfit_verdict.md").write_text(text)
    return text


PAPER_SD = ("The paper's table (qualitative, CIFAR-10): Self-Distill (Best): high peak robust accuracy, final near "
            "the peak, no overfitting; Self-Distill (Last): moderate peak, significant decline, overfitting; standard "
            "PGD-AT: moderate peak, significant decline (here the teacher's own row in its regime's table above).")


def teacher_of(run: Path) -> str:
    """The robust teacher's checkpoint path of a student run (its config.yaml)."""
    robust = yaml.safe_load((run / "config.yaml").read_text())["teachers"]["robust"]
    return (robust["key"] if isinstance(robust, dict) else robust).removeprefix("checkpoint:")


def self_distillation(folder: Path, min_seeds: int = 2) -> list[str]:
    """The self-distillation table and verdict of one teacher run's students (``overfit_sd_grid.yaml``: 2 seeds per
    checkpoint; ``overfit_sd_t1_grid.yaml``, a second teacher run: 1), or a line saying it has not run."""
    runs = run_rows(folder)
    if not runs:
        return ["", f"## Self-distillation: best vs last teacher ({folder.name})", "", f"No runs in `{folder}` yet."]
    teacher = {r["run"]: Path(teacher_of(folder / r["run"])) for r in runs}  # .../best.pt or .../last.pt
    teachers = sorted({str(t.parent) for t in teacher.values()})
    lines = ["", f"## Self-distillation: best vs last teacher ({folder.name})", "",
             f"From `{folder}` (`benchmarks/fashion_mnist/{folder.name}_grid.yaml`: RSLAD students, batchmean KL, of "
             f"the best and the last checkpoint of `{', '.join(teachers)}`, in the teacher's regime).", "",
             "| student | peak epoch | val PGD-20 peak / last | test PGD-20 best / last "
             "| test APGD best / last (gap) |",
             "|---|---|---|---|---|"]
    by_teacher: dict[str, list[tuple[float, float, float]]] = {}
    for r in runs:
        b, la = r["best"], r["last"]
        both = "autoattack_apgd" in b and "autoattack_apgd" in la
        gap = b["autoattack_apgd"] - la["autoattack_apgd"] if both else None
        if gap is not None:
            row = (gap, la["autoattack_apgd"], b["autoattack_apgd"])
            by_teacher.setdefault(teacher[r["run"]].stem, []).append(row)
        lines.append(f"| {r['run']} | {r['peak_epoch']} | {pct(r['val_peak'])} / {pct(r['val_last'])} | "
                     f"{pct(b.get('pgd20'))} / {pct(la.get('pgd20'))} | {pct(b.get('autoattack_apgd'))} / "
                     f"{pct(la.get('autoattack_apgd'))} ({pct(gap)}) |")
    if set(by_teacher) != {"best", "last"} or any(len(v) < min_seeds for v in by_teacher.values()):
        return lines + ["", f"Verdict: not every student has finished ({min_seeds} seed(s) per teacher): no verdict."]
    mean = {t: [sum(x[i] for x in v) / len(v) for i in range(3)] for t, v in by_teacher.items()}
    holds = mean["best"][0] < mean["last"][0] and mean["best"][1] > mean["last"][1]
    return lines + ["", f"Mean over the seeds, best-teacher students: APGD gap {pct(mean['best'][0])}, last "
                    f"checkpoint {pct(mean['best'][1])}; last-teacher students: gap {pct(mean['last'][0])}, last "
                    f"checkpoint {pct(mean['last'][1])}. Peak (best checkpoint) APGD: {pct(mean['best'][2])} and "
                    f"{pct(mean['last'][2])}.", "", PAPER_SD, "",
                    "Verdict: the paper's self-distillation rows " + ("**hold**" if holds else "**do not hold**") +
                    " here (smaller gap and higher final robust accuracy from the best checkpoint as teacher)."]


def teacher_entropy(path: Path) -> list[str]:
    """The paper's reason for its self-distillation rows, from a ``robust-distill teacher-score`` JSON of one run's
    best.pt and last.pt: the early (best) checkpoint is uncertain on S_U, the overfitted (last) one confident.
    Holds when the best checkpoint's mean entropy on S_U is the higher."""
    if not path.is_file():
        return []
    rows = {Path(r["teacher"].removeprefix("checkpoint:")).stem: r
            for r in read_json(path, "teacher-score file")["teachers"]}
    if set(rows) != {"best", "last"}:
        return ["", f"`{path}` scores {', '.join(sorted(rows))}, not one run's best.pt and last.pt: no verdict."]
    best, last = rows["best"], rows["last"]
    run = Path(best["teacher"].removeprefix("checkpoint:")).parent
    cells = [f"| {name} | {r['unlearnable']['entropy']:.3f} | {pct(r['unlearnable']['confidence'])} | "
             f"{r['learnable']['entropy']:.3f} | {pct(r['learnable']['confidence'])} |"
             for name, r in (("best (peak epoch)", best), ("last", last))]
    holds = best["unlearnable"]["entropy"] > last["unlearnable"]["entropy"]
    drop = {k: best[k]["entropy"] - last[k]["entropy"] for k in ("unlearnable", "learnable")}
    where = ("more on S_U than on S_L: the last checkpoint grew confident on S_U above all"
             if drop["unlearnable"] > drop["learnable"] else
             "no more on S_U than on S_L: the last checkpoint is more confident everywhere, not on S_U alone")
    return ["", "### Why, by the paper: the teachers' entropy on S_U", "",
            f"`robust-distill teacher-score` of `{run}`'s two checkpoints on that run's S_U and S_L at its peak epoch "
            f"({best['unlearnable']['n']} and {best['learnable']['n']} training images; `{path}`). Confidence: "
            "on the image's clean class.", "",
            "| checkpoint | entropy on S_U (nats) | confidence on S_U (%) | entropy on S_L (nats) "
            "| confidence on S_L (%) |",
            "|---|---|---|---|---|", *cells, "",
            "Verdict: the early checkpoint is " + ("**less confident on S_U** than the last (higher entropy), as the "
                                                   "paper's reading of its rows says." if holds else
                                                   "**not** less confident on S_U than the last: the paper's reading "
                                                   "of its rows does not hold here."),
            "", f"From best to last the entropy falls by {drop['unlearnable']:.3f} nats on S_U and "
                f"{drop['learnable']:.3f} on S_L, {where}."]


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/fashion_mnist")))
