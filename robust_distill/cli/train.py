"""``robust-distill train``: train (or resume) a student from a YAML config."""

from __future__ import annotations

import argparse
import json

from .. import hookimpl
from . import command


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.epochs=5 --set threat.eps=16/255")
    p.add_argument("--no-resume", action="store_true", help="start over even if output_dir has last.pt")
    p.add_argument("--check", action="store_true", help="validate the config, print it resolved, and exit")


@command("train", "train a student from a YAML config (resumes from output_dir/last.pt)", _train_args)
def cmd_train(ns: argparse.Namespace) -> int:
    import yaml

    from ..api import train
    from ..config import config_to_dict, load_config, plain_data
    from ..plugin import get_registries

    cfg = load_config(ns.config, get_registries(), ns.overrides)
    if ns.check:
        print(yaml.safe_dump(plain_data(config_to_dict(cfg)), sort_keys=False))
        return 0
    summary = train(cfg, resume=not ns.no_resume)
    print(json.dumps(summary, indent=2, default=str))
    return 0


@hookimpl
def rd_register_commands(commands):
    commands.register(cmd_train)
