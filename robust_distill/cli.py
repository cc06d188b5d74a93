"""The ``robust-distill`` command line: ``plugins``, ``train``, ``eval``, ``demo`` (and the analysis tools)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError
from .config import ConfigError
from .plugin import PluginError
from .registry import RegistryError

__all__ = ["main", "build_parser"]



@dataclass(frozen=True)
class Command:
    help: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None] = lambda p: None
            ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register a sub-command: ``@command("train", "help", setup_arguments)``."""
    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(help, setup, fn)
        return fn
    return wrap


# -------------------------------------------------------------------------------------------------
# plugins
# -------------------------------------------------------------------------------------------------


def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", action="store_true",
                   help="also list the names each teacher/student source knows (imports robustbench)")


@command("plugins", "list every registered part by kind, with the plugin and distribution providing it", _plugins_args)
def cmd_plugins(ns: argparse.Namespace) -> int:
    from .plugin import get_plugin_manager, get_registries

    pm, regs = get_plugin_manager(), get_registries()
    print("Plugins:")
    for name, info in sorted(pm.info.items(), key=lambda kv: (not kv[1].builtin, kv[0])):
        kind = "built-in" if info.builtin else "third-party"
        print(f"  {name:<16} {info.module:<44} {info.distribution} ({kind})")
    for attr, registry in vars(regs).items():
        print(f"\n{attr.replace('_', ' ')}:")
        for e in registry.entries():
            print(f"  {e.name:<22} {e.help[:70]:<72} [{e.plugin}; {e.distribution}]")
            if ns.names and hasattr(e.obj, "names"):
                try:
                    names = e.obj.names()
                except Exception as exc:  # an optional dependency missing: say so, keep listing
                    names = [f"(cannot list: {exc})"]
                for n in names or []:
                    print(f"      {e.name}:{n}")
    return 0


# -------------------------------------------------------------------------------------------------
# train
# -------------------------------------------------------------------------------------------------


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.epochs=5 --set threat.eps=16/255")
    p.add_argument("--no-resume", action="store_true", help="start over even if output_dir has last.pt")
    p.add_argument("--check", action="store_true", help="validate the config, print it resolved, and exit")


@command("train", "train a student from a YAML config (resumes from output_dir/last.pt)", _train_args)
def cmd_train(ns: argparse.Namespace) -> int:
    import yaml

    from .config import config_to_dict, load_config
    from .plugin import get_registries
    from .trainer import _plain, train

    cfg = load_config(ns.config, get_registries(), ns.overrides)
    if ns.check:
        print(yaml.safe_dump(_plain(config_to_dict(cfg)), sort_keys=False))
        return 0
    summary = train(cfg, resume=not ns.no_resume)
    print(json.dumps(summary, indent=2, default=str))
    return 0


# -------------------------------------------------------------------------------------------------
# eval
# -------------------------------------------------------------------------------------------------


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
    p.add_argument("--surrogate", default=None,
                   help="model spec of a surrogate: adds transfer attacks (PGD-20 and CW-inf crafted on it)")
    p.add_argument("--out", default=None, help="write results (JSON) and per-sample correctness (.pt) here")
    p.add_argument("--seed", type=int, default=0)


@command("eval", "evaluate a checkpoint or a RobustBench/timm model against chosen attacks", _eval_args)
def cmd_eval(ns: argparse.Namespace) -> int:
    from .evaluate_cli import run_eval

    result = run_eval(ns)
    print(result["table"])
    return 0


# -------------------------------------------------------------------------------------------------
# demo
# -------------------------------------------------------------------------------------------------


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default: the demo's)")
    p.add_argument("--n-test", type=int, default=None, help="test examples for the final table")
    p.add_argument("--quick", action="store_true", help="a tiny smoke version (seconds, not minutes)")
    p.add_argument("--full-autoattack", action="store_true",
                   help="also AutoAttack standard on the student (FAB-T and Square: several more minutes on a CPU)")
    p.add_argument("--method", default=None,
                   help="the student's training method (default: the demo's distillation; pgd_at: the baseline)")
    p.add_argument("--evaluate-teacher", action="store_true",
                   help="evaluate the teacher here instead of printing its committed numbers (~20 CPU-minutes)")


@command("demo", "the main job: distil a robust Fashion-MNIST student on a CPU and compare it with PGD-AT", _demo_args)
def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import METHOD, run_demo

    run_demo(output_dir=Path(ns.output_dir), epochs=ns.epochs, n_test=ns.n_test, quick=ns.quick,
             full_autoattack=ns.full_autoattack, method=ns.method or METHOD, evaluate_teacher=ns.evaluate_teacher)
    return 0


# -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="robust-distill", description="Adversarial robustness distillation: every method, one engine.")
    parser.add_argument("--version", action="version", version=f"robust-distill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        cmd.setup(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from . import analysis_cli  # noqa: F401  (registers bench, report, unlearnable, teacher-score, specialization)

    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command].run(ns)
    except ConfigError as exc:
        print(f"robust-distill: {exc}", file=sys.stderr)
        return 2
    except (PluginError, RegistryError, CheckpointError, FileNotFoundError) as exc:
        print(f"robust-distill: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("robust-distill: interrupted; `train` resumes from the last finished epoch.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover  (`python -m robust_distill.cli`: use the imported module's registry)
    from robust_distill import cli as _cli

    sys.exit(_cli.main())
