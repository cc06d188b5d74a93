"""The grid and analysis commands: ``bench``, ``report``, ``unlearnable``, ``teacher-score``, ``specialization``,
``prune``, ``select-teacher``, ``landscape``, ``invert``."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from robust_distill import hookimpl
from robust_distill.analysis.bench import load_grid, run_grid
from robust_distill.analysis.inversion import STARTS, format_study, inversion_study, plot_inversions
from robust_distill.analysis.landscape import DEFAULT_LEVELS, landscape_problems, plot_landscapes, weight_landscape
from robust_distill.analysis.report import build_report
from robust_distill.analysis.select_teacher import Identification, format_selection, select_teacher
from robust_distill.analysis.specialization_report import specialization_report, write_report
from robust_distill.analysis.subspace import InputSubspace, first_layer, fit_input_subspace
from robust_distill.analysis.unlearnable import EPOCH_RULES, set_images, teacher_scores, unlearnable_sets
from robust_distill.api import resolve_model
from robust_distill.cli import command, common_problems, integer, radius
from robust_distill.config import read_yaml
from robust_distill.core.manager import get_registries
from robust_distill.core.preflight import check_output_dir, check_output_file
from robust_distill.core.registry import UnknownNameError
from robust_distill.core.threat import ThreatModel, parse_fraction
from robust_distill.data.memory import to_float
from robust_distill.data.splits import split_images
from robust_distill.engine.distributed import resolve_device
from robust_distill.engine.evaluation import make_eval_attacks
from robust_distill.engine.pruning import prune_checkpoint
from robust_distill.errors import ConfigError, InputError, SelectionError
from robust_distill.files.atomic import atomic_write_json, atomic_write_text, read_json
from robust_distill.files.checkpoint import load_checkpoint
from robust_distill.results.tables import markdown_table

__all__: list[str] = []


# -- bench ----------------------------------------------------------------------------------------


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", help="grid YAML (see robust_distill/analysis/bench.py)")
    p.add_argument("--parallel", type=integer(1), default=None, help="runs at a time (default: the grid's)")
    p.add_argument("--launcher", choices=("local", "submitit"), default=None,
                   help="local processes, or one submitit job per run (default: the grid's launcher, else local)")
    p.add_argument("--slots-per-gpu", type=integer(1), default=None, metavar="K",
                   help="local launcher: K runs at a time on each visible GPU (default: the grid's)")
    p.add_argument("--dry-run", action="store_true", help="validate every run and the launcher, list their states")


@command("bench", "run a grid of training runs (methods x teachers x students x seeds x ...), resumably", _bench_args,
         interrupted="the same `robust-distill bench` command skips finished runs and resumes the others.")
def cmd_bench(ns: argparse.Namespace) -> int:
    states = run_grid(load_grid(ns.grid), get_registries(), parallel=ns.parallel, dry_run=ns.dry_run,
                      launcher=ns.launcher, slots_per_gpu=ns.slots_per_gpu)
    for name, state in states.items():
        print(f"{state:<12} {name}")
    return 1 if any(s == "failed" for s in states.values()) else 0


# -- report ---------------------------------------------------------------------------------------


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="folders holding run folders (bench output_dirs)")
    p.add_argument("--out", default=None, help="where to write report.md/.csv and plots (default: the first)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=V1,V2",
                   help="keep only runs whose config KEY is one of the values, e.g. --where method=adaad,rslad")
    p.add_argument("--title", default=None, help="report title (default: the folders)")
    p.add_argument("--teacher-scores", default=None, help="teacher-score JSON: adds the rank correlation between "
                                                          "teacher entropy on S_U and student robustness")
    p.add_argument("--no-plots", action="store_true")


@command("report", "Markdown/CSV tables (mean ± std over seeds, best and last) and PNG plots of finished runs",
         _report_args)
def cmd_report(ns: argparse.Namespace) -> int:
    problems = [f"--where {item!r}: expected KEY=V1,V2, e.g. --where method=adaad,rslad." for item in ns.where
                if not re.fullmatch(r"[^=\s]+=.+", item)]
    if ns.out is not None and (problem := check_output_dir(ns.out)):
        problems.append(f"--out: {problem}")
    if problems:
        raise ConfigError(problems, "report arguments")
    scores = read_json(ns.teacher_scores, "--teacher-scores file") if ns.teacher_scores else None
    where = {k: v.split(",") for k, _, v in (item.partition("=") for item in ns.where)}
    result = build_report(ns.results, ns.out, teacher_scores=scores, plots=not ns.no_plots, where=where,
                          title=ns.title)
    print(result["markdown"])
    print("\nwrote: " + ", ".join(result["files"]))
    return 0


# -- unlearnable ----------------------------------------------------------------------------------


def _unlearnable_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders trained with eval.train_records: N")
    p.add_argument("--out", default="unlearnable.json", help="output JSON (indices of S_U and S_L)")
    p.add_argument("--at", choices=EPOCH_RULES, default="peak",
                   help="each run's records at its peak robust epoch (the paper's rule) or at its last one")


@command("unlearnable", "the robustly unlearnable set S_U and learnable set S_L of a set of runs", _unlearnable_args)
def cmd_unlearnable(ns: argparse.Namespace) -> int:

    if problem := check_output_file(ns.out):
        raise ConfigError([f"--out: {problem}"], "unlearnable arguments")
    sets = unlearnable_sets(ns.runs, at=ns.at)
    cfg = yaml.safe_load((Path(ns.runs[0]) / "config.yaml").read_text())
    sets["data"] = {k: cfg["data"].get(k) for k in ("dataset", "root", "options")}
    atomic_write_json(sets, ns.out)
    print(f"S_U (robustly unlearnable): {sets['size_unlearnable']} samples; S_L (learnable): "
          f"{sets['size_learnable']}; of {sets['n_recorded']} recorded, over {len(ns.runs)} runs -> {ns.out}")
    return 0


# -- teacher-score ---------------------------------------------------------------------------------


def _teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teachers", nargs="+", required=True,
                   help="model specs (checkpoint:..., robustbench:..., timm:...) or run folders (their best.pt)")
    p.add_argument("--unlearnable", required=True, help="JSON written by `robust-distill unlearnable`")
    p.add_argument("--out", default="teacher_scores.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=integer(1), default=500)


def _spec(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        return f"checkpoint:{path / 'best.pt'}"
    return text


@command("teacher-score", "rank candidate teachers by entropy on S_U (higher predicts a better student)",
         _teacher_args)
def cmd_teacher_score(ns: argparse.Namespace) -> int:

    regs = get_registries()
    _check_common(ns, "teacher-score")
    sets = read_json(ns.unlearnable, "--unlearnable file")
    if not isinstance(sets, dict) or "indices_unlearnable" not in sets:
        raise InputError(f"--unlearnable {ns.unlearnable!r} is not a file written by `robust-distill unlearnable`.")
    data = sets.get("data", {})
    dataset = data.get("dataset", "cifar10")
    teachers = {}
    for text in ns.teachers:
        model, _, _ = resolve_model(_spec(text), {}, dataset, regs, data.get("options") or {}, data.get("root"))
        teachers[_spec(text)] = model
    # only the images of S_U and S_L are read (a streamed dataset is never loaded whole): index them anew
    used = sorted({*sets["indices_unlearnable"], *sets["indices_learnable"]})
    x_used, y_used = set_images(sets, used, regs)
    position = {index: i for i, index in enumerate(used)}
    local = {**sets, **{k: [position[i] for i in sets[k]] for k in ("indices_unlearnable", "indices_learnable")}}
    rows = teacher_scores(teachers, x_used, y_used, local, batch_size=ns.batch_size, device=resolve_device(ns.device))
    atomic_write_json({"unlearnable": ns.unlearnable, "teachers": rows}, ns.out)
    table = [{"rank": r["rank"], "teacher": r["teacher"], "h_u": r["unlearnable"]["entropy"],
              "c_u": r["unlearnable"]["confidence"], "h_l": r["learnable"]["entropy"],
              "c_l": r["learnable"]["confidence"]} for r in rows]
    for row in table:  # entropies in nats, not percentages
        row["h_u"], row["h_l"] = f"{row['h_u']:.4f}", f"{row['h_l']:.4f}"
    print(markdown_table(table, [("rank", "rank"), ("teacher", "teacher"), ("h_u", "entropy on S_U (nats)"),
                                 ("c_u", "true-class conf. on S_U (%)"), ("h_l", "entropy on S_L (nats)"),
                                 ("c_l", "true-class conf. on S_L (%)")]))
    print(f"\n|S_U| = {sets['size_unlearnable']}, |S_L| = {sets['size_learnable']}; higher entropy on S_U "
          f"= predicted better teacher. -> {ns.out}")
    return 0


def _check_common(ns: argparse.Namespace, command: str) -> None:
    problems = common_problems(ns)
    if problems:
        raise ConfigError(problems, f"{command} arguments")


# -- specialization --------------------------------------------------------------------------------


def _check_specialization_args(ns: argparse.Namespace, regs: Any) -> tuple[list[tuple[str, str]], tuple[float, float]]:
    problems = []
    pairs = [tuple(item.split("=", 1)) for item in ns.layers.split(",")]
    if not all(len(p) == 2 and p[0].strip() and p[1].strip() for p in pairs):
        problems.append(f"--layers {ns.layers!r}: expected TEACHER_LAYER=STUDENT_LAYER pairs separated by commas, "
                        "e.g. features.2=features.1,features.11=features.7.")
    thresholds = (0.8, 0.9)
    try:
        low, high = (float(v) for v in ns.thresholds.split(","))
        thresholds = (low, high)
        if not -1 <= low <= high <= 1:
            raise ValueError
    except ValueError:
        problems.append(f"--thresholds {ns.thresholds!r}: expected LOW,HIGH with -1 <= LOW <= HIGH <= 1, e.g. 0.8,0.9.")
    problems += common_problems(ns, regs, out=check_output_dir)
    if problems:
        raise ConfigError(problems, "specialization arguments")
    return pairs, thresholds  # type: ignore[return-value]


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="model spec or checkpoint file")
    p.add_argument("--student", required=True, help="model spec or checkpoint file")
    p.add_argument("--layers", required=True,
                   help="comma-separated TEACHER_LAYER=STUDENT_LAYER pairs of module names, e.g. "
                        "features.2=features.1,features.11=features.7; the first pair is the lowest layer")
    p.add_argument("--dataset", default=None)
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--n-examples", type=integer(1), default=1000)
    p.add_argument("--adversarial", action="store_true", help="use PGD-20 examples crafted against the student")
    p.add_argument("--eps", type=radius, default=None,
                   help="radius for --adversarial and --robustness (default: the student's training eps)")
    p.add_argument("--thresholds", default="0.8,0.9", help="unspecialized below, specialized above")
    p.add_argument("--first-conv", default=None, metavar="TEACHER_CONV=STUDENT_CONV",
                   help="the lowest convolutions whose weights give epsilon_in/out (default: each network's first "
                        "Conv2d)")
    p.add_argument("--subspace", default=None, help="an input-subspace file (input_subspace.pt) instead of a new PCA")
    p.add_argument("--pca-k", type=integer(1), default=None, help="directions of the input subspace (default: by "
                                                           "--pca-variance)")
    p.add_argument("--pca-variance", type=float, default=0.99,
                   help="keep the top directions holding this fraction of the patch variance (default 0.99)")
    p.add_argument("--pca-images", type=integer(1), default=5000, help="training images whose patches the PCA uses")
    p.add_argument("--no-epsilon", action="store_true", help="skip the input subspace and epsilon_in/out")
    p.add_argument("--robustness", action="store_true",
                   help="also the student's agreement with the teacher under oracle PGD-20 (2 restarts: both, "
                        "in-plane, out-of-plane) and data PGD-20, at --eps")
    p.add_argument("--out", default="specialization", help="output folder (JSON, input_subspace.pt, plots)")
    p.add_argument("--device", default="auto")


@command("specialization", "teacher-student node alignment: NC, BNC, MBNC, ratio; epsilon_in/out of the lowest layer",
         _spec_args)
def cmd_specialization(ns: argparse.Namespace) -> int:
    regs = get_registries()
    pairs, thresholds = _check_specialization_args(ns, regs)
    device = resolve_device(ns.device)
    student, dataset, s_ckpt = resolve_model(_spec(ns.student), {}, ns.dataset, regs)
    teacher, _, _ = resolve_model(_spec(ns.teacher), {}, dataset, regs)
    data_cfg = s_ckpt.get("config", {}).get("data", {}) if s_ckpt else {}
    bundle = regs.call(regs.datasets.get(dataset).load, root=data_cfg.get("root"), **data_cfg.get("options", {}))
    x, y = split_images(bundle, ns.split, n=ns.n_examples)
    trained_eps = s_ckpt.get("config", {}).get("threat", {}).get("eps", 8 / 255)
    eps = ns.eps if ns.eps is not None else parse_fraction(trained_eps)
    if ns.adversarial:
        attack = make_eval_attacks(["pgd20"], regs, ThreatModel(eps=eps), num_classes=bundle.info.num_classes)["pgd20"]
        student = student.to(device).eval()
        x = attack(student, to_float(x, device), y.to(device)).cpu()
    low, high = thresholds
    convs = tuple(ns.first_conv.split("=", 1)) if ns.first_conv else (None, None)
    out = Path(ns.out)
    subspace = None
    if not ns.no_epsilon:
        if ns.subspace:
            subspace = InputSubspace.load(ns.subspace)
            subspace = subspace.with_k(ns.pca_k) if ns.pca_k else subspace
        else:
            subspace = fit_input_subspace(bundle.train_x[:ns.pca_images], first_layer(teacher, convs[0])[1],
                                          k=ns.pca_k, explained_variance=ns.pca_variance)
        subspace.save(out / "input_subspace.pt")
    robustness = {"eps": eps, "step_size": eps / 4, "steps": 20} if ns.robustness else None
    report = specialization_report(teacher, student, pairs, x, subspace=subspace, first_conv=convs,  # type: ignore[arg-type]
                                   robustness=robustness, device=device, thresholds=(low, high))
    report.update(teacher=ns.teacher, student=ns.student, adversarial=ns.adversarial)
    files = write_report(report, out, title=f"{ns.student} vs {ns.teacher}" + (" (adversarial inputs)"
                                                                             if ns.adversarial else ""))
    rows: list[dict[str, Any]] = [
        {"layer": f"{s['teacher_layer']} ~ {s['student_layer']}", "nodes": s["nodes"], "mbnc": f"{s['mbnc']:.3f}",
         "unspec": s["unspecialized"], "spec": s["specialized"],
         "ratio": "inf" if s["ratio"] is None else f"{s['ratio']:.3f}"} for s in report["layers"]]
    print(markdown_table(rows, [("layer", "teacher layer ~ student layer"), ("nodes", "teacher nodes"),
                                ("mbnc", "MBNC"), ("unspec", f"BNC < {low}"), ("spec", f"BNC > {high}"),
                                ("ratio", "unspecialized / specialized")]))
    if subspace is not None:
        e = report["epsilon"]
        print(f"\nInput subspace: {subspace.describe()}.\nLowest layer ({e['layer']}), each teacher node with its "
              f"best-NC student node: mean epsilon_in {e['mean_eps_in']:.3f}, mean epsilon_out {e['mean_eps_out']:.3f};"
              f" Pearson(NC, epsilon_in) over all pairs {e['pearson_nc_eps_in']:.3f}, Pearson(NC, epsilon_out) "
              f"{e['pearson_nc_eps_out']:.3f}.")
    if robustness:
        r = report["robustness"]
        print("\nAgreement with the teacher (%): " + ", ".join(f"{k} {100 * v:.2f}" for k, v in r.items())
              + f" (eps {eps:g}, PGD-20)")
    print("\n-> " + ", ".join(str(f) for f in files))
    return 0


# -- prune ----------------------------------------------------------------------------------------


def _prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a robust-distill checkpoint of a prunable network (timm:tsconv4_*)")
    p.add_argument("--out", required=True, help="the pruned checkpoint")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--threshold", type=float, help="inactive: fan-out norm below this fraction of the layer's "
                                                       "largest")
    group.add_argument("--widths", help="channels to keep per layer, largest fan-out norms first, e.g. 45,32,32,20")
    p.add_argument("--student-scale", type=float, default=1.1, help="student widths to print: this x the pruned ones")
    p.add_argument("--n-check", type=integer(0), default=1000, help="test images on which the logit change is measured")


@command("prune", "remove the inactive channels of a trained teacher by fan-out norm (specialization paper)",
         _prune_args)
def cmd_prune(ns: argparse.Namespace) -> int:
    regs = get_registries()
    ckpt = load_checkpoint(ns.checkpoint)
    data_cfg = ckpt.get("config", {}).get("data", {})
    check_x = None
    if ns.n_check and data_cfg.get("dataset"):
        bundle = regs.call(regs.datasets.get(data_cfg["dataset"]).load, root=data_cfg.get("root"),
                           **data_cfg.get("options", {}))
        check_x = bundle.test_x[:ns.n_check]
    widths = [int(w) for w in ns.widths.split(",")] if ns.widths else None
    report = prune_checkpoint(ns.checkpoint, ns.out, regs, threshold=ns.threshold, widths=widths, check_x=check_x,
                              student_scale=ns.student_scale)
    atomic_write_json(report, Path(ns.out).with_suffix(".json"))
    print(f"widths {'-'.join(map(str, report['widths_before']))} -> {'-'.join(map(str, report['widths_after']))}; "
          f"a student {ns.student_scale:g}x: {'-'.join(map(str, report['student_widths']))}")
    if check_x is not None:
        print(f"on {report['check_images']} test images: largest logit change {report['max_abs_logit_change']:.3g}, "
              f"predictions changed {100 * report['prediction_changes']:.2f}%")
    print(f"-> {ns.out}, {Path(ns.out).with_suffix('.json')}")
    return 0


# -- select-teacher --------------------------------------------------------------------------------


def _select_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", required=True, help="the student to distil, e.g. timm:convnet_s")
    p.add_argument("--teachers", nargs="+", required=True,
                   help="candidate teachers: model specs (checkpoint:..., robustbench:..., timm:...), checkpoint "
                        "files or run folders (their best.pt)")
    p.add_argument("--dataset", default=None, help="default: the dataset a teacher checkpoint was trained on")
    p.add_argument("--eps", type=radius, default=None,
                   help="L-inf radius of the identification runs, e.g. 8/255 (default: a teacher checkpoint's "
                        "training radius, else the config's)")
    p.add_argument("--methods", nargs="+", default=["pgd_at", "trades"], help="adversarial training methods of "
                                                                               "the identification runs")
    p.add_argument("--seeds", nargs="+", type=integer(0), default=[0, 1], help="seeds of each method's runs")
    p.add_argument("--epochs", type=integer(1), default=None, help="epochs of each identification run (default 3)")
    p.add_argument("--train-subset", type=integer(0), default=None,
                   help="training images per run (default 5000; 0: all)")
    p.add_argument("--records", type=integer(1), default=None,
                   help="first N training images whose per-sample robustness defines S_U (default 2000)")
    p.add_argument("--config", default=None, help="YAML config for the identification runs (under the flags)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the identification runs' config, e.g. --set data.val_size=2000")
    p.add_argument("--cache", default="runs/select-teacher",
                   help="folder of the identification runs; finished runs are reused, interrupted ones resumed")
    p.add_argument("--parallel", type=integer(1), default=1, help="identification runs at a time")
    p.add_argument("--min-learnable-confidence", type=float, default=0.5,
                   help="a teacher whose mean true-class confidence on S_L is lower is not recommended")
    p.add_argument("--out", default="teacher_selection.json", help="the ranking and its evidence (JSON)")
    p.add_argument("--device", default="auto", help="for the identification runs and the teachers' forward passes")
    p.add_argument("--batch-size", type=integer(1), default=500, help="batch size of the teachers' forward passes")


@command("select-teacher", "pick a teacher for a student: identification runs (cached), S_U and S_L, teachers "
                           "ranked by entropy on S_U", _select_args)
def cmd_select_teacher(ns: argparse.Namespace) -> int:
    regs = get_registries()
    problems = [f"--methods: {UnknownNameError('method', m, regs.methods.names())}"
                for m in ns.methods if m not in regs.methods]
    if ns.config is not None and not Path(ns.config).is_file():
        problems.append(f"--config: file {ns.config!r} does not exist.")
    problems += common_problems(ns, regs)
    if problems:
        raise ConfigError(problems, "select-teacher arguments")
    base = (read_yaml(ns.config) or {}) if ns.config else {}
    ident = Identification(methods=tuple(ns.methods), seeds=tuple(ns.seeds), epochs=ns.epochs,
                           train_subset=ns.train_subset, records=ns.records, eps=ns.eps, base=base,
                           overrides=tuple(ns.overrides))
    try:
        result = select_teacher(ns.student, [_spec(t) for t in ns.teachers], regs, dataset=ns.dataset,
                                ident=ident, cache=ns.cache, device=ns.device, parallel=ns.parallel,
                                batch_size=ns.batch_size, min_learnable_confidence=ns.min_learnable_confidence)
    except SelectionError as exc:
        print(f"robust-distill select-teacher: {exc}", file=sys.stderr)
        return 1
    atomic_write_json(result, ns.out)
    print(format_selection(result))
    print(f"-> {ns.out}")
    return 0


# -- landscape -----------------------------------------------------------------------------------


def _landscape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model specs (checkpoint:..., timm:...), checkpoint files, or run folders (their best.pt)")
    p.add_argument("--dataset", "--data", dest="dataset", default=None,
                   help="dataset of the examples (default: the first checkpoint's)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="split of the examples")
    p.add_argument("--n-examples", type=integer(1), default=500, help="first N images of the split (default 500)")
    p.add_argument("--directions", type=integer(1), default=10, help="random filter-normalised directions (default 10)")
    p.add_argument("--points", type=integer(3), default=11,
                   help="grid points of s on [-s_max, s_max] (odd; default 11)")
    p.add_argument("--s-max", type=float, default=1.0, help="largest |s| of the grid (default 1)")
    p.add_argument("--levels", default=None, metavar="A1,A2,...",
                   help="the |s| of the sharpness summary (default: 0.25, 0.5 and 1 x s_max)")
    p.add_argument("--eps", type=radius, default=None,
                   help="PGD radius (default: the first checkpoint's training radius, else 8/255)")
    p.add_argument("--step-size", type=radius, default=None,
                   help="PGD step (default: eps/4 with --eps, else the first checkpoint's training step)")
    p.add_argument("--steps", type=integer(1), default=None,
                   help="PGD steps (default: the first checkpoint's training steps, else 10)")
    p.add_argument("--fixed-examples", action="store_true",
                   help="craft the adversarial examples once at s = 0 and reuse them at every perturbed weight "
                        "(cheaper; Wu et al. regenerate them at every weight, the default)")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the directions and of PGD's random starts")
    p.add_argument("--batch-size", type=integer(1), default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="landscape.json",
                   help="output JSON: the curves and their summary (default landscape.json)")
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw the curves (AdaAD's Fig. 3)")


def _landscape_threat(ns: argparse.Namespace, ckpt: dict[str, Any]) -> ThreatModel:
    """The PGD of the landscape: the flags, else the first checkpoint's training threat, else 8/255, 2/255, 10."""
    trained = ckpt.get("config", {}).get("threat") or {}
    if ns.eps is None and ns.step_size is None and trained.get("eps") is not None:
        eps, step = trained["eps"], trained.get("step_size", parse_fraction(trained["eps"]) / 4)
    else:
        eps = ns.eps if ns.eps is not None else parse_fraction(trained.get("eps", 8 / 255))
        step = ns.step_size if ns.step_size is not None else parse_fraction(eps) / 4
    steps = ns.steps if ns.steps is not None else int(trained.get("steps", 10))
    try:
        return ThreatModel(eps=eps, step_size=step, steps=steps)
    except ValueError as exc:
        raise ConfigError([f"--eps/--step-size/--steps: {exc}"], "landscape arguments") from None


@command("landscape", "weight loss landscape: adversarial loss along random filter-normalised directions, "
                      "and its sharpness (Wu et al. 2020; AdaAD Fig. 3)", _landscape_args)
def cmd_landscape(ns: argparse.Namespace) -> int:
    regs = get_registries()
    problems = common_problems(ns, regs)
    levels = None
    if ns.levels is not None:
        try:
            levels = [float(v) for v in ns.levels.split(",")]
        except ValueError:
            problems.append(f"--levels {ns.levels!r}: expected numbers separated by commas, e.g. "
                            f"{','.join(f'{f * ns.s_max:g}' for f in DEFAULT_LEVELS)}.")
    for problem in landscape_problems(ns.directions, ns.points, ns.s_max, levels):
        name, _, text = problem.partition(":")
        problems.append(f"--{name.replace('_', '-')}:{text}")
    if ns.plot is not None and (problem := check_output_file(ns.plot)):
        problems.append(f"--plot: {problem}")
    specs = [_spec(m) for m in ns.models]
    if len(set(specs)) < len(specs):
        problems.append(f"MODEL: each model once, got {' '.join(ns.models)}.")
    if problems:
        raise ConfigError(problems, "landscape arguments")
    models, dataset, first = {}, ns.dataset, {}
    for spec in specs:
        model, dataset_of, ckpt = resolve_model(spec, {}, ns.dataset, regs)
        if dataset is not None and dataset_of != dataset:
            raise ConfigError([f"MODEL: {spec} is a {dataset_of} model, the others {dataset}'s; give models of one "
                               "dataset (or --dataset)."], "landscape arguments")
        dataset, first = dataset_of, first or ckpt
        models[spec] = model
    threat = _landscape_threat(ns, first)
    data_cfg = first.get("config", {}).get("data") or {}
    data_cfg = data_cfg if data_cfg.get("dataset") == dataset else {}
    bundle = regs.call(regs.datasets.get(dataset).load, root=data_cfg.get("root"), **(data_cfg.get("options") or {}))
    x, y = split_images(bundle, ns.split, n=ns.n_examples)
    device = resolve_device(ns.device)
    results = {}
    for spec, model in models.items():
        results[spec] = weight_landscape(model, x, y, threat, directions=ns.directions, points=ns.points,
                                         s_max=ns.s_max, seed=ns.seed, on_the_fly=not ns.fixed_examples,
                                         batch_size=ns.batch_size, device=device, levels=levels)
    settings = {**next(iter(results.values())).settings, "dataset": dataset, "split": ns.split,
                "attack": f"PGD-{threat.steps} on CE, " + threat.describe()}
    atomic_write_json({"settings": settings, "models": [{"model": k, **v.to_dict()} for k, v in results.items()]},
                      ns.out)
    keys = list(next(iter(results.values())).sharpness)
    rows = [{"model": spec, "l0": f"{r.loss_0:.4f}", "a0": r.accuracy_0, "sec": f"{r.seconds:.0f}",
             **{f"sh{a}": f"{r.sharpness[a]['mean']:.4f} ± {r.sharpness[a]['std']:.4f}" for a in keys}}
            for spec, r in results.items()]
    print(markdown_table(rows, [("model", "model"), ("l0", "adv. loss L(0)"), ("a0", "robust acc. at s=0 (%)"),
                                *[(f"sh{a}", f"sharpness at |s|={a}") for a in keys], ("sec", "seconds")]))
    examples = "examples fixed at s = 0" if ns.fixed_examples else "examples regenerated at every weight"
    print(f"\nsharpness(a) = mean over {ns.directions} directions of (L(a) + L(-a))/2 - L(0) (± their standard "
          f"deviation); higher = sharper. {settings['attack']}, {examples}, {x.shape[0]} {ns.split} images of "
          f"{dataset}. -> {ns.out}")
    if ns.plot:
        print(f"-> {plot_landscapes(results, ns.plot)}")
    return 0


# -- invert ---------------------------------------------------------------------------------------


def _positive(text: str) -> float:
    """A float > 0 (an L2 step length)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _invert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model spec (checkpoint:..., robustbench:..., timm:...), checkpoint "
                                                   "file or run folder (its best.pt)")
    p.add_argument("--unlearnable", required=True, help="JSON written by `robust-distill unlearnable`")
    p.add_argument("--n", type=integer(1), default=32, help="samples of S_U and of S_L each (drawn with --seed)")
    p.add_argument("--steps", type=integer(0), default=500, help="normalised-gradient steps of the inversion")
    p.add_argument("--step-size", type=_positive, default=3.0,
                   help="L2 length of the first step in [0,1] pixel units (decayed linearly to 0 unless --no-anneal)")
    p.add_argument("--no-anneal", action="store_true", help="a constant step (Engstrom et al.'s code)")
    p.add_argument("--start", choices=STARTS, default="noise",
                   help="x0: uniform noise, another image of the samples, or their mean image")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the samples drawn and of the start")
    p.add_argument("--match-classes", action="store_true",
                   help="as many samples of each class from S_U as from S_L (the sets' class mixes differ)")
    p.add_argument("--batch-size", type=integer(1), default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="inversion.json", help="output JSON (a Markdown verdict beside it, .md)")
    p.add_argument("--png", default=None, help="also a grid of originals and inversions, rows S_L and S_U")


@command("invert", "representation inversion of S_U and S_L samples: does S_U invert worse? (Why robust "
                   "teachers fail; Engstrom et al. 2019)", _invert_args)
def cmd_invert(ns: argparse.Namespace) -> int:
    regs = get_registries()
    problems = common_problems(ns)
    if not str(ns.out).endswith(".json"):
        problems.append(f"--out {ns.out!r}: give a .json file (the Markdown verdict goes beside it, .md).")
    if ns.png is not None:
        if not str(ns.png).lower().endswith(".png"):
            problems.append(f"--png {ns.png!r}: give a .png file.")
        elif problem := check_output_file(ns.png):
            problems.append(f"--png: {problem}")
    if problems:
        raise ConfigError(problems, "invert arguments")
    sets = read_json(ns.unlearnable, "--unlearnable file")
    if not isinstance(sets, dict) or "indices_unlearnable" not in sets:
        raise InputError(f"--unlearnable {ns.unlearnable!r} is not a file written by `robust-distill unlearnable`.")
    data = sets.get("data") or {}
    model, _, _ = resolve_model(_spec(ns.model), {}, data.get("dataset", "cifar10"), regs, data.get("options") or {},
                                data.get("root"))
    model = model.to(resolve_device(ns.device))
    study = inversion_study(model, sets, ns.n, steps=ns.steps, step_size=ns.step_size, start=ns.start, seed=ns.seed,
                            anneal=not ns.no_anneal, batch_size=ns.batch_size, match_classes=ns.match_classes,
                            regs=regs)
    report = {"model": ns.model, "unlearnable": ns.unlearnable, **study.report}
    markdown = format_study(report, title=f"{ns.model}")
    md = Path(ns.out).with_suffix(".md")
    atomic_write_json(report, ns.out)
    atomic_write_text(markdown + "\n", md)
    print(markdown)
    written = [ns.out, str(md)] + ([str(plot_inversions(study, ns.png))] if ns.png else [])
    print("\n-> " + ", ".join(written))
    return 0


@hookimpl
def rd_register_commands(commands):
    commands.register(cmd_bench)
    commands.register(cmd_report)
    commands.register(cmd_unlearnable)
    commands.register(cmd_prune)
    commands.register(cmd_select_teacher)
    commands.register(cmd_teacher_score)
    commands.register(cmd_specialization)
    commands.register(cmd_invert)
    commands.register(cmd_landscape)
