"""The command line: listing, validation errors as readable messages with exit codes, train, eval, demo."""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import pytest
import torch
import yaml

from robust_distill import hookimpl
from robust_distill.cli import Command, CommandRegistry, build_commands, command, main
from robust_distill.core import manager as plugin
from robust_distill.core.manager import PluginManager
from robust_distill.core.registry import DuplicateNameError


def test_plugins_lists_every_kind_with_its_provider(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for heading in ("datasets:", "teacher sources:", "student sources:", "inner attacks:", "outer losses:",
                    "teacher updaters:", "eval attacks:", "lr schedules:", "methods:"):
        assert heading in out
    for line_start in ("robustbench ", "timm ", "checkpoint ", "pgd20 ", "autoattack ", "adaad ", "rslad "):
        assert any(line.strip().startswith(line_start) for line in out.splitlines()), line_start
    assert "robust_distill_plugins.robustbench_teachers" in out and "(built-in)" in out
    assert "robust_distill.cli.train" in out and "(core)" in out
    commands = out.split("\ncommands:\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in commands] == ["bench", "demo", "eval", "export", "invert", "landscape",
                                                      "plugins", "prune", "report", "select-teacher", "specialization",
                                                      "teacher-score", "train", "unlearnable"]
    assert commands[-2].endswith("[cli.train; robust-distill 0.1.0]")


@pytest.fixture
def with_plugin(monkeypatch: pytest.MonkeyPatch):
    """``with_plugin(**hooks)``: the process-wide manager is the built-ins plus a plugin made of ``hooks``."""
    def install(**hooks) -> PluginManager:
        pm = PluginManager().load_plugins(autoload=False)
        mod = types.ModuleType("cmd_plugin_module")
        for name, fn in hooks.items():
            setattr(mod, name, hookimpl(fn))
        pm.add_plugin(mod, "cmd_plugin")
        monkeypatch.setattr(plugin, "_PM", pm)
        return pm
    return install


def _hello_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="world")


@command("hello", "say hello", _hello_args)
def cmd_hello(ns: argparse.Namespace) -> int:
    print(f"hello {ns.name}")
    return 7


def test_hook_rd_register_commands(with_plugin, capsys: pytest.CaptureFixture[str]) -> None:
    def bye(ns: argparse.Namespace) -> int:
        """Say goodbye."""
        print("bye")
        return 0

    def rd_register_commands(commands: CommandRegistry) -> None:
        commands.register(cmd_hello)  # declared with @command
        commands.register(bye, name="bye")  # a plain function: help from its docstring
        commands.register(name="shout", help="say it loud", setup=_hello_args)(
            lambda ns: print(f"HELLO {ns.name.upper()}") or 0)  # the decorator form
    pm = with_plugin(rd_register_commands=rd_register_commands)
    commands = build_commands(pm)
    assert commands.get("hello") == Command("hello", "say hello", _hello_args, cmd_hello)
    assert commands.entry("bye").help == "Say goodbye." and commands.entry("shout").plugin == "cmd_plugin"
    assert main(["hello", "--name", "plugin"]) == 7 and main(["shout", "--name", "x"]) == 0
    assert capsys.readouterr().out == "hello plugin\nHELLO X\n"
    assert cmd_hello(argparse.Namespace(name="direct")) == 7  # still a plain function


def test_a_command_clashing_with_another_is_an_error_naming_both(with_plugin,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pm = with_plugin(rd_register_commands=lambda commands: commands.register(cmd_hello, name="train"))
    with pytest.raises(DuplicateNameError) as e:
        build_commands(pm)
    assert (e.value.first_plugin, e.value.second_plugin) == ("cli.train", "cmd_plugin")
    assert main(["plugins"]) == 3
    err = capsys.readouterr().err
    assert "Plugin 'cmd_plugin' (distribution <local>) registers the command 'train', which plugin 'cli.train' " in err


def test_trace_plugins_prints_every_hook_call(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RD_TRACE_PLUGINS", "1")
    monkeypatch.setattr(plugin, "_PM", None)  # a fresh process-wide manager and registries, traced
    monkeypatch.setattr(plugin, "_REGS", None)
    assert main(["plugins"]) == 0
    err = capsys.readouterr().err.splitlines()
    pm = plugin._PM
    for hook in ("rd_register_commands", "rd_register_methods", "rd_register_eval_attacks"):
        implementers = [i.plugin_name for i in getattr(pm.hook, hook).get_hookimpls()]
        traced = [line.rsplit(" -> ", 1)[1] for line in err if line.startswith(f"[rd-trace] {hook}(")]
        assert traced == implementers, hook  # one call per plugin, in load order (commands: once, for the parser)
    assert err[0].startswith("[rd-trace] rd_addhooks(pluginmanager=<robust_distill.core.manager.PluginManager")
    assert "[rd-trace] rd_register_methods(registry=Registry('method', [])) -> natural" in err


def test_bad_config_exits_2_with_every_problem(tmp_path: Path, tiny_raw, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_raw("rslad", teacher=True)
    raw["threat"]["eps"] = 8
    raw["optim"]["lr"] = "fast"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Invalid" in err and "must be in (0, 1]" in err and "optim.lr" in err and "Traceback" not in err
    assert main(["train", str(tmp_path / "c.yaml"), "--set", "threat.eps=8/255", "--set", "optim.lr=0.1",
                 "--set", "method=nope"]) == 2
    assert "Unknown method 'nope'" in capsys.readouterr().err


def test_train_check_prints_the_resolved_config(tmp_path: Path, tiny_raw, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_raw("adaad", teacher=True)))
    assert main(["train", str(tmp_path / "c.yaml"), "--check", "--set", "optim.epochs=9"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["optim"]["epochs"] == 9 and resolved["inner_attack"]["kwargs"]["target"] == "teacher_adv"
    assert resolved["optim"]["weight_decay"] == 5e-4  # AdaAD's default


def test_train_then_eval_a_checkpoint(tmp_path: Path, tiny_raw, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_raw("pgd_at")
    raw["optim"]["epochs"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    capsys.readouterr()
    ckpt = Path(raw["output_dir"]) / "best.pt"
    out = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "--attacks", "clean,fgsm,pgd20,pgd20_trades,cw_inf", "--n-examples", "16",
                 "--surrogate", f"checkpoint:{ckpt}", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "PGD-20 (step eps/4 = 2/255)" in table and "PGD-20 (step 0.003)" in table and "Transfer" in table
    result = json.loads(out.read_text())
    assert result["n_examples"] == 16 and result["dataset"] == "synthetic"
    names = [r["attack"] for r in result["results"]]
    assert names[:5] == ["clean", "fgsm", "pgd20", "pgd20_trades", "cw_inf"] and "transfer_pgd20" in names
    assert "transfer_cw_inf" in names and "transfer_fgsm" not in names  # the default transfer attacks
    assert "worst_case" in names and out.with_suffix(".pt").is_file()
    # --transfer-attacks: FGSM (no random start) crafted on a surrogate that is the model itself is white-box FGSM
    assert main(["eval", str(ckpt), "--attacks", "clean,fgsm", "--n-examples", "16", "--surrogate",
                 f"checkpoint:{ckpt}", "--transfer-attacks", "fgsm", "--out", str(out)]) == 0
    capsys.readouterr()
    acc = {r["attack"]: r["accuracy"] for r in json.loads(out.read_text())["results"]}
    assert set(acc) == {"clean", "fgsm", "transfer_fgsm", "worst_case"} and acc["transfer_fgsm"] == acc["fgsm"]
    assert torch.equal(*[torch.load(out.with_suffix(".pt"))["correct"][k] for k in ("fgsm", "transfer_fgsm")])
    assert main(["eval", str(ckpt), "--surrogate", f"checkpoint:{ckpt}", "--transfer-attacks", "fgsm,jsma"]) == 2
    err = capsys.readouterr().err
    assert "--transfer-attacks: Unknown eval attack 'jsma'" in err and "fgsm" in err


def test_eval_errors_are_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "missing.pt")]) == 3
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Debian's Fashion-MNIST")
def test_demo_quick_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "| student convnet_s (IAD-I, this run) | 24k |" in out and "AA APGD-CE+T (%)" in out
    result = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert result["budget"] == {"train_subset": 256, "epochs": 1, "n_test": 32} and result["cpu_minutes"] > 0
    assert [r["model"] for r in result["rows"]] == ["teacher convnet_s (PGD-AT)", "student convnet_s (IAD-I, this run)"]
    assert all(0 <= r[k] <= 1 for r in result["rows"] for k in ("clean", "pgd20", "autoattack_apgd"))
