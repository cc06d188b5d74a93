"""``robust-distill export RUN_OR_CHECKPOINT OUT_DIR``: a student as a timm / Hugging Face Hub folder.

Writes ``model.safetensors``, ``config.json`` (timm's Hub format) and a model card ``README.md`` with the
robustness table (:mod:`robust_distill.hub`). The table holds what the run measured for the checkpoint (its
final test evaluation, ``eval.final_attacks``); ``--evaluate clean,pgd20,autoattack`` measures it now, on the
first ``--n-examples`` test images. The folder loads back as ``hf-hub:OUT_DIR`` and uploads as it is
(``huggingface-cli upload <user>/<repo> OUT_DIR``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import hookimpl
from . import command, integer

__all__ = ["run_export"]


def _evaluate(ckpt_path: Path, attacks: list[str], n_examples: int, batch_size: int, device: str,
              regs: Any) -> dict[str, Any]:
    """The exported checkpoint against ``attacks`` on the first ``n_examples`` test images, at its eps."""
    from ..checkpoint import build_from_checkpoint
    from ..distributed import resolve_device
    from ..evaluation import evaluate, make_eval_attacks

    model, ckpt = build_from_checkpoint(ckpt_path, regs)
    cfg = ckpt.get("config") or {}
    data = cfg.get("data", {})
    bundle = regs.datasets.get(ckpt["model"]["dataset"]).load(root=data.get("root"), **data.get("options", {}))
    x, y = bundle.test_x[:n_examples or None], bundle.test_y[:n_examples or None]
    eps = cfg.get("eval", {}).get("eps") or cfg.get("threat", {}).get("eps")
    result = evaluate(model.to(resolve_device(device)), x, y,
                      make_eval_attacks(attacks, regs, eps=eps, num_classes=bundle.info.num_classes),
                      batch_size=batch_size, device=resolve_device(device), seed=cfg.get("seed", 0), progress=True,
                      desc="export")
    return {"split": "test", "n_examples": int(x.shape[0]), "accuracy": result.accuracy}


def run_export(ns: argparse.Namespace) -> Path:
    from ..hub import export_model, locate_checkpoint
    from ..plugin import get_registries

    regs = get_registries()
    results = None
    if ns.evaluate:
        ckpt_path, _ = locate_checkpoint(ns.run, ns.checkpoint)
        results = _evaluate(ckpt_path, [a.strip() for a in ns.evaluate.split(",") if a.strip()], ns.n_examples,
                            ns.batch_size, ns.device, regs)
    return export_model(ns.run, ns.out_dir, regs, which=ns.checkpoint, results=results, repo_id=ns.repo_id,
                        overwrite=ns.force)


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


@command("export", "a trained student as a timm / Hugging Face Hub folder with a model card", _export_args)
def cmd_export(ns: argparse.Namespace) -> int:
    out = run_export(ns)
    print(f"Exported to {out}/ (config.json, model.safetensors, README.md). Load it as hf-hub:{out}; upload with "
          f"`huggingface-cli upload <user>/<repo> {out}`.")
    return 0


@hookimpl
def rd_register_commands(commands):
    commands.register(cmd_export)
