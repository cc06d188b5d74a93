"""The grid and analysis commands: ``bench``, ``report``, ``unlearnable``, ``teacher-score``, ``specialization``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from .. import hookimpl
from .._io import InputError, atomic_write_json, read_json
from ..config import ConfigError
from ..preflight import check_device, check_output_dir, check_output_file
from ..registry import UnknownNameError
from . import command, integer, radius
from .eval import markdown_table, resolve_model

__all__: list[str] = []


# -- bench ----------------------------------------------------------------------------------------


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", help="grid YAML (see robust_distill/bench.py)")
    p.add_argument("--parallel", type=integer(1), default=None, help="runs at a time (default: the grid's)")
    p.add_argument("--dry-run", action="store_true", help="validate every run and list their states")


@command("bench", "run a grid of training runs (methods x teachers x students x seeds x ...), resumably", _bench_args)
def cmd_bench(ns: argparse.Namespace) -> int:
    from ..analysis.bench import load_grid, run_grid
    from ..plugin import get_registries

    states = run_grid(load_grid(ns.grid), get_registries(), parallel=ns.parallel, dry_run=ns.dry_run)
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
    from ..analysis.report import build_report

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


@command("unlearnable", "the robustly unlearnable set S_U and learnable set S_L of a set of runs", _unlearnable_args)
def cmd_unlearnable(ns: argparse.Namespace) -> int:
    import yaml

    from ..analysis.unlearnable import unlearnable_sets

    if problem := check_output_file(ns.out):
        raise ConfigError([f"--out: {problem}"], "unlearnable arguments")
    sets = unlearnable_sets(ns.runs)
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
    import torch

    from ..analysis.unlearnable import teacher_scores
    from ..data import split_images
    from ..distributed import resolve_device
    from ..plugin import get_registries

    regs = get_registries()
    _check_common(ns, "teacher-score")
    sets = read_json(ns.unlearnable, "--unlearnable file")
    if not isinstance(sets, dict) or "indices_unlearnable" not in sets:
        raise InputError(f"--unlearnable {ns.unlearnable!r} is not a file written by `robust-distill unlearnable`.")
    data = sets.get("data", {})
    dataset = data.get("dataset", "cifar10")
    bundle = regs.datasets.get(dataset).load(root=data.get("root"), **(data.get("options") or {}))
    teachers = {}
    for text in ns.teachers:
        model, _, _ = resolve_model(_spec(text), {}, dataset, regs, data.get("options") or {}, data.get("root"))
        teachers[_spec(text)] = model
    # only the images of S_U and S_L are read (a streamed dataset is never loaded whole): index them anew
    used = sorted({*sets["indices_unlearnable"], *sets["indices_learnable"]})
    x_used, y_used = split_images(bundle, "train", torch.tensor(used, dtype=torch.int64))
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
    problems = []
    if problem := check_device(ns.device):
        problems.append(f"--device: {problem}")
    if getattr(ns, "out", None) is not None and (problem := check_output_file(ns.out)):
        problems.append(f"--out: {problem}")
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
    if ns.dataset is not None and ns.dataset not in regs.datasets:
        problems.append(f"--dataset: {UnknownNameError('dataset', ns.dataset, regs.datasets.names())}")
    if problem := check_device(ns.device):
        problems.append(f"--device: {problem}")
    if problem := check_output_dir(ns.out):
        problems.append(f"--out: {problem}")
    if problems:
        raise ConfigError(problems, "specialization arguments")
    return pairs, thresholds  # type: ignore[return-value]


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="model spec or checkpoint file")
    p.add_argument("--student", required=True, help="model spec or checkpoint file")
    p.add_argument("--layers", required=True,
                   help="comma-separated TEACHER_LAYER=STUDENT_LAYER pairs of module names, e.g. "
                        "features.2=features.1,features.11=features.7")
    p.add_argument("--dataset", default=None)
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--n-examples", type=integer(1), default=1000)
    p.add_argument("--adversarial", action="store_true", help="use PGD-20 examples crafted against the student")
    p.add_argument("--eps", type=radius, default=None,
                   help="radius for --adversarial (default: the student's training eps)")
    p.add_argument("--thresholds", default="0.8,0.9", help="unspecialized below, specialized above")
    p.add_argument("--out", default="specialization", help="output folder (JSON + sorted-BNC plot)")
    p.add_argument("--device", default="auto")


@command("specialization", "teacher-student node alignment: NC, BNC per teacher node, MBNC per layer, ratio",
         _spec_args)
def cmd_specialization(ns: argparse.Namespace) -> int:
    from ..analysis.plots import plot_sorted_bnc
    from ..analysis.specialization import specialization
    from ..data import split_images
    from ..distributed import resolve_device
    from ..evaluation import make_eval_attacks
    from ..plugin import get_registries
    from ..threat import parse_fraction

    regs = get_registries()
    pairs, thresholds = _check_specialization_args(ns, regs)
    device = resolve_device(ns.device)
    student, dataset, s_ckpt = resolve_model(_spec(ns.student), {}, ns.dataset, regs)
    teacher, _, _ = resolve_model(_spec(ns.teacher), {}, dataset, regs)
    data_cfg = s_ckpt.get("config", {}).get("data", {}) if s_ckpt else {}
    bundle = regs.datasets.get(dataset).load(root=data_cfg.get("root"), **data_cfg.get("options", {}))
    x, y = split_images(bundle, ns.split, n=ns.n_examples)
    if ns.adversarial:
        from ..data import to_float
        trained_eps = s_ckpt.get("config", {}).get("threat", {}).get("eps", 8 / 255)
        eps = ns.eps if ns.eps is not None else parse_fraction(trained_eps)
        attack = make_eval_attacks(["pgd20"], regs, eps=eps, num_classes=bundle.info.num_classes)["pgd20"]
        student = student.to(device).eval()
        x = attack(student, to_float(x, device), y.to(device)).cpu()
    low, high = thresholds
    stats = specialization(teacher, student, pairs, x, device=device, unspecialized_below=low,  # type: ignore[arg-type]
                           specialized_above=high)
    out = Path(ns.out)
    rows: list[dict[str, Any]] = []
    for s in stats:
        rows.append({"layer": f"{s.teacher_layer} ~ {s.student_layer}", "nodes": len(s.bnc), "mbnc": f"{s.mbnc:.3f}",
                     "unspec": s.unspecialized, "spec": s.specialized, "ratio": f"{s.ratio:.3f}"})
    atomic_write_json({"teacher": ns.teacher, "student": ns.student, "adversarial": ns.adversarial,
                       "n_examples": int(x.shape[0]), "thresholds": [low, high],
                       "layers": [{**s.__dict__, "ratio": s.ratio} for s in stats]}, out / "specialization.json")
    plot = plot_sorted_bnc({f"{s.teacher_layer} ~ {s.student_layer}": s.bnc for s in stats},
                           out / "sorted_bnc.png", title=f"{ns.student} vs {ns.teacher}"
                           + (" (adversarial inputs)" if ns.adversarial else ""))
    print(markdown_table(rows, [("layer", "teacher layer ~ student layer"), ("nodes", "teacher nodes"),
                                ("mbnc", "MBNC"), ("unspec", f"BNC < {low}"), ("spec", f"BNC > {high}"),
                                ("ratio", "unspecialized / specialized")]))
    print(f"\n-> {out / 'specialization.json'}, {plot}")
    return 0


@hookimpl
def rd_register_commands(commands):
    commands.register(cmd_bench)
    commands.register(cmd_report)
    commands.register(cmd_unlearnable)
    commands.register(cmd_teacher_score)
    commands.register(cmd_specialization)
