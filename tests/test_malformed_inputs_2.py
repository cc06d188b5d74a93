"""More malformed inputs, each refused by ``train --check`` (or ``eval``/``bench``) before any work.

The cases of issue 23: numbers that are not finite or do not fit their use, learning-rate schedules that fail
when evaluated, part constructors that refuse their options, output folders that cannot be created (NUL, name
and path length, what is in the way), paths that are pipes, sockets or symbolic link loops, ``--set`` overrides
that cannot apply, and broken ``hf-hub:`` folders (truncated weights, a missing tensor, a wrong shape, an unknown
architecture, a garbled config). Each is checked by :func:`tests.test_malformed_inputs.check_case`: exit code,
no traceback, the key named, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from robust_distill.cli import main
from robust_distill.config import config_to_dict, plain_data, resolve_config
from robust_distill.files.atomic import atomic_save

from .test_malformed_inputs import BASE, Case, _fixtures, _snapshot, argv, check_case, config, text

CHECK = ("--check",)
RSLAD = "rslad"


def check(changes: dict[str, Any], method: str | None = None) -> Callable[[Path], list[str]]:
    """``train <config with these dotted changes> --check``."""
    return config(changes, method, CHECK)


def override(*sets: str) -> Callable[[Path], list[str]]:
    """``train <the base config> --check --set ...``."""
    return config(flags=(*CHECK, *(a for s in sets for a in ("--set", s))))


def hub(kind: str, role: str = "teachers.robust") -> dict[str, Any]:
    return {role: f"hf-hub:{{d}}/hubs/{kind}"}


EVAL_HUB = ("--dataset", "synthetic", "--attacks", "clean", "--n-examples", "8")
LONG_NAME = "n" * 300
LONG_PATH = "/".join(["p" * 200] * 22)  # 4.4 kB: every name fits, the path does not

CASES = [
    # -- numbers: finite where read ------------------------------------------------------------------------
    Case("infinite lr", check({"optim.lr": float("inf")}), ["optim.lr", "finite"]),
    Case("NaN lr", check({"optim.lr": float("nan")}), ["optim.lr", "finite"]),
    Case("lr overflowing to inf", check({"optim.lr": "1e999"}), ["optim.lr", "finite"]),
    Case("infinite weight decay", check({"optim.weight_decay": float("inf")}), ["optim.weight_decay", "finite"]),
    Case("NaN momentum", check({"optim.momentum": float("nan")}), ["optim.momentum", "finite"]),
    Case("infinite step size", check({"threat.step_size": float("inf")}), ["threat.step_size", "finite"]),
    Case("NaN eps", check({"threat.eps": float("nan")}), ["threat.eps", "finite"]),
    Case("-inf eps_end", check({"threat.eps_end": float("-inf")}), ["threat.eps_end", "finite"]),
    Case("infinite eval eps", check({"eval.eps": float("inf")}), ["eval.eps", "finite"]),
    Case("infinite swa start", check({"swa.start": float("inf")}), ["swa.start", "finite"]),
    Case("NaN clip_grad_norm", check({"optim.clip_grad_norm": float("nan")}), ["optim.clip_grad_norm", "finite"]),
    Case("NaN schedule gamma", check({"optim.schedule.kwargs.gamma": float("nan")}),
         ["optim.schedule.kwargs.gamma", "finite"]),
    Case("infinite TRADES beta", check({"outer_loss": {"key": "trades", "kwargs": {"beta": float("inf")}}}, "trades"),
         ["outer_loss.kwargs.beta", "finite"]),
    Case("infinite student option", check({"student.kwargs.drop_rate": float("inf")}),
         ["student.kwargs.drop_rate", "finite"]),
    Case("NaN dataset noise", check({"data.options.noise": float("nan")}), ["data.options.noise", "finite"]),
    Case("infinite warm-up", check({"optim.schedule": {"key": "cosine", "kwargs": {"warmup_epochs": float("inf")}}}),
         ["optim.schedule.kwargs.warmup_epochs", "finite"]),
    # -- integers that do not fit their use ----------------------------------------------------------------
    Case("seed beyond 64 bits", check({"seed": 2**64}), ["seed", "64-bit"]),
    Case("seed beyond 32 bits", check({"seed": 2**32}), ["seed", "0 to 4294967295"]),
    Case("negative seed", check({"seed": -1}), ["seed", "0 to 4294967295"]),
    Case("split seed beyond 32 bits", check({"data.split_seed": 2**40}), ["data.split_seed", "0 to 4294967295"]),
    Case("batch size beyond 64 bits", check({"data.batch_size": 2**70}), ["data.batch_size", "64-bit"]),
    Case("steps beyond 64 bits", check({"threat.steps": 10**30}), ["threat.steps", "64-bit"]),
    Case("epochs beyond 64 bits", check({"optim.epochs": 2**64}), ["optim.epochs", "64-bit"]),
    Case("eval examples beyond 64 bits", check({"eval.n_examples": 2**64}), ["eval.n_examples", "64-bit"]),
    # -- the lr schedule, evaluated at every epoch -----------------------------------------------------------
    Case("milestones not numbers", check({"optim.schedule.kwargs.milestones": ["a"]}),
         ["optim.schedule.kwargs.milestones[0]", "number"]),
    Case("milestones a string", check({"optim.schedule.kwargs.milestones": "100"}),
         ["optim.schedule.kwargs.milestones", "list"]),
    Case("milestones nested", check({"optim.schedule.kwargs.milestones": [[1]]}),
         ["optim.schedule.kwargs.milestones[0]", "number"]),
    Case("negative gamma", check({"optim.schedule.kwargs.gamma": -1}), ["optim.schedule", "-1", ">= 0"]),
    Case("cosine below zero", check({"optim.schedule": {"key": "cosine", "kwargs": {"final": -2}}}),
         ["optim.schedule", "'cosine'", ">= 0"]),
    Case("ciard start not a number", check({"optim.schedule": {"key": "ciard", "kwargs": {"start": "x"}}}),
         ["optim.schedule.kwargs.start", "number"]),
    # -- part constructors -----------------------------------------------------------------------------------
    Case("EMA decay of 2", check({"teacher_updater": {"key": "self_ema", "kwargs": {"decay": 2}}}, RSLAD),
         ["teacher_updater", "'self_ema'", "plugin 'self_distill'", "distribution robust-distill", "decay"]),
    Case("negative warm-up of self_best", check({"teacher_updater": {"key": "self_best",
                                                                     "kwargs": {"warmup_epochs": -1}}}, RSLAD),
         ["teacher_updater", "'self_best'", "plugin 'self_distill'", "warmup_epochs must be >= 0"]),
    Case("self_best init missing", check({"teacher_updater": {"key": "self_best",
                                                              "kwargs": {"init": "{d}/nope.pt"}}}, RSLAD),
         ["teacher_updater", "'self_best'", "does not exist"]),
    Case("a teacher the updater creates", check({"teachers.robust": "timm:convnet_xs", "teacher_updater": "self_ema"},
                                                RSLAD), ["teachers.robust", "'self_ema' creates the 'robust' teacher"]),
    Case("KL-PGD target", check({"inner_attack": {"key": "kl_pgd", "kwargs": {"target": "teacher"}}}),
         ["inner_attack.kwargs.target", "'teacher_clean'"]),
    Case("peer schedule not a mapping", check({"teacher_updater": {"key": "peer", "kwargs": {"schedule": 3}}}),
         ["teacher_updater", "schedule"]),
    # -- output_dir: validated without creating it ---------------------------------------------------------
    Case("output_dir with a NUL", check({"output_dir": "runs/a\0b"}), ["output_dir", "NUL"]),
    Case("output_dir name of 300 characters", check({"output_dir": f"runs/{LONG_NAME}"}),
         ["output_dir", "300 bytes", "255"]),
    Case("output_dir path too long", check({"output_dir": LONG_PATH}), ["output_dir", "bytes long"]),
    Case("output_dir is a named pipe", check({"output_dir": "{d}/special/fifo"}), ["output_dir", "named pipe"]),
    Case("output_dir is a symlink loop", check({"output_dir": "{d}/special/loop"}),
         ["output_dir", "symbolic link loop"]),
    Case("output_dir below a named pipe", check({"output_dir": "{d}/special/fifo/run"}),
         ["output_dir", "named pipe (FIFO), not a folder"]),
    Case("output_dir is a socket", check({"output_dir": "{d}/special/sock"}), ["output_dir", "socket"]),
    # -- paths that are not files ----------------------------------------------------------------------------
    Case("config is a named pipe", argv("train", "{d}/special/fifo", "--check"), ["fifo", "named pipe (FIFO)"]),
    Case("config is a symlink loop", argv("train", "{d}/special/loop", "--check"), ["loop", "symbolic link loop"]),
    Case("config is a broken symlink", argv("train", "{d}/special/dangling", "--check"),
         ["dangling", "broken symbolic link", "nowhere.yaml"]),
    Case("config is a socket", argv("train", "{d}/special/sock", "--check"), ["sock", "a socket"]),
    Case("config is a device", argv("train", "/dev/null", "--check"), ["/dev/null", "device file"]),
    Case("config path with a NUL", argv("train", "{d}/a\0b.yaml", "--check"), ["NUL"]),
    Case("grid file is a named pipe", argv("bench", "{d}/special/fifo"), ["grid file", "named pipe"]),
    Case("teacher checkpoint is a named pipe", check({"teachers.robust": "checkpoint:{d}/special/fifo"}, RSLAD),
         ["teachers.robust.key", "named pipe"]),
    Case("teacher checkpoint is a symlink loop", check({"teachers.robust": "checkpoint:{d}/special/loop"}, RSLAD),
         ["teachers.robust.key", "symbolic link loop"]),
    Case("eval of a named pipe", argv("eval", "{d}/special/fifo", "--attacks", "clean"), ["fifo", "named pipe"], 3),
    Case("eval --out a named pipe", argv("eval", "timm:convnet_xs", *EVAL_HUB, "--out", "{d}/special/fifo"),
         ["--out", "named pipe (FIFO), not a file"]),
    Case("eval --out with a NUL", argv("eval", "timm:convnet_xs", *EVAL_HUB, "--out", "{d}/r\0.json"),
         ["--out", "NUL"]),
    Case("data root a named pipe", check({"data.root": "{d}/special/fifo"}), ["data.root", "named pipe"]),
    Case("timm teacher checkpoint_path a symlink loop",
         check({"teachers.robust": {"key": "timm:convnet_xs", "kwargs": {"checkpoint_path": "{d}/special/loop"}}},
               RSLAD), ["teachers.robust.key", "checkpoint_path", "symbolic link loop"]),
    # -- YAML and --set ----------------------------------------------------------------------------------
    Case("merge of a number", text(yaml.safe_dump(BASE, sort_keys=False) + "swa: {<<: 3}\n", *CHECK),
         ["not valid YAML", "merg"]),
    Case("duplicate key beside a merge", text(yaml.safe_dump(BASE, sort_keys=False)
                                              + "swa: {<<: {start: 1}, start: 2, start: 3}\n", *CHECK),
         ["duplicate key 'start'"]),
    Case("merged unknown key", text(yaml.safe_dump({k: v for k, v in BASE.items() if k != "eval"}, sort_keys=False)
                                    + "eval: {<<: {attacks: [clean], selct: clean}}\n", *CHECK),
         ["eval.selct", "Did you mean 'select'"]),
    Case("--set below a number", override("seed.x=1"), ["--set", "seed is 0, not a mapping"]),
    Case("--set empty key part", override("optim..lr=1"), ["--set", "not a dotted key"]),
    Case("--set leading dot", override(".lr=1"), ["--set", "not a dotted key"]),
    Case("--set mapping with an unknown key", override("optim.lr=0.5", "optim={lrr: 1}"),
         ["optim.lrr", "Did you mean 'lr'"]),
    Case("--set mapping replaced by a list", override("optim=[1]"), ["optim", "mapping"]),
    Case("--set infinite lr", override("optim.lr=.inf"), ["optim.lr", "finite"]),
    # -- a run to resume -------------------------------------------------------------------------------------
    Case("last.pt of another config", check({"output_dir": "{d}/resume"}),
         ["resume/last.pt", "seed: 5 -> 0", "--no-resume"]),
    # -- hf-hub: teachers and students ------------------------------------------------------------------
    Case("hub teacher truncated", check(hub("truncated"), RSLAD),
         ["teachers.robust.key", "incomplete metadata", "download it again"]),
    Case("hub teacher missing a tensor", check(hub("missing"), RSLAD), ["teachers.robust.key", "Missing key"]),
    Case("hub teacher of a wrong shape", check(hub("shape"), RSLAD), ["teachers.robust.key", "size mismatch"]),
    Case("hub teacher of an unknown architecture", check(hub("arch"), RSLAD),
         ["teachers.robust.key", "'convnet_nope'", "timm does not know"]),
    Case("hub teacher config not JSON", check(hub("badjson"), RSLAD), ["teachers.robust.key", "not valid JSON"]),
    Case("hub teacher config a list", check(hub("listjson"), RSLAD), ["teachers.robust.key", "holds a list"]),
    Case("hub teacher config without architecture", check(hub("noarch"), RSLAD),
         ["teachers.robust.key", "'architecture'"]),
    Case("hub teacher without config", check(hub("noconfig"), RSLAD), ["teachers.robust.key", "has no config.json"]),
    Case("hub teacher without weights", check(hub("noweights"), RSLAD),
         ["teachers.robust.key", "model.safetensors"]),
    Case("hub teacher of 10 classes", check(hub("ten"), RSLAD), ["teachers.robust.key", "10 classes", "4"]),
    Case("hub teacher of 1 channel", check(hub("gray"), RSLAD), ["teachers.robust.key", "1 input channels", "3"]),
    Case("hub teacher with bad model_args", check(hub("args"), RSLAD),
         ["teachers.robust.key", "refuses the model_args", "bogus"]),
    Case("hub student truncated", check(hub("truncated", "student")), ["student.key", "incomplete metadata"]),
    Case("hub student of an unknown architecture", check(hub("arch", "student")),
         ["student.key", "timm does not know"]),
    Case("eval hub truncated", argv("eval", "hf-hub:{d}/hubs/truncated10", *EVAL_HUB), ["incomplete metadata"], 3),
    Case("eval hub unknown architecture", argv("eval", "hf-hub:{d}/hubs/arch10", *EVAL_HUB),
         ["timm does not know"], 3),
    Case("eval hub wrong shape", argv("eval", "hf-hub:{d}/hubs/shape10", *EVAL_HUB), ["size mismatch"], 3),
    Case("eval hub config not JSON", argv("eval", "hf-hub:{d}/hubs/badjson", *EVAL_HUB), ["not valid JSON"], 3),
]


def _hub_fixtures(hubs: Path, regs: Any) -> None:
    """Hub folders written by ``export`` (4 classes of 3x8x8, and 10 classes for ``eval``), then broken."""
    from safetensors.torch import load_file, save_file

    from robust_distill.core.components import DatasetInfo
    from robust_distill.engine.run import build_student, model_spec
    from robust_distill.export import export_model

    def export(name: str, info: DatasetInfo) -> Path:
        model = build_student("timm:convnet_xs", {}, info, regs)
        atomic_save({"format": "robust-distill/1", "model": model_spec("timm:convnet_xs", {}, info),
                     "state_dict": model.state_dict()}, hubs / f"{name}.pt")
        out = export_model(hubs / f"{name}.pt", hubs / name, regs)
        (hubs / f"{name}.pt").unlink()
        return out

    good = export("good", DatasetInfo("synthetic", 4, (3, 8, 8)))
    export("ten", DatasetInfo("synthetic", 10, (3, 8, 8)))
    export("gray", DatasetInfo("synthetic", 4, (1, 8, 8)))
    good10 = hubs / "ten"

    def weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
        state = load_file(folder / "model.safetensors")
        edit(state)
        save_file(state, folder / "model.safetensors")

    def config_json(folder: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(edit(cfg)))

    def truncate(folder: Path) -> None:
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:len(data) // 2])

    def first_weight(state: dict[str, torch.Tensor]) -> str:
        return next(k for k in state if k.endswith(".weight"))

    broken: dict[str, tuple[Path, Callable[[Path], None]]] = {
        "truncated": (good, truncate),
        "truncated10": (good10, truncate),
        "missing": (good, lambda f: weights(f, lambda s: s.pop(first_weight(s)))),
        "shape": (good, lambda f: weights(f, lambda s: s.__setitem__(first_weight(s), torch.zeros(2, 2)))),
        "shape10": (good10, lambda f: weights(f, lambda s: s.__setitem__(first_weight(s), torch.zeros(2, 2)))),
        "arch": (good, lambda f: config_json(f, lambda c: {**c, "architecture": "convnet_nope"})),
        "arch10": (good10, lambda f: config_json(f, lambda c: {**c, "architecture": "convnet_nope"})),
        "badjson": (good, lambda f: (f / "config.json").write_text('{"architecture": ')),
        "listjson": (good, lambda f: (f / "config.json").write_text("[1, 2]")),
        "noarch": (good, lambda f: config_json(f, lambda c: {k: v for k, v in c.items() if k != "architecture"})),
        "noconfig": (good, lambda f: (f / "config.json").unlink()),
        "noweights": (good, lambda f: (f / "model.safetensors").unlink()),
        "args": (good, lambda f: config_json(f, lambda c: {**c, "model_args": {**c["model_args"], "bogus": 1}})),
    }
    for name, (source, edit) in broken.items():
        shutil.copytree(source, hubs / name)
        edit(hubs / name)


def _special_files(special: Path) -> Iterator[socket.socket]:
    """A named pipe, a socket, a symbolic link loop and a broken symbolic link."""
    special.mkdir()
    os.mkfifo(special / "fifo")
    os.symlink(special / "loop", special / "loop")
    os.symlink(special / "nowhere.yaml", special / "dangling")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(special / "sock"))
    yield sock


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, regs: Any) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("malformed2")
    _fixtures(path, regs)
    (path / "resume").mkdir()
    resume = resolve_config({**BASE, "seed": 5, "output_dir": str(path / "resume")}, regs)
    atomic_save({"config": plain_data(config_to_dict(resume))}, path / "resume" / "last.pt")
    (path / "hubs").mkdir()
    _hub_fixtures(path / "hubs", regs)
    for sock in _special_files(path / "special"):
        yield path
        sock.close()


def test_there_are_at_least_60_new_cases() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(socket, "AF_UNIX"), reason="POSIX file kinds")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_refused_by_check_and_writes_nothing(case: Case, folder: Path, monkeypatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, folder, monkeypatch, capsys)


def test_the_good_hub_folder_passes_check(folder: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The fixtures' broken folders fail for their defect alone: the folder they were copied from passes."""
    monkeypatch.chdir(folder)
    assert main(check(hub("good"), RSLAD)(folder)) == 0, capsys.readouterr().err
    assert main(check(hub("good", "student"))(folder)) == 0, capsys.readouterr().err


@pytest.mark.parametrize(("argv_", "advice"), [
    (["train", "x.yaml"], "the same `robust-distill train` command resumes from the last finished epoch."),
    (["plugins"], None),
])
def test_an_interrupt_message_fits_its_command(argv_: list[str], advice: str | None, monkeypatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    for command in ("train", "plugins"):  # the first call of both commands
        monkeypatch.setattr(f"robust_distill.cli.{command}.get_registries", interrupt)
    assert main(argv_) == 130
    err = capsys.readouterr().err
    assert err == (f"robust-distill: interrupted; {advice}\n" if advice else "robust-distill: interrupted.\n")


def test_check_prints_the_effective_config_which_resolves_to_the_same_run(folder: Path, regs: Any, monkeypatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``--check`` on a folder with a ``last.pt`` of another config passes with ``--no-resume``; what it prints is
    the config with every part's constructor defaults, and read back it is the same run. Nothing is written."""
    from robust_distill.config import effective_config

    monkeypatch.chdir(folder)
    args = check({"output_dir": "{d}/resume"}, "trades")(folder)
    before = _snapshot(folder)
    capsys.readouterr()
    assert main([*args, "--no-resume"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert _snapshot(folder) == before
    assert printed["inner_attack"] == {"key": "kl_pgd", "kwargs": {
        "target": "student_clean", "start": "gaussian", "clamp_start": False, "role": "robust", "temperature": 1.0,
        "bn_mode": "eval"}}  # TRADES' own target and start, then KLPGD's defaults
    assert printed["outer_loss"] == {"key": "trades", "kwargs": {"beta": 6.0, "reproduce_forwards": True}}
    assert printed["optim"]["schedule"]["kwargs"] == {"milestones": [1], "gamma": 0.1, "reproduce_reset_bug": False}
    again = resolve_config(printed, regs)
    assert effective_config(again, regs) == printed


def test_check_refuses_a_folder_another_process_trains_in(folder: Path, monkeypatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from robust_distill.files.lock import FolderLock

    with FolderLock(folder / "busy", "output_dir"):
        check_case(Case("busy output_dir", check({"output_dir": "{d}/busy"}),
                        ["output_dir", "busy", "is in use by another process", "PID"], 3), folder, monkeypatch, capsys)
