"""``robust-distill eval``: a checkpoint or a zoo model against a list of attacks, with per-sample records."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robust_distill import hookimpl
from robust_distill.api import evaluate, resolve_model
from robust_distill.cli import command, common_problems, integer, radius
from robust_distill.config.loading import parse_value
from robust_distill.core.manager import Registries, get_registries
from robust_distill.core.registry import UnknownNameError
from robust_distill.core.threat import format_eps
from robust_distill.engine.distributed import init_distributed, rank_and_world, resolve_device
from robust_distill.engine.evaluation import check_concurrency
from robust_distill.errors import ConfigError
from robust_distill.files.atomic import atomic_save, atomic_write_json
from robust_distill.results.tables import markdown_table

__all__ = ["run_eval", "resolve_model"]


def concurrency(text: str) -> int | str:
    """``--concurrency``: ``auto`` or an integer >= 1 (:func:`~robust_distill.engine.evaluation.check_concurrency`)."""
    try:
        return check_concurrency("auto" if text.strip().lower() == "auto" else int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}") from None


def _options(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = parse_value(value)
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
    transfer = [a.strip() for a in getattr(ns, "transfer_attacks", "").split(",") if a.strip()]
    if getattr(ns, "surrogate", None) and not transfer:
        problems.append(f"--transfer-attacks: no attack given for --surrogate; choose from: "
                        f"{', '.join(regs.eval_attacks.names())}.")
    for name in transfer:
        if name not in regs.eval_attacks:
            problems.append(f"--transfer-attacks: {UnknownNameError('eval attack', name, regs.eval_attacks.names())}")
    for item in ns.model_option:
        if "=" not in item or not item.partition("=")[0].strip():
            problems.append(f"--model-option {item!r}: expected KEY=VALUE, e.g. --model-option model_dir=./models.")
    if ns.data_root is not None and not Path(ns.data_root).expanduser().is_dir():
        problems.append(f"--data-root: folder {ns.data_root!r} does not exist.")
    return problems + common_problems(ns, regs)


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
    rank, _ = rank_and_world()
    try:
        ev = evaluate(ns.model, attacks=ns.attacks, dataset=ns.dataset, split=ns.split, n_examples=ns.n_examples,
                      eps=ns.eps, batch_size=ns.batch_size, device=device, seed=ns.seed,
                      precision=getattr(ns, "precision", "fp32"), data_root=ns.data_root, workers=ns.workers,
                      model_options=_options(ns.model_option), trust_checkpoint=ns.trust_checkpoint,
                      surrogate=ns.surrogate, transfer_attacks=getattr(ns, "transfer_attacks", "pgd20,cw_inf"),
                      progress=rank == 0,
                      concurrency=getattr(ns, "concurrency", "auto"))
    except ConfigError as exc:  # a val split larger than the data: the API's argument names are our flags
        raise ConfigError([p.replace("split='val'", "--split val").replace("split='test'", "--split test")
                           for p in exc.problems], "eval arguments") from None
    rows = ev.rows()
    summary = {"model": ns.model, "dataset": ev.dataset, "split": ns.split, "n_examples": ev.n,
               "eps": ev.eps, "eps_label": format_eps(ev.eps), "seed": ns.seed, "results": rows}
    summary["table"] = (f"{ns.model} on {ev.dataset} {ns.split} (n={ev.n}, eps={format_eps(ev.eps)})\n\n"
                        + markdown_table(rows, [("attack", "attack"), ("label", "protocol"),
                                                ("accuracy", "accuracy (%)")]))
    if ns.out and rank == 0:
        out = Path(ns.out)
        atomic_write_json({k: v for k, v in summary.items() if k != "table"}, out)
        atomic_save({"correct": ev.correct, "labels": ev.labels, "indices": ev.indices}, out.with_suffix(".pt"))
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
                   help="model spec of a surrogate: adds transfer attacks (crafted on it, tested on the model)")
    p.add_argument("--transfer-attacks", default="pgd20,cw_inf",
                   help="comma-separated evaluation attacks crafted on --surrogate (e.g. fgsm,pgd20: the AdaAD "
                        "paper's Table 4)")
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
