"""``robust-distill eval``: a checkpoint or a zoo model against a list of attacks, with per-sample records."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from .. import hookimpl
from .._io import InputError, atomic_save, atomic_write_json
from ..checkpoint import load_checkpoint
from ..components import split_spec
from ..config import ConfigError, _parse_value
from ..data import dataset_info, make_splits
from ..distributed import init_distributed, rank_and_world, resolve_device
from ..evaluation import TransferAttack, check_concurrency, evaluate_set, make_eval_attacks
from ..plugin import Registries, get_registries
from ..registry import UnknownNameError
from ..streaming import default_workers
from ..threat import format_eps, parse_fraction
from . import command, common_problems, integer, radius

__all__ = ["run_eval", "resolve_model", "markdown_table"]


def concurrency(text: str) -> int | str:
    """``--concurrency``: ``auto`` or an integer >= 1 (:func:`~robust_distill.evaluation.check_concurrency`)."""
    try:
        return check_concurrency("auto" if text.strip().lower() == "auto" else int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}") from None


def _options(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = _parse_value(value)
    return out


def check_eval_args(ns: argparse.Namespace, regs: Registries) -> list[str]:
    """What argparse cannot know (registered names, devices, folders): every problem, before any work."""
    problems = []
    names = [a.strip() for a in ns.attacks.split(",") if a.strip()]
    if not names:
        problems.append(f"--attacks: no attack given; choose from: {', '.join(regs.eval_attacks.names())}.")
    for name in names:
        if name not in regs.eval_attacks:
            problems.append(f"--attacks: {UnknownNameError('eval attack', name, regs.eval_attacks.names())}")
    for item in ns.model_option:
        if "=" not in item or not item.partition("=")[0].strip():
            problems.append(f"--model-option {item!r}: expected KEY=VALUE, e.g. --model-option model_dir=./models.")
    if ns.data_root is not None and not Path(ns.data_root).expanduser().is_dir():
        problems.append(f"--data-root: folder {ns.data_root!r} does not exist.")
    return problems + common_problems(ns, regs)


def resolve_model(spec: str, options: dict[str, Any], dataset: str | None, regs: Registries,
                  data_options: dict[str, Any] | None = None,
                  data_root: str | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """A model spec (or a bare checkpoint path) -> (model in eval mode, dataset name, checkpoint or {}).

    A robust-distill checkpoint knows its dataset (and the dataset root and options it was trained with).
    ``options["trust_checkpoint"]`` is the explicit opt-in to unpickling (see :mod:`..checkpoint`).
    """
    source, name = split_spec(spec)
    if not source or (source not in regs.teacher_sources and Path(spec).is_file()):
        source, name = "checkpoint", spec
    ckpt: dict[str, Any] = {}
    if source == "checkpoint" and Path(name).is_file():
        ckpt = load_checkpoint(name, trust=bool(options.get("trust_checkpoint", False)))
        if not isinstance(ckpt, dict):
            ckpt = {}
        dataset = dataset or ckpt.get("model", {}).get("dataset")
    elif source == "hf-hub":  # robust-distill's exports carry their dataset and training config
        from ..hub import read_hub_config

        exported = read_hub_config(name).get("robust_distill") or {}
        ckpt = {"config": exported.get("config") or {}}
        dataset = dataset or exported.get("dataset")
    dataset = dataset or "cifar10"
    ckpt_data = ckpt.get("config", {}).get("data", {})
    if data_options is None:
        data_options = ckpt_data.get("options", {})
    if data_root is None and ckpt_data.get("dataset") == dataset:
        data_root = ckpt_data.get("root")
    info = dataset_info(regs.datasets.get(dataset), data_root, data_options)
    src = regs.teacher_sources.get(source)
    try:  # a wrong name, option or file: a message before anything is loaded
        src.check(name, dataset=info, **options)
    except (ValueError, TypeError) as exc:
        raise InputError(f"model {spec!r}: {exc}") from None
    model = src.load(name, dataset=info, **options)
    return model.eval(), dataset, ckpt


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """``columns`` = [(key, header)]; floats in [0, 1] are printed as percentages."""
    def fmt(v: Any) -> str:
        return f"{100 * v:.2f}" if isinstance(v, float) else str(v)
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def run_eval(ns: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``ns.model``; under ``torchrun`` every process evaluates its share of the examples (the
    numbers are those of one process) and only rank 0 writes ``--out`` (``summary["is_main"]`` says which)."""
    problems = check_eval_args(ns, get_registries())  # before any work, the device included
    if problems:
        raise ConfigError(problems, "eval arguments")
    dist_ctx = init_distributed(ns.device)
    try:
        summary = _run_eval(ns, resolve_device(ns.device, dist_ctx.local_rank))
    finally:
        dist_ctx.close()
    summary["is_main"] = dist_ctx.is_main
    return summary


def _run_eval(ns: argparse.Namespace, device: Any) -> dict[str, Any]:
    regs = get_registries()
    rank, _ = rank_and_world()
    options = _options(ns.model_option)
    if ns.trust_checkpoint:
        options["trust_checkpoint"] = True
    model, dataset, ckpt = resolve_model(ns.model, options, ns.dataset, regs, data_root=ns.data_root)
    model = model.to(device)
    cfg = ckpt.get("config", {})
    data_cfg = cfg.get("data", {}) if cfg.get("data", {}).get("dataset") == dataset else {}
    root = ns.data_root or data_cfg.get("root")
    bundle = regs.datasets.get(dataset).load(root=root, **data_cfg.get("options", {}))
    workers = ns.workers if ns.workers is not None else data_cfg.get("workers")
    try:
        splits = make_splits(bundle, val_size=data_cfg.get("val_size", 5000) if ns.split == "val" else 0,
                             split_seed=data_cfg.get("split_seed", 0),
                             workers=default_workers() if workers is None else workers,
                             pin_memory=device.type == "cuda")
    except ValueError as exc:
        raise ConfigError([f"--split val: {exc} Use --split test."], "eval arguments") from None
    data = splits.eval_set(ns.split, ns.n_examples or None)
    eps = ns.eps if ns.eps is not None else parse_fraction(cfg.get("threat", {}).get("eps", 8 / 255))
    names = [a.strip() for a in ns.attacks.split(",") if a.strip()]
    attacks = make_eval_attacks(names, regs, eps=eps, num_classes=splits.info.num_classes)
    if ns.surrogate:
        surrogate, _, _ = resolve_model(ns.surrogate, {}, dataset, regs, data_cfg.get("options", {}), root)
        surrogate = surrogate.to(device)
        for base in make_eval_attacks(["pgd20", "cw_inf"], regs, eps=eps, num_classes=splits.info.num_classes).values():
            t = TransferAttack(base, surrogate, ns.surrogate)
            attacks[t.name] = t
    result = evaluate_set(model, data, attacks, batch_size=ns.batch_size, device=device, seed=ns.seed,
                          progress=rank == 0, precision=getattr(ns, "precision", "fp32"),
                          concurrency=getattr(ns, "concurrency", "auto"))
    rows = [{"attack": name, "label": getattr(a, "label", name) or name, "accuracy": result.accuracy[name]}
            for name, a in attacks.items()]
    robust = [n for n in attacks if n != "clean"]
    if len(robust) > 1:
        rows.append({"attack": "worst_case", "label": "Worst case over the attacks above",
                     "accuracy": result.worst_case(robust).float().mean().item()})
    summary = {"model": ns.model, "dataset": dataset, "split": ns.split, "n_examples": data.n,
               "eps": eps, "eps_label": format_eps(eps), "seed": ns.seed, "results": rows}
    summary["table"] = (f"{ns.model} on {dataset} {ns.split} (n={data.n}, eps={format_eps(eps)})\n\n"
                        + markdown_table(rows, [("attack", "attack"), ("label", "protocol"),
                                                ("accuracy", "accuracy (%)")]))
    if ns.out and rank == 0:
        out = Path(ns.out)
        atomic_write_json({k: v for k, v in summary.items() if k != "table"}, out)
        atomic_save({"correct": result.correct, "labels": data.labels, "indices": data.indices},
                    out.with_suffix(".pt"))
    return summary


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint file, or a model spec such as robustbench:Chen2021LTD_WRN34_10, "
                                 "checkpoint:runs/x/best.pt, timm:resnet18 (with --model-option)")
    p.add_argument("--dataset", default=None, help="dataset name (default: the checkpoint's)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--attacks", default="clean,fgsm,pgd20,pgd20_trades,cw_inf,autoattack",
                   help="comma-separated evaluation attacks (see `robust-distill plugins`)")
    p.add_argument("--eps", type=radius, default=None, help="L-inf radius in (0, 1], e.g. 8/255 (default: the "
                                                            "checkpoint's training eps, else 8/255)")
    p.add_argument("--n-examples", type=integer(0), default=1000,
                   help="first N examples of the split (0: all; streamed image datasets: N spread over the split)")
    p.add_argument("--batch-size", type=integer(1), default=256)
    p.add_argument("--workers", type=integer(0), default=None,
                   help="DataLoader processes reading a streamed dataset (default: the checkpoint's data.workers)")
    p.add_argument("--device", default="auto")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the model source, e.g. model_dir=./models")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow the model file to unpickle arbitrary Python objects (can run code hidden in "
                        "the file: only for files you trust; by default only weights are read)")
    p.add_argument("--surrogate", default=None,
                   help="model spec of a surrogate: adds transfer attacks (PGD-20 and CW-inf crafted on it)")
    p.add_argument("--out", default=None, help="write results (JSON) and per-sample correctness (.pt) here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="attack and model precision (fp32: comparable with the papers; bf16: autocast, faster)")
    p.add_argument("--concurrency", type=concurrency, default="auto",
                   help="AutoAttack chunks (of 500) attacked at once, each by its own process on the device; the "
                        "results are the same (auto: as many as GPU memory and CPU cores allow, up to 8, on "
                        "CUDA; 1 on CPU)")


@command("eval", "evaluate a checkpoint or a RobustBench/timm model against chosen attacks (under torchrun: "
                 "the examples are shared out over the processes)", _eval_args)
def cmd_eval(ns: argparse.Namespace) -> int:
    result = run_eval(ns)
    if result["is_main"]:  # under torchrun, rank 0 prints
        print(result["table"])
    return 0


@hookimpl
def rd_register_commands(commands):
    commands.register(cmd_eval)
