"""``robust-distill export RUN_OR_CHECKPOINT OUT_DIR``: a student as a timm / Hugging Face Hub folder.

Writes ``model.safetensors``, ``config.json`` (timm's Hub format) and a model card ``README.md`` with the
robustness table (:mod:`robust_distill.export`). The table holds what the run measured for the checkpoint (its
final test evaluation, ``eval.final_attacks``); ``--evaluate clean,pgd20,autoattack`` measures it now, on the
first ``--n-examples`` test images. The folder loads back as ``hf-hub:OUT_DIR`` and uploads as it is
(``huggingface-cli upload <user>/<repo> OUT_DIR``). ``--robustbench NAME`` also writes
``model_info/<dataset>/Linf/NAME.json``, the file a RobustBench model-zoo submission adds, from an AutoAttack
evaluation on the whole test set (``--model-info KEY=VALUE`` fills its paper link, title, authors, venue).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robust_distill import hookimpl
from robust_distill.api import evaluate
from robust_distill.cli import command, integer
from robust_distill.cli.eval import _options
from robust_distill.config import stored_eval_eps
from robust_distill.core.manager import get_registries
from robust_distill.errors import ConfigError
from robust_distill.export import check_robustbench, export_model
from robust_distill.files.checkpoint import load_checkpoint
from robust_distill.files.hub import locate_checkpoint

__all__ = ["run_export"]


def run_export(ns: argparse.Namespace) -> Path:
    """Export ``ns.run`` to ``ns.out_dir`` (with the evaluation ``--evaluate`` asks for); returns the folder."""
    attacks = [a.strip() for a in (ns.evaluate or "").split(",") if a.strip()]
    problems = [f"--model-info {item!r}: expected KEY=VALUE, e.g. --model-info venue='ICML 2026'."
                for item in ns.model_info if "=" not in item]
    if ns.model_info and not ns.robustbench:
        problems.append("--model-info fills RobustBench's model-info file: give --robustbench MODEL_NAME too.")
    if ns.robustbench and ns.evaluate and not ({"clean", "autoattack"} <= set(attacks) and ns.n_examples == 0):
        problems.append("--robustbench needs clean and AutoAttack accuracy on the whole test set: --evaluate "
                        "clean,autoattack --n-examples 0 (or no --evaluate: the run's own final evaluation).")
    if problems:
        raise ConfigError(problems, "export arguments")
    info = _options(ns.model_info)  # values read as YAML: additional_data=true is a boolean
    ckpt_path, _ = locate_checkpoint(ns.run, ns.checkpoint)
    ckpt = load_checkpoint(ckpt_path, mmap=True)
    ckpt = ckpt if isinstance(ckpt, dict) else {}  # not a robust-distill checkpoint: export_model says so
    cfg = ckpt.get("config") or {}
    eps = stored_eval_eps(cfg)  # the run's evaluation radius
    if ns.robustbench and "model" in ckpt:  # refused before any evaluation: the leaderboard, the names
        check_robustbench(ckpt["model"].get("dataset"), eps, info, ns.robustbench)
    results = None
    if attacks:  # on the first --n-examples test images
        ev = evaluate(ckpt_path, attacks=attacks, n_examples=ns.n_examples, batch_size=ns.batch_size,
                      device=ns.device, seed=cfg.get("seed", 0), eps=eps, progress=True)
        results = {"split": "test", "n_examples": ev.n, "accuracy": ev.accuracy}
    return export_model(ns.run, ns.out_dir, get_registries(), which=ns.checkpoint, results=results,
                        repo_id=ns.repo_id, overwrite=ns.force, robustbench=ns.robustbench, model_info=info)


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a run folder (its best.pt, or --checkpoint last) or a "
                                                             "robust-distill checkpoint file")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (config.json, model.safetensors, README.md)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of a run folder")
    p.add_argument("--evaluate", default=None, metavar="ATTACKS",
                   help="measure these attacks now for the card (e.g. clean,pgd20,autoattack) instead of what "
                        "the run recorded")
    p.add_argument("--n-examples", type=integer(0), default=1000, help="test images for --evaluate (0: all)")
    p.add_argument("--batch-size", type=integer(1), default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--repo-id", default=None, help="the Hub repo it will live in (user/name), for the card's usage")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    p.add_argument("--robustbench", default=None, metavar="MODEL_NAME",
                   help="also write model_info/<dataset>/Linf/MODEL_NAME.json for a RobustBench model-zoo submission "
                        "(needs clean and AutoAttack accuracy on the whole test set)")
    p.add_argument("--model-info", action="append", default=[], metavar="KEY=VALUE",
                   help="a descriptive key of that file, e.g. --model-info link=https://arxiv.org/abs/... "
                        "--model-info 'authors=A. Lee, B. Kim' --model-info venue='ICML 2026'")


@command("export", "a trained student as a timm / Hugging Face Hub folder with a model card (and RobustBench's "
                   "model-info file)", _export_args)
def cmd_export(ns: argparse.Namespace) -> int:
    out = run_export(ns)
    print(f"Exported to {out}/ (config.json, model.safetensors, README.md). Load it as hf-hub:{out}; upload with "
          f"`huggingface-cli upload <user>/<repo> {out}`.")
    for info in sorted(out.glob(f"model_info/*/Linf/{ns.robustbench}.json")) if ns.robustbench else ():
        print(f"RobustBench model info: {info} (add it to RobustBench's repository at {info.relative_to(out)}).")
    return 0


@hookimpl
def rd_register_commands(commands):
    commands.register(cmd_export)
