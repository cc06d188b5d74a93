"""The grid and analysis commands: ``bench``, ``report``, ``unlearnable``, ``teacher-score``, ``specialization``,
``select-teacher``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_json
from .cli import command
from .evaluate_cli import markdown_table, resolve_model

__all__: list[str] = []


# -- bench ----------------------------------------------------------------------------------------


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", help="grid YAML (see robust_distill/bench.py)")
    p.add_argument("--parallel", type=int, default=None, help="runs at a time (default: the grid's)")
    p.add_argument("--dry-run", action="store_true", help="validate every run and list their states")


@command("bench", "run a grid of training runs (methods x teachers x students x seeds x ...), resumably", _bench_args)
def cmd_bench(ns: argparse.Namespace) -> int:
    from .bench import load_grid, run_grid
    from .plugin import get_registries

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
    from .report import build_report

    scores = json.loads(Path(ns.teacher_scores).read_text()) if ns.teacher_scores else None
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

    from .analysis import unlearnable_sets

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
    p.add_argument("--batch-size", type=int, default=500)


def _spec(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        return f"checkpoint:{path / 'best.pt'}"
    return text


@command("teacher-score", "rank candidate teachers by entropy on S_U (higher predicts a better student)",
         _teacher_args)
def cmd_teacher_score(ns: argparse.Namespace) -> int:
    from .analysis import teacher_scores
    from .distributed import resolve_device
    from .plugin import get_registries

    regs = get_registries()
    sets = json.loads(Path(ns.unlearnable).read_text())
    data = sets.get("data", {})
    dataset = data.get("dataset", "cifar10")
    bundle = regs.datasets.get(dataset).load(root=data.get("root"), **(data.get("options") or {}))
    teachers = {}
    for text in ns.teachers:
        model, _, _ = resolve_model(_spec(text), {}, dataset, regs, data.get("options") or {})
        teachers[_spec(text)] = model
    rows = teacher_scores(teachers, bundle.train_x, bundle.train_y, sets, batch_size=ns.batch_size,
                          device=resolve_device(ns.device))
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


# -- specialization --------------------------------------------------------------------------------


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="model spec or checkpoint file")
    p.add_argument("--student", required=True, help="model spec or checkpoint file")
    p.add_argument("--layers", required=True,
                   help="comma-separated TEACHER_LAYER=STUDENT_LAYER pairs of module names, e.g. "
                        "features.2=features.1,features.11=features.7")
    p.add_argument("--dataset", default=None)
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--n-examples", type=int, default=1000)
    p.add_argument("--adversarial", action="store_true", help="use PGD-20 examples crafted against the student")
    p.add_argument("--eps", default=None, help="radius for --adversarial (default: the student's training eps)")
    p.add_argument("--thresholds", default="0.8,0.9", help="unspecialized below, specialized above")
    p.add_argument("--out", default="specialization", help="output folder (JSON + sorted-BNC plot)")
    p.add_argument("--device", default="auto")


@command("specialization", "teacher-student node alignment: NC, BNC per teacher node, MBNC per layer, ratio",
         _spec_args)
def cmd_specialization(ns: argparse.Namespace) -> int:
    from .analysis import specialization
    from .distributed import resolve_device
    from .evaluation import make_eval_attacks
    from .plots import plot_sorted_bnc
    from .plugin import get_registries
    from .threat import parse_fraction

    regs = get_registries()
    device = resolve_device(ns.device)
    student, dataset, s_ckpt = resolve_model(_spec(ns.student), {}, ns.dataset, regs)
    teacher, _, _ = resolve_model(_spec(ns.teacher), {}, dataset, regs)
    data_opts = s_ckpt.get("config", {}).get("data", {}).get("options", {}) if s_ckpt else {}
    bundle = regs.datasets.get(dataset).load(**data_opts)
    x = (bundle.test_x if ns.split == "test" else bundle.train_x)[:ns.n_examples]
    y = (bundle.test_y if ns.split == "test" else bundle.train_y)[:ns.n_examples]
    if ns.adversarial:
        from .data import to_float
        trained_eps = s_ckpt.get("config", {}).get("threat", {}).get("eps", 8 / 255)
        eps = parse_fraction(ns.eps) if ns.eps else float(trained_eps)
        attack = make_eval_attacks(["pgd20"], regs, eps=eps, num_classes=bundle.info.num_classes)["pgd20"]
        student = student.to(device).eval()
        x = attack(student, to_float(x, device), y.to(device)).cpu()
    low, high = (float(v) for v in ns.thresholds.split(","))
    pairs = [tuple(item.split("=", 1)) for item in ns.layers.split(",")]
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


# -- select-teacher --------------------------------------------------------------------------------


def _select_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", required=True, help="the student to distil, e.g. timm:convnet_s")
    p.add_argument("--teachers", nargs="+", required=True,
                   help="candidate teachers: model specs (checkpoint:..., robustbench:..., timm:...), checkpoint "
                        "files or run folders (their best.pt)")
    p.add_argument("--dataset", default=None, help="default: the dataset a teacher checkpoint was trained on")
    p.add_argument("--eps", default=None, help="L-inf radius of the identification runs, e.g. 8/255 (default: a "
                                               "teacher checkpoint's training radius, else the config's)")
    p.add_argument("--methods", nargs="+", default=["pgd_at", "trades"], help="adversarial training methods of "
                                                                               "the identification runs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds of each method's runs")
    p.add_argument("--epochs", type=int, default=None, help="epochs of each identification run (default 3)")
    p.add_argument("--train-subset", type=int, default=None, help="training images per run (default 5000; 0: all)")
    p.add_argument("--records", type=int, default=None,
                   help="first N training images whose per-sample robustness defines S_U (default 2000)")
    p.add_argument("--config", default=None, help="YAML config for the identification runs (under the flags)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the identification runs' config, e.g. --set data.val_size=2000")
    p.add_argument("--cache", default="runs/select-teacher",
                   help="folder of the identification runs; finished runs are reused, interrupted ones resumed")
    p.add_argument("--parallel", type=int, default=1, help="identification runs at a time")
    p.add_argument("--min-learnable-confidence", type=float, default=0.5,
                   help="a teacher whose mean true-class confidence on S_L is lower is not recommended")
    p.add_argument("--out", default="teacher_selection.json", help="the ranking and its evidence (JSON)")
    p.add_argument("--device", default="auto", help="for the identification runs and the teachers' forward passes")
    p.add_argument("--batch-size", type=int, default=500, help="batch size of the teachers' forward passes")


@command("select-teacher", "pick a teacher for a student: identification runs (cached), S_U and S_L, teachers "
                           "ranked by entropy on S_U", _select_args)
def cmd_select_teacher(ns: argparse.Namespace) -> int:
    import yaml

    from .plugin import get_registries
    from .select_teacher import Identification, SelectionError, format_selection, select_teacher
    from .threat import parse_fraction

    base = yaml.safe_load(Path(ns.config).read_text()) or {} if ns.config else {}
    ident = Identification(methods=tuple(ns.methods), seeds=tuple(ns.seeds), epochs=ns.epochs,
                           train_subset=ns.train_subset, records=ns.records,
                           eps=parse_fraction(ns.eps) if ns.eps else None, base=base, overrides=tuple(ns.overrides))
    try:
        result = select_teacher(ns.student, [_spec(t) for t in ns.teachers], get_registries(), dataset=ns.dataset,
                                ident=ident, cache=ns.cache, device=ns.device, parallel=ns.parallel,
                                batch_size=ns.batch_size, min_learnable_confidence=ns.min_learnable_confidence)
    except SelectionError as exc:
        print(f"robust-distill select-teacher: {exc}", file=sys.stderr)
        return 1
    atomic_write_json(result, ns.out)
    print(format_selection(result))
    print(f"-> {ns.out}")
    return 0
