"""Is the weight loss landscape flatter where the papers say? Two verdicts from `robust-distill landscape`.

The weight loss landscape (Wu et al., NeurIPS 2020, Sec. 3.1; AdaAD, CVPR 2023, Sec. 4.5 and Fig. 3) is the
adversarial loss g_k(s) = rho(w + s d_k) along random filter-normalised directions d_k, the PGD examples regenerated
at every perturbed weight (robust_distill/analysis/landscape.py). Its sharpness at |s| = a is the mean over the
directions of (g_k(a) + g_k(-a))/2 - g(0).

(a) Robust overfitting (Wu et al., Fig. 1): the last checkpoint of an overfitting PGD-AT run has a sharper landscape
    than its best (peak validation robustness) checkpoint. Every finished run under
    benchmarks/results/fashion_mnist/overfit*/ of REGIMES (status done, and best.pt and last.pt present or its landscape
    JSON already written): best.pt vs last.pt, at the run's own training threat. Wu et al.'s claim is about runs
    that overfit, so a run counts towards it only when its test PGD-20 gap (best - last, summary.json) is >= 3
    points; the other runs are reported as controls.
(b) Distillation (AdaAD, Sec. 4.5): the students of AD methods (AdaAD, RSLAD) have a flatter landscape than the
    PGD-AT student. The last.pt of the seed-0 PGD-AT, AdaAD and RSLAD runs of transfer_students_grid.yaml
    (convnet_s, 5k images, 3 epochs, batchmean KL; the distilled ones from the shipped PGD-AT convnet_m), at the
    benchmark's threat (eps 0.1, PGD-10 of 0.025). Holds when AdaAD's student and RSLAD's are both flatter. A caveat:
    3 epochs, where the paper watches epochs 100-180 of a 200-epoch run.

A comparison is paired by direction: with the same seed and architecture, direction k of both models comes from the
same Gaussian draws (each filter-normalised to its own model's weights), so the per-direction differences of the
sharpness are averaged, and "sharper" means a mean difference beyond 2 standard errors (over the directions) at the
verdict level (|s| = 0.5 of s_max by default); within 2 standard errors it is "no difference".

Cost per model: 1 + directions x (points - 1) PGD-10 runs on the test images; with the defaults (500 images, 10
directions, 11 points on [-1, 1]) 101 runs. Measured on one core while both cores ran other jobs (load ~7): convnet_s
2.0 s per run (3.3 min per model), convnet_m 14 s per run (24 min per model; its training log's PGD-20 on 500 images
in 10 s suggests ~8 min per model on a free core). --n-examples 200 divides the time by about 2.5.

    robust-distill bench benchmarks/fashion_mnist/transfer_students_grid.yaml    # (b)'s students among them
    python benchmarks/fashion_mnist/landscape_verdict.py --regimes overfit       # (a) on overfit/ (4 convnet_s
                                                                                 # models, ~13 min) and (b) (~10 min)
    python benchmarks/fashion_mnist/landscape_verdict.py                         # every finished overfit* run too:
                                                                                 # overfit_m/, overfit_eps/ (convnet_m,
                                                                                 # 4 models each: ~0.5-1.5 h each)

Each landscape is one JSON (and PNG) in the output folder (default benchmarks/results/fashion_mnist/landscape/),
reused when its settings match: the script is resumable, --no-run only reads; it writes landscape.md and
landscape.json there. One landscape by hand:

    robust-distill landscape RUN/best.pt RUN/last.pt --out ls.json --plot ls.png

Options: [--results benchmarks/results/fashion_mnist] [--out DIR] [--only overfit|students] [--regimes overfit ...]
[--students RUN ...] [--student-checkpoint last.pt|best.pt] [--n-examples 500 --directions 10 --points 11
--s-max 1 --seed 0 --level 0.5] [--no-run]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from robust_distill.analysis.landscape import sharpness
from robust_distill.cli import main as robust_distill

GAP = 0.03  # a run overfits when its test PGD-20 and APGD best - last are both at least this (overfit_verdict.py)
# the PGD-AT regimes (not overfit_sd's distilled students)
REGIMES = ("overfit", "overfit_m", "overfit_eps", "overfit_noise")
STUDENT_THREAT = ["--eps", "0.1", "--step-size", "0.025", "--steps", "10"]  # student_base.yaml's


def finished(run: Path, checkpoints: tuple[str, ...] = ()) -> bool:
    """``run`` has trained to the end (status done) and still holds ``checkpoints``."""
    status = run / "status.json"
    state = json.loads(status.read_text()).get("state") if status.is_file() else None
    return state == "done" and all((run / c).is_file() for c in checkpoints)


def landscape(models: list[str], out: Path, options: list[str], run: bool) -> dict | None:
    """The landscape JSON of ``models`` at ``out``: read when it exists with the same settings (the checkpoints
    may be gone: a fresh checkout keeps the JSONs, not the .pt files), else computed (``robust-distill landscape``)
    when ``run`` and every checkpoint is there, else None."""
    wanted = dict(zip(options[::2], options[1::2], strict=True))
    if out.is_file():
        data = json.loads(out.read_text())
        st = data["settings"]
        same = ([m["model"] for m in data["models"]] == models and st["n_examples"] == int(wanted["--n-examples"])
                and st["directions"] == int(wanted["--directions"]) and st["points"] == int(wanted["--points"])
                and math.isclose(st["s_max"], float(wanted["--s-max"])) and st["seed"] == int(wanted["--seed"]))
        if same:
            return data
    if not run or not all(Path(m).is_file() for m in models):
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    code = robust_distill(["landscape", *models, "--out", str(out), "--plot", str(out.with_suffix(".png")),
                           *options])
    if code != 0:
        raise SystemExit(f"robust-distill landscape {' '.join(models)} failed (exit {code})")
    return json.loads(out.read_text())


def rises(model: dict, level: float) -> list[float]:
    """(g_k(a) + g_k(-a))/2 - g(0) for each direction k (the summary's terms, before the mean)."""
    return [sharpness(model["s"], [curve], model["loss_0"], [level])[f"{level:g}"]["mean"] for curve in model["loss"]]


def compare(a: dict, b: dict, level: float) -> dict:
    """b's sharpness minus a's at ``level``, paired by direction: mean, standard error, and the reading."""
    diff = [rb - ra for ra, rb in zip(rises(a, level), rises(b, level), strict=True)]
    mean = sum(diff) / len(diff)
    se = math.sqrt(sum((d - mean) ** 2 for d in diff) / (len(diff) - 1) / len(diff)) if len(diff) > 1 else math.inf
    reading = "sharper" if mean > 2 * se else "flatter" if mean < -2 * se else "no difference"
    return {"difference": mean, "se": se, "reading": reading}


def fmt_sharp(model: dict, levels: list[str]) -> str:
    return " / ".join(f"{model['sharpness'][k]['mean']:.3f}" for k in levels)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def overfit_section(results: Path, out: Path, options: list[str], level: float, run: bool,
                    regimes: list[str] | None = None) -> tuple[list[str], dict]:
    def json_of(folder: Path) -> Path:
        return out / "overfit" / f"{folder.parent.name}__{folder.name}.json"

    runs = sorted(p.parent for p in results.glob("overfit*/*/status.json")
                  if p.parent.parent.name in (regimes or REGIMES)
                  and (finished(p.parent, ("best.pt", "last.pt"))
                       or finished(p.parent) and json_of(p.parent).is_file()))
    lines = ["## (a) Robust overfitting: best.pt vs last.pt (Wu et al. 2020, Fig. 1)", "",
             "Every finished run under `overfit*/`, both checkpoints at the run's own training threat. Test PGD-20 "
             "from the run's summary.json (1,000 test images); sharpness on the landscape's test images.", ""]
    if not runs:
        return lines + ["No finished run with best.pt and last.pt: no verdict.", ""], {"verdict": "no runs"}
    levels: list[str] = []
    rows, verdicts = [], []
    for folder in runs:
        name = f"{folder.parent.name}/{folder.name}"
        data = landscape([str(folder / "best.pt"), str(folder / "last.pt")], json_of(folder), options, run)
        if data is None:
            why = "--no-run" if not run else "its JSON has other settings and its checkpoints are gone"
            rows.append(f"| {name} | not computed ({why}) | | | | | |")
            continue
        levels = [f"{a:g}" for a in data["settings"]["levels"]]
        best, last = data["models"]
        final = (json.loads((folder / "summary.json").read_text()).get("final") or {}) \
            if (folder / "summary.json").is_file() else {}
        b, la = final.get("best", {}).get("pgd20"), final.get("last", {}).get("pgd20")
        gap = b - la if b is not None and la is not None else None
        ab, al = final.get("best", {}).get("autoattack_apgd"), final.get("last", {}).get("autoattack_apgd")
        c = compare(best, last, level)
        overfits = gap is not None and gap >= GAP and ab is not None and al is not None and ab - al >= GAP
        verdicts.append({"run": name, "overfits": overfits, "gap": gap, **c,
                         "best": best["sharpness"], "last": last["sharpness"], "seconds": best["seconds"]})
        rows.append(f"| {name} | {pct(b)} / {pct(la)} ({pct(gap)}) | {'yes' if overfits else 'no'} | "
                    f"{best['loss_0']:.3f} / {last['loss_0']:.3f} | {fmt_sharp(best, levels)} | "
                    f"{fmt_sharp(last, levels)} | {c['difference']:+.3f} ± {c['se']:.3f}: last {c['reading']} |")
    head = " / ".join(levels)
    lines += [f"| run | test PGD-20 best / last (gap) | overfits (gap >= 3) | adv. loss L(0) best / last | "
              f"sharpness best at |s| {head} | sharpness last at |s| {head} | last - best at |s| = {level:g} "
              f"(± 1 s.e.) |", "|---|---|---|---|---|---|---|", *rows, ""]
    over = [v for v in verdicts if v["overfits"]]
    if not verdicts:
        verdict = "no landscape computed: no verdict."
    elif not over:
        control = ", ".join(f"{v['run']}: last {v['reading']}" for v in verdicts)
        verdict = (f"**not testable here**: no run overfits (test PGD-20 gap >= 3 points), and Wu et al.'s claim is "
                   f"about runs that do. Controls: {control}.")
    else:
        sharper = [v for v in over if v["reading"] == "sharper"]
        holds = len(sharper) == len(over)
        verdict = (("**holds**" if holds else "**does not hold**") + f": the last checkpoint is sharper in "
                   f"{len(sharper)} of the {len(over)} overfitting runs ({', '.join(v['run'] for v in over)}).")
    return lines + [f"Verdict (a): {verdict}", ""], {"verdict": verdict, "runs": verdicts}


def students_section(folders: list[Path], out: Path, options: list[str], level: float, checkpoint: str,
                     run: bool) -> tuple[list[str], dict]:
    lines = ["## (b) Students: are AD students flatter than PGD-AT's at one moment? (after AdaAD, Sec. 4.5, Fig. 3)",
             ""]
    found = {}
    for folder in folders:
        if not (finished(folder, (checkpoint,)) or finished(folder) and (out / "students.json").is_file()):
            continue
        found.setdefault(_method(folder), folder)
    missing = [m for m in ("pgd_at", "adaad", "rslad") if m not in found]
    if "pgd_at" not in found or len(found) < 2:
        return lines + [f"Students missing ({', '.join(missing)}): train them with `robust-distill bench "
                        "benchmarks/fashion_mnist/transfer_students_grid.yaml`. No verdict.",
                        ""], {"verdict": "students missing"}
    models = [str(found[m] / checkpoint) for m in found]
    data = landscape(models, out / "students.json", options + STUDENT_THREAT, run)
    if data is None:
        why = "--no-run" if not run else "students.json has other settings or students and a checkpoint is gone"
        return lines + [f"Landscape not computed ({why}): no verdict.", ""], {"verdict": "not computed"}
    by_method = dict(zip(found, data["models"], strict=True))
    levels = [f"{a:g}" for a in data["settings"]["levels"]]
    base = by_method["pgd_at"]
    lines += [f"The {checkpoint} of each student ({', '.join(f'`{found[m]}`' for m in found)}), eps 0.1, PGD-10 of "
              "0.025.", "",
              f"| student | adv. loss L(0) | robust acc. at s = 0 | sharpness at |s| {' / '.join(levels)} | "
              f"minus PGD-AT's at |s| = {level:g} (± 1 s.e.) |", "|---|---|---|---|---|"]
    comparisons = {}
    for method, model in by_method.items():
        versus = "-"
        if method != "pgd_at":
            c = comparisons[method] = compare(base, model, level)
            versus = f"{c['difference']:+.3f} ± {c['se']:.3f}: {c['reading']}"
        lines.append(f"| {method} | {model['loss_0']:.3f} | {pct(model['accuracy_0'])} | {fmt_sharp(model, levels)} "
                     f"| {versus} |")
    ad = {m: c for m, c in comparisons.items() if m in ("adaad", "rslad")}
    holds = bool(ad) and all(c["reading"] == "flatter" for c in ad.values())
    readings = ", ".join(f"{m} {c['reading']} than PGD-AT" for m, c in ad.items())
    verdict = (("**holds**" if holds else "**does not hold**") + f": {readings}"
               + (f" (missing: {', '.join(missing)})" if missing else "") + ".")
    record = {"verdict": verdict, "comparisons": comparisons, "students": {m: str(f) for m, f in found.items()},
              "sharpness": {m: v["sharpness"] for m, v in by_method.items()},
              "seconds": {m: v["seconds"] for m, v in by_method.items()}}
    return lines + ["", f"Verdict (b): {verdict}", ""], record


def _method(folder: Path) -> str:
    for line in (folder / "config.yaml").read_text().splitlines():
        if line.startswith("method:"):
            return line.split(":", 1)[1].strip()
    return folder.name


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/fashion_mnist"))
    p.add_argument("--out", type=Path, default=None, help="default: RESULTS/landscape")
    p.add_argument("--only", choices=["overfit", "students"], default=None)
    p.add_argument("--regimes", nargs="+", default=None, metavar="NAME",
                   help=f"(a) only the runs of these folders of RESULTS (default: {' '.join(REGIMES)})")
    p.add_argument("--students", type=Path, nargs="+", default=None,
                   help="student run folders (default: the seed-0 PGD-AT, AdaAD and RSLAD runs of "
                        "transfer_students_grid.yaml)")
    p.add_argument("--student-checkpoint", choices=["last.pt", "best.pt"], default="last.pt")
    p.add_argument("--n-examples", default="500")
    p.add_argument("--directions", default="10")
    p.add_argument("--points", default="11")
    p.add_argument("--s-max", default="1")
    p.add_argument("--seed", default="0")
    p.add_argument("--level", type=float, default=None, help="|s| of the verdicts (default: s_max / 2)")
    p.add_argument("--no-run", action="store_true", help="only read the landscapes already computed")
    ns = p.parse_args(argv)
    out = ns.out or ns.results / "landscape"
    level = ns.level if ns.level is not None else float(ns.s_max) / 2
    if not 0 < level <= float(ns.s_max):
        p.error(f"--level {level:g}: the verdicts' |s| must be in (0, --s-max {float(ns.s_max):g}]")
    options = ["--n-examples", ns.n_examples, "--directions", ns.directions, "--points", ns.points,
               "--s-max", ns.s_max, "--seed", ns.seed, "--device", "cpu"]
    lines = ["# Weight loss landscapes: verdicts", "",
             f"`robust-distill landscape` ({ns.n_examples} test images, {ns.directions} filter-normalised directions, "
             f"{ns.points} points on [-{ns.s_max}, {ns.s_max}], PGD regenerated at every weight, seed {ns.seed}). "
             "Sharpness at |s| = a: mean over the directions of (L(a) + L(-a))/2 - L(0) (higher = sharper); "
             f"comparisons paired by direction at |s| = {level:g}, a difference counts beyond 2 standard errors.", ""]
    record = {"settings": {"options": options, "level": level}}
    if ns.only in (None, "overfit"):
        section, record["overfit"] = overfit_section(ns.results, out, options, level, not ns.no_run,
                                                    ns.regimes)
        lines += section
    if ns.only in (None, "students"):
        folders = ns.students or [ns.results / "transfer" / "students" / f"method={m},seed=0"
                                  for m in ("pgd_at", "adaad", "rslad")]
        section, record["students"] = students_section(folders, out, options, level, ns.student_checkpoint,
                                                       not ns.no_run)
        lines += section
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "landscape.md").write_text(text)
    (out / "landscape.json").write_text(json.dumps(record, indent=2) + "\n")
    return text


if __name__ == "__main__":
    print(main(sys.argv[1:]))
