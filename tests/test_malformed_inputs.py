"""Malformed configs and command lines, each through the real CLI (``robust_distill.cli.main``, in-process).

For every case: the exit code is 2 (a bad command line or config) or 3 (a name, file or folder problem), as
the case expects; nothing escapes as an exception and no traceback is printed; the message names the
offending key or flag and, where there is a set of valid values, shows them; and nothing is written to disk
(the case's folder, which is also the current folder, is identical before and after).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from robust_distill.cli import main
from robust_distill.files.atomic import atomic_save

from .conftest import TINY

DELETE = object()

BASE: dict[str, Any] = {**copy.deepcopy(TINY), "output_dir": "runs/never"}
METHODS = ["pgd_at", "rslad", "adaad"]  # a message listing the registered methods shows these
ATTACKS = ["clean", "pgd20", "autoattack"]
DATASETS = ["cifar10", "fashion_mnist", "synthetic"]
NO_CUDA = not torch.cuda.is_available()


@dataclass
class Case:
    id: str
    setup: Callable[[Path], list[str]]  # writes the case's inputs into the folder, returns argv
    expect: list[str]  # substrings of the message: the key or flag, and valid values where there is a set
    code: int = 2


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value


def config(changes: dict[str, Any] | None = None, method: str | None = None, flags: tuple[str, ...] = ()
           ) -> Callable[[Path], list[str]]:
    """``train <a config with these dotted changes>``; ``{d}`` in a value is the cases' folder."""
    def setup(folder: Path) -> list[str]:
        raw = copy.deepcopy(BASE)
        if method:
            raw["method"] = method
        for k, v in (changes or {}).items():
            _set(raw, k, v)
        path = folder / "case.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False).replace("{d}", str(folder)))
        return ["train", str(path), *flags]
    return setup


def text(body: str, *flags: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        (folder / "case.yaml").write_text(body)
        return ["train", str(folder / "case.yaml"), *flags]
    return setup


def argv(*args: str) -> Callable[[Path], list[str]]:
    return lambda folder: [a.format(d=folder) for a in args]


def grid(content: dict[str, Any] | str, *flags: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        path = folder / "grid.yaml"
        if isinstance(content, str):
            path.write_text(content)
        else:
            g = {"output_dir": "grid_out", "base": {k: v for k, v in BASE.items() if k != "output_dir"},
                 "grid": {"seed": [0, 1]}}
            for k, v in content.items():
                if v is DELETE:
                    g.pop(k, None)
                else:
                    g[k] = v
            path.write_text(yaml.safe_dump(g, sort_keys=False))
        return ["bench", str(path), *flags]
    return setup


def teacher(kind: str) -> dict[str, Any]:
    return {"teachers": {"robust": f"checkpoint:{{d}}/teachers/{kind}.pt"}}


EVAL = ["eval", "timm:convnet_xs", "--dataset", "synthetic", "--attacks", "clean"]
DUP = yaml.safe_dump(BASE, sort_keys=False)

CASES = [
    # -- train: keys and names ------------------------------------------------------------------------
    Case("unknown top-level key", config({"methd": "pgd_at"}), ["methd", "Did you mean 'method'", "Valid keys"]),
    Case("unknown data key", config({"data.bach_size": 8}), ["data.bach_size", "batch_size"]),
    Case("unknown method", config({"method": "pgd_ta"}), ["method", "pgd_at", *METHODS]),
    Case("method missing", config({"method": DELETE}), ["method: required", *METHODS]),
    Case("method not a string", config({"method": 3}), ["method", *METHODS]),
    Case("student without source prefix", config({"student": "convnet_xs"}), ["student.key", "timm"]),
    Case("unknown timm student", config({"student": "timm:convnet_xxs"}), ["student.key", "convnet_xs"]),
    Case("unknown student source", config({"student": "zoo:convnet_xs"}), ["student.key", "timm"]),
    Case("student option value", config({"student.kwargs.norm": "batch"}), ["student.kwargs", "'bn' or 'none'"]),
    Case("student unknown option", config({"student.kwargs.widht": 8}), ["student.kwargs", "widht"]),
    Case("student missing", config({"student": DELETE}), ["student", "required"]),
    Case("teacher the method does not use", config({"teachers.robust": "timm:convnet_xs"}),
         ["teachers.robust", "does not use", "none"]),
    Case("teacher the method needs", config(method="rslad"), ["teachers.robust", "needs a 'robust' teacher"]),
    Case("teacher file missing", config({"teachers.robust": "checkpoint:{d}/nope.pt"}, "rslad"),
         ["teachers.robust.key", "does not exist"]),
    Case("teacher file truncated", config(teacher("truncated"), "rslad"), ["teachers.robust.key", "truncated"]),
    Case("teacher file is text", config(teacher("text"), "rslad"), ["teachers.robust.key", "Could not read"]),
    Case("teacher file pickles code", config(teacher("pickle"), "rslad"), ["teachers.robust.key", "trust_checkpoint"]),
    Case("teacher of another input shape", config(teacher("other_shape"), "rslad"),
         ["teachers.robust.key", "(3, 8, 8)", "(1, 8, 8)"]),
    Case("teacher of another class count", config(teacher("ten_classes"), "rslad"),
         ["teachers.robust.key", "10 classes", "has 4"]),
    Case("teacher weights without architecture", config(teacher("plain"), "rslad"),
         ["teachers.robust.key", "arch"]),
    Case("teacher path is a folder", config({"teachers.robust": "checkpoint:{d}/teachers"}, "rslad"),
         ["teachers.robust.key", "is a folder"]),
    Case("unknown teacher source", config({"teachers.robust": "zoo:x"}, "rslad"),
         ["teachers.robust.key", "robustbench", "checkpoint", "timm"]),
    Case("unknown timm teacher", config({"teachers.robust": "timm:convnet_xxs"}, "rslad"),
         ["teachers.robust.key", "timm has no model", "convnet_xs"]),
    Case("timm teacher checkpoint_path missing",
         config({"teachers.robust": {"key": "timm:convnet_xs", "kwargs": {"checkpoint_path": "{d}/nope.pt"}}}, "rslad"),
         ["teachers.robust.key", "checkpoint_path"]),
    Case("timm teacher weights of another network",
         config({"teachers.robust": {"key": "timm:convnet_s", "kwargs": {"checkpoint_path": "{d}/teachers/plain.pt"}}},
                "rslad"), ["teachers.robust.key", "do not fit timm:convnet_s"]),
    Case("teacher unknown option", config({"teachers.robust": {"key": "checkpoint:{d}/teachers/good.pt",
                                                               "kwargs": {"archh": "timm:convnet_xs"}}}, "rslad"),
         ["teachers.robust.kwargs.archh", "Did you mean 'arch'", "trust_checkpoint"]),
    Case("teachers not a mapping", config({"teachers": "timm:convnet_xs"}, "rslad"), ["teachers", "mapping"]),
    Case("unknown inner attack", config({"inner_attack": "pgd"}), ["inner_attack.key", "pgd_ce", "kl_pgd"]),
    Case("unknown inner attack option", config({"inner_attack.kwargs.strat": "none"}),
         ["inner_attack.kwargs.strat", "Did you mean 'start'"]),
    Case("unknown outer loss", config({"outer_loss": "kl"}), ["outer_loss.key", "ce_adv", "rslad"]),
    Case("unknown teacher updater", config({"teacher_updater": "ema"}), ["teacher_updater.key", "self_ema", "frozen"]),
    Case("unknown schedule", config({"optim.schedule": {"key": "stepwise"}}),
         ["optim.schedule.key", "multistep", "cosine", "constant"]),
    Case("unknown schedule option", config({"optim.schedule.kwargs.milstones": [1]}),
         ["optim.schedule.kwargs.milstones", "milestones"]),
    Case("unknown dataset", config({"data.dataset": "cifar11"}), ["data.dataset", *DATASETS]),
    Case("unknown dataset option", config({"data.options.n_trian": 96}), ["data.options.n_trian", "n_train"]),
    Case("data root missing", config({"data.root": "{d}/no-data"}), ["data.root", "does not exist"]),
    Case("data not a mapping", config({"data": "synthetic"}), ["data", "mapping"]),
    Case("unknown eval attack", config({"eval.attacks": ["clean", "pgd21"]}), ["eval.attacks", "pgd20", *ATTACKS]),
    Case("unknown final attack", config({"eval.final_attacks": ["autoatack"]}), ["eval.final_attacks", *ATTACKS]),
    Case("no eval attack", config({"eval.attacks": [], "eval.select": "clean"}), ["eval.attacks", *ATTACKS]),
    Case("eval attacks not a list", config({"eval.attacks": "clean"}), ["eval.attacks", "list"]),
    Case("select not evaluated", config({"eval.select": "pgd10"}), ["eval.select", "clean, pgd20"]),
    Case("eval split", config({"eval.split": "train"}), ["eval.split", "'val'", "'test'"]),
    Case("val split without val data", config({"data.val_size": 0}), ["eval.split", "data.val_size"]),
    # -- train: values ------------------------------------------------------------------------------------
    Case("eps of 8", config({"threat.eps": 8}), ["threat", "eps must be in (0, 1]", "8/255"]),
    Case("negative eps", config({"threat.eps": -0.1}), ["threat", "eps must be in (0, 1]"]),
    Case("zero eps", config({"threat.eps": 0}), ["threat", "eps must be in (0, 1]"]),
    Case("eps not a number", config({"threat.eps": "abc"}), ["threat.eps", "8/255"]),
    Case("zero step size", config({"threat.step_size": 0}), ["threat", "step_size must be > 0"]),
    Case("zero steps", config({"threat.steps": 0}), ["threat", "steps must be an integer >= 1"]),
    Case("fractional steps", config({"threat.steps": 2.5}), ["threat.steps", "integer"]),
    Case("eps_end of 2", config({"threat.eps_end": 2}), ["threat", "eps_end must be in (0, 1]"]),
    Case("L2 threat", config({"threat.norm": "L2"}), ["threat", "norm", "Linf"]),
    Case("unknown threat key", config({"threat.epsilon": 0.1}), ["threat.epsilon", "Did you mean 'eps'"]),
    Case("negative lr", config({"optim.lr": -0.1}), ["optim.lr must be > 0"]),
    Case("zero lr", config({"optim.lr": 0}), ["optim.lr must be > 0"]),
    Case("lr not a number", config({"optim.lr": "fast"}), ["optim.lr"]),
    Case("zero epochs", config({"optim.epochs": 0}), ["optim.epochs", ">= 1"]),
    Case("fractional epochs", config({"optim.epochs": 2.5}), ["optim.epochs", "integer"]),
    Case("momentum above 1", config({"optim.momentum": 1.5}), ["optim.momentum", "[0, 1)"]),
    Case("negative momentum", config({"optim.momentum": -0.1}), ["optim.momentum", "[0, 1)"]),
    Case("negative weight decay", config({"optim.weight_decay": -1}), ["optim.weight_decay", ">= 0"]),
    Case("nesterov without momentum", config({"optim.nesterov": True, "optim.momentum": 0}), ["optim.nesterov"]),
    Case("nesterov not a bool", config({"optim.nesterov": "yes"}), ["optim.nesterov", "true or false"]),
    Case("amp not a bool", config({"optim.amp": "yes"}), ["optim.amp", "true or false"]),
    Case("unknown optim key", config({"optim.optimizer": "adam"}), ["optim.optimizer", "Valid keys", "lr"]),
    Case("zero batch size", config({"data.batch_size": 0}), ["data.batch_size", ">= 1"]),
    Case("negative batch size", config({"data.batch_size": -16}), ["data.batch_size", ">= 1"]),
    Case("zero eval batch size", config({"data.eval_batch_size": 0}), ["data.eval_batch_size", ">= 1"]),
    Case("val_size larger than the data", config({"data.val_size": 96}), ["data.val_size", "96 training images"]),
    Case("negative val_size", config({"data.val_size": -1, "eval.split": "test"}), ["data.val_size", ">= 0"]),
    Case("zero train subset", config({"data.train_subset": 0}), ["data.train_subset", ">= 1"]),
    Case("label noise of 1", config({"data.label_noise": 1}), ["data.label_noise", "[0, 1)"]),
    Case("negative label noise", config({"data.label_noise": -0.1}), ["data.label_noise", "[0, 1)"]),
    Case("augment not a bool", config({"data.augment": "no"}), ["data.augment", "true or false"]),
    Case("split seed not an integer", config({"data.split_seed": "x"}), ["data.split_seed", "integer"]),
    Case("eval eps of 2", config({"eval.eps": 2}), ["eval.eps", "(0, 1]"]),
    Case("eval every 0", config({"eval.every": 0}), ["eval.every", ">= 1"]),
    Case("negative eval examples", config({"eval.n_examples": -5}), ["eval.n_examples", ">= 1"]),
    Case("zero final examples", config({"eval.final_n_examples": 0}), ["eval.final_n_examples", ">= 1"]),
    Case("negative train records", config({"eval.train_records": -1}), ["eval.train_records", ">= 0"]),
    Case("unknown device", config({"device": "gpu"}), ["device", "auto, cpu, cuda or cuda:N"]),
    Case("cuda:7", config({"device": "cuda:7"}), ["device", "cuda:7"]),
    Case("sync_bn on CPU", config({"sync_bn": True}), ["sync_bn", "CUDA"]),
    Case("empty output_dir", config({"output_dir": ""}), ["output_dir", "empty"]),
    Case("output_dir is a file", config({"output_dir": "{d}/a_file"}), ["output_dir", "not a folder"]),
    Case("output_dir below a file", config({"output_dir": "{d}/a_file/run"}), ["output_dir", "is a file"]),
    Case("output_dir not writable", config({"output_dir": "/proc/robust-distill/run"}), ["output_dir", "written"]),
    Case("seed not an integer", config({"seed": "abc"}), ["seed", "integer"]),
    Case("fractional seed", config({"seed": 1.5}), ["seed", "integer"]),
    Case("channels_last not a bool", config({"channels_last": "yes"}), ["channels_last", "true or false"]),
    Case("deterministic not a bool", config({"deterministic": 1}), ["deterministic", "true or false"]),
    Case("config version", config({"version": 2}), ["version", "1"]),
    # -- train: files and flags -----------------------------------------------------------------------------
    Case("duplicate key", text(DUP + "seed: 3\n"), ["duplicate key 'seed'", "line"]),
    Case("duplicate nested key", text(DUP.replace("  batch_size: 16\n", "  batch_size: 16\n  batch_size: 8\n")),
         ["duplicate key 'batch_size'", "line"]),
    Case("YAML syntax error", text("method: pgd_at\ndata: {dataset: synthetic\n"), ["not valid YAML", "line"]),
    Case("top level is a list", text("- method: pgd_at\n"), ["top level must be a mapping", "method"]),
    Case("empty config file", text(""), ["method: required", *METHODS]),
    Case("config path is a folder", argv("train", "{d}"), ["is a folder"]),
    Case("config path missing", argv("train", "{d}/nope.yaml"), ["nope.yaml", "does not exist"]),
    Case("--set without =", config(flags=("--set", "optim.epochs")), ["--set", "key=value"]),
    Case("--set unknown key", config(flags=("--set", "optim.lrr=0.1")), ["optim.lrr", "Did you mean 'lr'"]),
    Case("--set bad value", config(flags=("--set", "optim.lr=abc")), ["optim.lr"]),
    Case("train without config", argv("train"), ["the following arguments are required: config"]),
    Case("train unknown flag", config(flags=("--bogus",)), ["unrecognized arguments: --bogus"]),
    Case("no command", argv(), ["COMMAND"]),
    Case("unknown command", argv("trian"), ["invalid choice: 'trian'", "train", "eval", "bench"]),
    # -- eval -------------------------------------------------------------------------------------------
    Case("eval eps 2", argv(*EVAL, "--eps", "2"), ["--eps", "(0, 1]"]),
    Case("eval eps -1", argv(*EVAL, "--eps=-1"), ["--eps", "(0, 1]"]),
    Case("eval eps abc", argv(*EVAL, "--eps", "abc"), ["--eps", "8/255"]),
    Case("eval eps 0", argv(*EVAL, "--eps", "0"), ["--eps", "(0, 1]"]),
    Case("eval n-examples -5", argv(*EVAL, "--n-examples=-5"), ["--n-examples", ">= 0"]),
    Case("eval n-examples abc", argv(*EVAL, "--n-examples", "abc"), ["--n-examples", "integer"]),
    Case("eval batch-size 0", argv(*EVAL, "--batch-size", "0"), ["--batch-size", ">= 1"]),
    Case("eval batch-size -3", argv(*EVAL, "--batch-size", "-3"), ["--batch-size", ">= 1"]),
    Case("eval no attack", argv(*EVAL, "--attacks", ""), ["--attacks", *ATTACKS]),
    Case("eval unknown attack", argv(*EVAL, "--attacks", "nope"), ["--attacks", *ATTACKS]),
    Case("eval misspelt attack", argv(*EVAL, "--attacks", "clean,pgd21"), ["--attacks", "Did you mean 'pgd20'"]),
    Case("eval out is a folder", argv(*EVAL, "--out", "{d}"), ["--out", "is a folder"]),
    Case("eval out below a file", argv(*EVAL, "--out", "{d}/a_file/r.json"),
         ["--out", "a_file' exists and is not a folder"]),
    Case("eval unknown dataset", argv("eval", "timm:convnet_xs", "--dataset", "cifar11"), ["--dataset", *DATASETS]),
    Case("eval split choice", argv(*EVAL, "--split", "train"), ["--split", "invalid choice", "test", "val"]),
    Case("eval unknown device", argv(*EVAL, "--device", "gpu"), ["--device", "cpu"]),
    Case("eval cuda:7", argv(*EVAL, "--device", "cuda:7"), ["--device", "cuda:7"]),
    Case("eval model option", argv(*EVAL, "--model-option", "model_dir"), ["--model-option", "KEY=VALUE"]),
    Case("eval seed", argv(*EVAL, "--seed", "abc"), ["--seed", "int"]),
    Case("eval data root", argv(*EVAL, "--data-root", "{d}/no-data"), ["--data-root", "does not exist"]),
    Case("eval unknown flag", argv(*EVAL, "--atacks", "clean"), ["unrecognized arguments: --atacks"]),
    Case("eval missing file", argv("eval", "{d}/nope.pt", "--attacks", "clean"), ["nope.pt", "does not exist"], 3),
    Case("eval text file", argv("eval", "{d}/teachers/text.pt", "--attacks", "clean"), ["text.pt", "Could not read"],
         3),
    Case("eval pickle file", argv("eval", "{d}/teachers/pickle.pt", "--attacks", "clean"),
         ["pickle.pt", "--trust-checkpoint"], 3),
    Case("eval unknown timm model", argv("eval", "timm:convnet_xxs", "--dataset", "synthetic", "--attacks", "clean"),
         ["timm:convnet_xxs", "convnet_xs"], 3),
    Case("eval unknown source", argv("eval", "zoo:x", "--dataset", "synthetic", "--attacks", "clean"),
         ["'zoo'", "robustbench", "checkpoint", "timm"], 3),
    Case("eval unknown RobustBench model", argv("eval", "robustbench:Chen2021LTD_WRN34_1", "--dataset", "cifar10",
                                                "--attacks", "clean"), ["Chen2021LTD_WRN34_10"], 3),
    Case("eval RobustBench on a dataset it lacks", argv("eval", "robustbench:Chen2021LTD_WRN34_10", "--dataset",
                                                        "synthetic", "--attacks", "clean"),
         ["'synthetic'", "cifar10", "cifar100"], 3),
    Case("eval val split larger than the data", argv(*EVAL, "--split", "val"), ["--split val", "--split test"]),
    # -- bench ------------------------------------------------------------------------------------------
    Case("grid file missing", argv("bench", "{d}/nope.yaml"), ["grid file", "does not exist"]),
    Case("grid file is a folder", argv("bench", "{d}"), ["grid file", "is a folder"]),
    Case("unknown grid key", grid({"gird": {"seed": [0]}}), ["gird", "grid", "exclude", "per_method"]),
    Case("grid duplicate key", grid("output_dir: a\noutput_dir: b\n"), ["duplicate key 'output_dir'"]),
    Case("grid YAML error", grid("grid: [seed\n"), ["not valid YAML"]),
    Case("grid top level a list", grid("- seed\n"), ["top level must be a mapping", "grid", "base"]),
    Case("parallel -2", grid({"parallel": -2}), ["parallel", ">= 1"]),
    Case("parallel not an integer", grid({"parallel": "two"}), ["parallel", ">= 1"]),
    Case("--parallel -2", grid({}, "--parallel", "-2"), ["--parallel", ">= 1"]),
    Case("--parallel 0", grid({}, "--parallel", "0"), ["--parallel", ">= 1"]),
    Case("torchrun 0", grid({"torchrun": 0}), ["torchrun", ">= 1"]),
    Case("threads_per_run -1", grid({"threads_per_run": -1}), ["threads_per_run", ">= 1"]),
    Case("exclude with an unknown key", grid({"exclude": [{"seeed": 0}]}), ["exclude[0].seeed", "seed"]),
    Case("exclude with an unknown value", grid({"exclude": [{"seed": 7}]}), ["exclude[0].seed", "(0, 1)"]),
    Case("exclude not a list", grid({"exclude": {"seed": 0}}), ["exclude", "list of mappings"]),
    Case("runs not mappings", grid({"runs": ["seed=3"]}), ["runs", "list of mappings"]),
    Case("grid not a mapping", grid({"grid": ["seed"]}), ["grid", "mapping"]),
    Case("grid output_dir empty", grid({"output_dir": ""}), ["output_dir"]),
    Case("grid base file missing", grid({"base": "nope.yaml"}), ["base", "nope.yaml", "does not exist"]),
    Case("grid base with a bad value", grid({"set": {"optim.lr": -1}}), ["seed=0", "optim.lr must be > 0"]),
    Case("grid axis with an unknown key", grid({"grid": {"optim.lrr": [0.1]}}), ["optim.lrr", "Did you mean 'lr'"]),
    Case("grid runs named alike", grid({"grid": {"seed": [0, 0]}}), ["seed=0", "both named"]),
    # -- report, unlearnable, teacher-score, specialization, demo, plugins -----------------------------------
    Case("report folder missing", argv("report", "{d}/nope"), ["nope", "does not exist"], 3),
    Case("report no runs", argv("report", "{d}/teachers", "--no-plots"), ["No runs under"], 3),
    Case("report corrupt summary", argv("report", "{d}/results/corrupt_summary", "--no-plots"),
         ["corrupt_summary/a/summary.json", "not valid JSON"], 3),
    Case("report corrupt metrics", argv("report", "{d}/results/corrupt_metrics", "--no-plots"),
         ["corrupt_metrics/a/metrics.jsonl", "line 2"], 3),
    Case("report corrupt config", argv("report", "{d}/results/corrupt_config", "--no-plots"),
         ["corrupt_config/a/config.yaml"], 3),
    Case("report --where", argv("report", "{d}/results/good", "--where", "method"), ["--where", "KEY=V1,V2"]),
    Case("report --out is a file", argv("report", "{d}/results/good", "--out", "{d}/a_file"), ["--out", "folder"]),
    Case("report --teacher-scores missing", argv("report", "{d}/results/good", "--teacher-scores", "{d}/nope.json"),
         ["--teacher-scores", "does not exist"], 3),
    Case("report --teacher-scores corrupt", argv("report", "{d}/results/good", "--teacher-scores",
                                                 "{d}/corrupt.json"), ["--teacher-scores", "not valid JSON"], 3),
    Case("unlearnable run missing", argv("unlearnable", "{d}/nope", "--out", "{d}/su.json"), ["nope"], 3),
    Case("unlearnable without records", argv("unlearnable", "{d}/results/good/a", "--out", "{d}/su.json"),
         ["train_records", "eval.train_records"], 3),
    Case("unlearnable --out is a folder", argv("unlearnable", "{d}/results/good/a", "--out", "{d}"),
         ["--out", "is a folder"]),
    Case("teacher-score --unlearnable missing", argv("teacher-score", "--teachers", "timm:convnet_xs",
                                                     "--unlearnable", "{d}/nope.json"),
         ["--unlearnable", "does not exist"], 3),
    Case("teacher-score --unlearnable corrupt", argv("teacher-score", "--teachers", "timm:convnet_xs",
                                                     "--unlearnable", "{d}/corrupt.json"),
         ["--unlearnable", "not valid JSON"], 3),
    Case("teacher-score --unlearnable of another kind", argv("teacher-score", "--teachers", "timm:convnet_xs",
                                                             "--unlearnable", "{d}/list.json"),
         ["--unlearnable", "robust-distill unlearnable"], 3),
    Case("teacher-score --batch-size 0", argv("teacher-score", "--teachers", "timm:convnet_xs", "--unlearnable",
                                              "{d}/corrupt.json", "--batch-size", "0"), ["--batch-size", ">= 1"]),
    Case("teacher-score --device", argv("teacher-score", "--teachers", "timm:convnet_xs", "--unlearnable",
                                        "{d}/corrupt.json", "--device", "gpu"), ["--device", "cpu"]),
    Case("teacher-score without teachers", argv("teacher-score", "--unlearnable", "{d}/corrupt.json"),
         ["--teachers"]),
    Case("specialization --layers", argv("specialization", "--teacher", "timm:convnet_xs", "--student",
                                         "timm:convnet_xs", "--layers", "features.0"), ["--layers", "features.2="]),
    Case("specialization --thresholds abc", argv("specialization", "--teacher", "t", "--student", "s", "--layers",
                                                 "a=b", "--thresholds", "abc"), ["--thresholds", "0.8,0.9"]),
    Case("specialization --thresholds reversed", argv("specialization", "--teacher", "t", "--student", "s",
                                                      "--layers", "a=b", "--thresholds", "0.9,0.8"),
         ["--thresholds", "LOW <= HIGH"]),
    Case("specialization --n-examples 0", argv("specialization", "--teacher", "t", "--student", "s", "--layers",
                                               "a=b", "--n-examples", "0"), ["--n-examples", ">= 1"]),
    Case("specialization --eps 3", argv("specialization", "--teacher", "t", "--student", "s", "--layers", "a=b",
                                        "--eps", "3"), ["--eps", "(0, 1]"]),
    Case("specialization --device", argv("specialization", "--teacher", "t", "--student", "s", "--layers", "a=b",
                                         "--device", "cuda:7"), ["--device", "cuda:7"]),
    Case("specialization --dataset", argv("specialization", "--teacher", "t", "--student", "s", "--layers", "a=b",
                                          "--dataset", "cifar11"), ["--dataset", *DATASETS]),
    Case("specialization --out is a file", argv("specialization", "--teacher", "t", "--student", "s", "--layers",
                                                "a=b", "--out", "{d}/a_file"), ["--out", "not a folder"]),
    Case("demo --epochs 0", argv("demo", "--epochs", "0"), ["--epochs", ">= 1"]),
    Case("demo --epochs abc", argv("demo", "--epochs", "abc"), ["--epochs", "integer"]),
    Case("demo --n-test -1", argv("demo", "--n-test", "-1"), ["--n-test", ">= 1"]),
    Case("plugins unknown flag", argv("plugins", "--nmes"), ["unrecognized arguments: --nmes"]),
    # -- export, prune, select-teacher ------------------------------------------------------------------------
    Case("export missing run", argv("export", "{d}/no_run", "{d}/hub_out"), ["no_run"], 3),
    Case("export --batch-size 0", argv("export", "{d}/results/good/a", "{d}/hub_out", "--batch-size", "0"),
         ["--batch-size", ">= 1"]),
    Case("export --n-examples abc", argv("export", "{d}/results/good/a", "{d}/hub_out", "--n-examples", "abc"),
         ["--n-examples", "integer"]),
    Case("prune missing checkpoint", argv("prune", "{d}/nope.pt", "--out", "{d}/p.pt", "--widths", "4"),
         ["nope.pt"], 3),
    Case("prune without --widths or --threshold", argv("prune", "{d}/teachers/good.pt", "--out", "{d}/p.pt"),
         ["--threshold", "--widths"]),
    Case("prune --n-check -1", argv("prune", "{d}/teachers/good.pt", "--out", "{d}/p.pt", "--widths", "4",
                                    "--n-check", "-1"), ["--n-check", ">= 0"]),
    Case("select-teacher unknown method", argv("select-teacher", "--student", "timm:convnet_xs", "--teachers",
                                               "{d}/teachers/good.pt", "--methods", "pgd_att"),
         ["--methods", "pgd_at"]),
    Case("select-teacher --eps 8", argv("select-teacher", "--student", "timm:convnet_xs", "--teachers",
                                        "{d}/teachers/good.pt", "--eps", "8"), ["--eps", "(0, 1]"]),
    Case("select-teacher --seeds abc", argv("select-teacher", "--student", "timm:convnet_xs", "--teachers",
                                            "{d}/teachers/good.pt", "--seeds", "abc"), ["--seeds", "integer"]),
    Case("select-teacher --device", argv("select-teacher", "--student", "timm:convnet_xs", "--teachers",
                                         "{d}/teachers/good.pt", "--device", "cuda:7"), ["--device", "cuda:7"]),
    Case("select-teacher --out is a folder", argv("select-teacher", "--student", "timm:convnet_xs", "--teachers",
                                                  "{d}/teachers/good.pt", "--out", "{d}/teachers"), ["--out"]),
]


def _fixtures(folder: Path, regs: Any) -> None:
    """Files the cases point at: teacher checkpoints good and bad, results folders with corrupt files."""
    from robust_distill.core.components import DatasetInfo
    from robust_distill.engine.run import build_student, model_spec

    (folder / "a_file").write_text("")
    (folder / "corrupt.json").write_text('{"teachers": [')
    (folder / "list.json").write_text("[1, 2]")
    teachers = folder / "teachers"
    teachers.mkdir()
    for kind, info in (("good", DatasetInfo("synthetic", 4, (3, 8, 8))),
                       ("other_shape", DatasetInfo("synthetic", 4, (1, 8, 8))),
                       ("ten_classes", DatasetInfo("synthetic", 10, (3, 8, 8)))):
        model = build_student("timm:convnet_xs", {}, info, regs)
        atomic_save({"format": "robust-distill/1", "model": model_spec("timm:convnet_xs", {}, info),
                     "state_dict": model.state_dict()}, teachers / f"{kind}.pt")
    good = (teachers / "good.pt").read_bytes()
    (teachers / "truncated.pt").write_bytes(good[:len(good) // 2])
    (teachers / "text.pt").write_text("<html>404 Not Found</html>\n")
    torch.save({"state_dict": {}, "evil": Case}, teachers / "pickle.pt")  # pickles a class
    atomic_save({"state_dict": build_student("timm:convnet_xs", {}, DatasetInfo("s", 4, (3, 8, 8)), regs).state_dict()},
                teachers / "plain.pt")
    row = {"epoch": 0, "train_loss": 1.0, "val_clean": 0.5, "val_pgd20": 0.2, "is_best": True}
    resolved = {**BASE, "eval": {**BASE["eval"], "split": "val"}}
    for name, broken in (("good", None), ("corrupt_summary", "summary.json"), ("corrupt_metrics", "metrics.jsonl"),
                         ("corrupt_config", "config.yaml")):
        run = folder / "results" / name / "a"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(resolved))
        (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        (run / "summary.json").write_text(json.dumps({"best_epoch": 0}))
        if broken == "summary.json":
            (run / broken).write_text('{"best_epoch": ')
        elif broken == "metrics.jsonl":
            (run / broken).write_text(json.dumps(row) + "\n{not json\n")
        elif broken == "config.yaml":
            (run / broken).write_text("eval: [unclosed\n")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, regs: Any) -> Path:
    path = tmp_path_factory.mktemp("malformed")
    _fixtures(path, regs)
    return path


def test_there_are_more_than_100_cases() -> None:
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_a_clear_error_and_writes_nothing(case: Case, folder: Path, monkeypatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    if (case.id in ("eval cuda:7", "cuda:7", "specialization --device", "select-teacher --device")
            and torch.cuda.device_count() > 7):
        pytest.skip("this machine has a cuda:7")
    if case.id == "sync_bn on CPU" and not NO_CUDA:
        pytest.skip("the case needs a machine without CUDA")
    if case.id == "output_dir not writable" and (os.name != "posix" or not Path("/proc/self").is_dir()):
        pytest.skip("needs /proc")
    check_case(case, folder, monkeypatch, capsys)


def check_case(case: Case, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Run ``case`` in ``folder`` (the current folder): its exit code, no traceback, the expected words in the
    message, and the folder unchanged."""
    monkeypatch.chdir(folder)
    args = case.setup(folder)
    capsys.readouterr()
    before = _snapshot(folder)
    code = main(args)  # an exception escaping here is a traceback: the test fails
    out, err = capsys.readouterr()
    assert _snapshot(folder) == before, "something was written"
    assert "Traceback" not in out + err
    assert code == case.code, f"exit {code}:\n{err}"
    missing = [e for e in case.expect if e not in err]
    assert not missing, f"{missing} not in:\n{err}"
