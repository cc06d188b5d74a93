"""``robust-distill eval``: a checkpoint or a zoo model against a list of attacks, with per-sample records."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_save, atomic_write_json
from ..checkpoint import load_checkpoint
from ..components import split_spec
from ..config import _parse_value
from ..data import make_splits
from ..distributed import resolve_device
from ..evaluation import TransferAttack, evaluate, make_eval_attacks
from ..plugin import Registries, get_registries
from ..threat import format_eps, parse_fraction
from . import command

__all__ = ["run_eval", "resolve_model", "markdown_table"]


def _options(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = _parse_value(value)
    return out


def resolve_model(spec: str, options: dict[str, Any], dataset: str | None, regs: Registries,
                  data_options: dict[str, Any] | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """A model spec (or a bare checkpoint path) -> (model in eval mode, dataset name, checkpoint or {}).

    A robust-distill checkpoint knows its dataset (and the dataset options it was trained with).
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
    if data_options is None:
        data_options = ckpt.get("config", {}).get("data", {}).get("options", {})
    info = regs.datasets.get(dataset).info(**data_options)
    model = regs.teacher_sources.get(source).load(name, dataset=info, **options)
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
    regs = get_registries()
    device = resolve_device(ns.device)
    options = _options(ns.model_option)
    if ns.trust_checkpoint:
        options["trust_checkpoint"] = True
    model, dataset, ckpt = resolve_model(ns.model, options, ns.dataset, regs)
    model = model.to(device)
    cfg = ckpt.get("config", {})
    data_cfg = cfg.get("data", {}) if cfg.get("data", {}).get("dataset") == dataset else {}
    bundle = regs.datasets.get(dataset).load(root=ns.data_root or data_cfg.get("root"),
                                             **data_cfg.get("options", {}))
    if ns.split == "val":
        splits = make_splits(bundle, val_size=data_cfg.get("val_size", 5000),
                             split_seed=data_cfg.get("split_seed", 0))
        x, y = splits.val_x, splits.val_y
    else:
        x, y = bundle.test_x, bundle.test_y
    if ns.n_examples:
        x, y = x[:ns.n_examples], y[:ns.n_examples]
    eps = parse_fraction(ns.eps) if ns.eps is not None else float(cfg.get("threat", {}).get("eps", 8 / 255))
    names = [a.strip() for a in ns.attacks.split(",") if a.strip()]
    attacks = make_eval_attacks(names, regs, eps=eps, num_classes=bundle.info.num_classes)
    if ns.surrogate:
        surrogate, _, _ = resolve_model(ns.surrogate, {}, dataset, regs, data_cfg.get("options", {}))
        surrogate = surrogate.to(device)
        for base in make_eval_attacks(["pgd20", "cw_inf"], regs, eps=eps, num_classes=bundle.info.num_classes).values():
            t = TransferAttack(base, surrogate, ns.surrogate)
            attacks[t.name] = t
    result = evaluate(model, x, y, attacks, batch_size=ns.batch_size, device=device, seed=ns.seed, progress=True)
    rows = [{"attack": name, "label": getattr(a, "label", name) or name, "accuracy": result.accuracy[name]}
            for name, a in attacks.items()]
    robust = [n for n in attacks if n != "clean"]
    if len(robust) > 1:
        rows.append({"attack": "worst_case", "label": "Worst case over the attacks above",
                     "accuracy": result.worst_case(robust).float().mean().item()})
    summary = {"model": ns.model, "dataset": dataset, "split": ns.split, "n_examples": int(x.shape[0]),
               "eps": eps, "eps_label": format_eps(eps), "seed": ns.seed, "results": rows}
    summary["table"] = (f"{ns.model} on {dataset} {ns.split} (n={x.shape[0]}, eps={format_eps(eps)})\n\n"
                        + markdown_table(rows, [("attack", "attack"), ("label", "protocol"),
                                                ("accuracy", "accuracy (%)")]))
    if ns.out:
        out = Path(ns.out)
        atomic_write_json({k: v for k, v in summary.items() if k != "table"}, out)
        atomic_save({"correct": result.correct, "labels": y}, out.with_suffix(".pt"))
    return summary


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint file, or a model spec such as robustbench:Chen2021LTD_WRN34_10, "
                                 "checkpoint:runs/x/best.pt, timm:resnet18 (with --model-option)")
    p.add_argument("--dataset", default=None, help="dataset name (default: the checkpoint's)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--attacks", default="clean,fgsm,pgd20,pgd20_trades,cw_inf,autoattack",
                   help="comma-separated evaluation attacks (see `robust-distill plugins`)")
    p.add_argument("--eps", default=None, help="L-inf radius, e.g. 8/255 (default: the checkpoint's "
                                               "training eps, else 8/255)")
    p.add_argument("--n-examples", type=int, default=1000, help="first N examples of the split (0: all)")
    p.add_argument("--batch-size", type=int, default=256)
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


@command("eval", "evaluate a checkpoint or a RobustBench/timm model against chosen attacks", _eval_args)
def cmd_eval(ns: argparse.Namespace) -> int:
    result = run_eval(ns)
    print(result["table"])
    return 0
