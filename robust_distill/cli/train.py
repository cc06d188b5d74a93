"""``robust-distill train``: train (or resume) a student from a YAML config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from robust_distill import hookimpl
from robust_distill.api import train
from robust_distill.cli import command
from robust_distill.config import effective_config, load_config
from robust_distill.core.manager import get_registries
from robust_distill.engine.output import check_resumable
from robust_distill.files.lock import FolderLockedError, lock_holder


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.epochs=5 --set threat.eps=16/255")
    p.add_argument("--no-resume", action="store_true", help="start over even if output_dir has last.pt")
    p.add_argument("--check", action="store_true",
                   help="build the run without training it (every part, teacher and student, on the meta device) "
                        "and print the effective config, constructor defaults included; writes nothing")


@command("train", "train a student from a YAML config (resumes from output_dir/last.pt)", _train_args,
         interrupted="the same `robust-distill train` command resumes from the last finished epoch.")
def cmd_train(ns: argparse.Namespace) -> int:

    regs = get_registries()
    cfg = load_config(ns.config, regs, ns.overrides)  # validates by building the run on `meta` (config.validate)
    if ns.check:
        holder = lock_holder(cfg.output_dir)
        if holder is not None:  # train's own refusal: another process trains in this folder
            raise FolderLockedError(Path(cfg.output_dir), holder, "output_dir")
        last = Path(cfg.output_dir) / "last.pt"
        if not ns.no_resume:
            check_resumable(cfg)  # train's own check: a last.pt of another config or of more epochs is refused
            if last.is_file():
                print(f"# {str(last)!r} exists: train resumes from it (--no-resume starts over)")
        print("# the effective config: defaults < the method's < the file < --set; parts' constructor defaults "
              "included")
        print(yaml.safe_dump(effective_config(cfg, regs), sort_keys=False))
        return 0
    summary = train(cfg, resume=not ns.no_resume)
    print(json.dumps(summary, indent=2, default=str))
    return 0


@hookimpl
def rd_register_commands(commands):
    commands.register(cmd_train)
