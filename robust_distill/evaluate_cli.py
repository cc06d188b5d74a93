"""``robust-distill eval``: a checkpoint or a zoo model against a list of attacks, with per-sample records."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import atomic_save, atomic_write_json, load_checkpoint
from .config import _parse_value, split_spec
from .data import dataset_info, make_splits
from .distributed import resolve_device
from .evaluation import TransferAttack, evaluate_set, make_eval_attacks
from .plugin import Registries, get_registries
from .streaming import default_workers
from .threat import format_eps, parse_fraction

__all__ = ["run_eval", "resolve_model", "markdown_table"]


def _options(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = _parse_value(value)
    return out


def resolve_model(spec: str, options: dict[str, Any], dataset: str | None, regs: Registries,
                  data_options: dict[str, Any] | None = None,
                  data_root: str | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """A model spec (or a bare checkpoint path) -> (model in eval mode, dataset name, checkpoint or {}).

    A robust-distill checkpoint knows its dataset (and the dataset root and options it was trained with).
    """
    source, name = split_spec(spec)
    if not source or (source not in regs.teacher_sources and Path(spec).is_file()):
        source, name = "checkpoint", spec
    ckpt: dict[str, Any] = {}
    if source == "checkpoint" and Path(name).is_file():
        ckpt = load_checkpoint(name)
        dataset = dataset or ckpt.get("model", {}).get("dataset")
    dataset = dataset or "cifar10"
    ckpt_data = ckpt.get("config", {}).get("data", {})
    if data_options is None:
        data_options = ckpt_data.get("options", {})
    if data_root is None and ckpt_data.get("dataset") == dataset:
        data_root = ckpt_data.get("root")
    info = dataset_info(regs.datasets.get(dataset), data_root, data_options)
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
    model, dataset, ckpt = resolve_model(ns.model, _options(ns.model_option), ns.dataset, regs,
                                         data_root=ns.data_root)
    model = model.to(device)
    cfg = ckpt.get("config", {})
    data_cfg = cfg.get("data", {}) if cfg.get("data", {}).get("dataset") == dataset else {}
    root = ns.data_root or data_cfg.get("root")
    bundle = regs.datasets.get(dataset).load(root=root, **data_cfg.get("options", {}))
    workers = ns.workers if ns.workers is not None else data_cfg.get("workers")
    splits = make_splits(bundle, val_size=data_cfg.get("val_size", 5000) if ns.split == "val" else 0,
                         split_seed=data_cfg.get("split_seed", 0),
                         workers=default_workers() if workers is None else workers,
                         pin_memory=device.type == "cuda")
    data = splits.eval_set(ns.split, ns.n_examples or None)
    eps = parse_fraction(ns.eps) if ns.eps is not None else float(cfg.get("threat", {}).get("eps", 8 / 255))
    names = [a.strip() for a in ns.attacks.split(",") if a.strip()]
    attacks = make_eval_attacks(names, regs, eps=eps, num_classes=splits.info.num_classes)
    if ns.surrogate:
        surrogate, _, _ = resolve_model(ns.surrogate, {}, dataset, regs, data_cfg.get("options", {}), root)
        surrogate = surrogate.to(device)
        for base in make_eval_attacks(["pgd20", "cw_inf"], regs, eps=eps, num_classes=splits.info.num_classes).values():
            t = TransferAttack(base, surrogate, ns.surrogate)
            attacks[t.name] = t
    result = evaluate_set(model, data, attacks, batch_size=ns.batch_size, device=device, seed=ns.seed, progress=True)
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
    if ns.out:
        out = Path(ns.out)
        atomic_write_json({k: v for k, v in summary.items() if k != "table"}, out)
        atomic_save({"correct": result.correct, "labels": data.labels, "indices": data.indices},
                    out.with_suffix(".pt"))
    return summary


