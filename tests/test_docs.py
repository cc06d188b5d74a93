"""Documentation cannot drift: every hook is documented and tested; documented code is the tested code."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import yaml

from robust_distill.plugin import PluginManager

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = sorted(n for n in dir(PluginManager().hook) if n.startswith("rd_"))


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook: str) -> None:
    spec = getattr(PluginManager().hook, hook).spec
    assert f"### {hook}({', '.join(spec.argnames)})" in GUIDE
    doc = spec.function.__doc__ or ""
    for arg in spec.argnames:
        assert f":param {arg}:" in doc, f"{hook}: docstring does not document {arg}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    assert f"def test_hook_{hook}" in tests


def test_the_readme_points_to_the_plugin_guide() -> None:
    assert "[`docs/plugins.md`](docs/plugins.md)" in README


def test_guide_plugin_example_is_the_shipped_example() -> None:
    block = re.search(r"<!-- example-plugin:start -->\n```python\n(.*?)```\n<!-- example-plugin:end -->", GUIDE, re.S)
    shipped = (ROOT / "plugins" / "example_third_party" / "rd_example_plugin" / "plugin.py").read_text()
    assert block and block.group(1) == shipped


def guide_blocks(marker: str, language: str) -> list[str]:
    return re.findall(rf"<!-- {marker} -->\n```{language}\n(.*?)```\n", GUIDE, re.S)


@pytest.mark.slow
def test_the_guides_example_plugin_trains_and_its_command_runs(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The guide's ``margin_kd`` plugin, built from the guide's own code blocks, trained with the guide's config."""
    import json

    import torch

    from robust_distill.attacks import InnerPGD
    from robust_distill.cli import build_parser
    from robust_distill.config import resolve_config
    from robust_distill.trainer import train

    code = guide_blocks("guide-plugin", "python")
    assert len(code) == 7
    plugin = types.ModuleType("rd_margin_plugin")
    exec(compile("\n\n".join(code), "docs/plugins.md", "exec"), plugin.__dict__)  # noqa: S102
    pm = PluginManager().load_plugins(autoload=False)
    pm.add_plugin(plugin, "margin_kd")
    regs = pm.build_registries()
    assert regs.methods.entry("margin_kd").plugin == "margin_kd" and "uniform_noise" in regs.eval_attacks

    # the helper and the inner maximisation, by hand: margins of known logits; the attack lowers the margin
    logits, y = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]]), torch.tensor([0, 2])
    assert plugin.margin(logits, y).tolist() == [1.5, -2.0]
    (config,) = guide_blocks("guide-config", "yaml")
    raw = {**yaml.safe_load(config), "output_dir": str(tmp_path / "run")}
    cfg = resolve_config(raw, regs, overrides=["optim.epochs=1"])
    assert (cfg.inner_attack.key, cfg.outer_loss.kwargs, cfg.optim.schedule.key, cfg.optim.weight_decay) == (
        "margin_pgd", {"alpha": 0.8}, "cosine", 5e-4)
    assert isinstance(regs.inner_attacks.build(cfg.inner_attack.key, cfg.inner_attack.kwargs), InnerPGD)

    summary = train(cfg, regs=regs, pm=pm)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train_loss"] == pytest.approx(0.8 * row["train_kl"] + 0.2 * row["train_ce"], rel=1e-4)
    assert {"val_clean", "val_pgd20", "val_uniform_noise"} <= row.keys() and summary["best_epoch"] == 0
    assert -10 < row["mean_margin"] < 10

    ns = build_parser(pm).parse_args(["margin", str(tmp_path / "run" / "best.pt"), "--n-examples", "16"])
    assert ns.command_.run(ns) == 0
    assert re.fullmatch(r"mean margin of .*best\.pt on 16 test images: -?\d+\.\d{4}\n", capsys.readouterr().out)


def test_every_builtin_method_is_in_the_readme(regs) -> None:
    for entry in regs.methods.entries():
        if entry.distribution.startswith("robust-distill"):
            assert f"| `{entry.name}` |" in README, entry.name


def test_readme_commands_exist() -> None:
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert script in README and (ROOT / script).is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_test_the_readme_names_exists() -> None:
    """The README backs each guarantee with a named test (``test_x.py::test_name``): those tests exist."""
    named = set(re.findall(r"`(?:tests/)?(test_\w+\.py)::(test_\w+)`", README))
    assert len(named) >= 15
    for module, name in sorted(named):
        assert re.search(rf"^def {name}\(", (ROOT / "tests" / module).read_text(), re.M), f"{module}::{name}"


def test_the_guides_teacher_updater_is_an_ema_of_the_student_that_resumes_exactly(tmp_path: Path, tiny_raw) -> None:
    """The guide's ``student_ema`` updater, from its code block: the EMA by hand, a frozen teacher, setup before
    load_state_dict on resume (a resumed run equals an uninterrupted one), its constructor error at --check."""
    import torch

    from robust_distill.config import ConfigError, resolve_config
    from robust_distill.trainer import train

    (code,) = guide_blocks("guide-updater", "python")
    plugin = types.ModuleType("rd_ema_plugin")
    exec(compile(code, "docs/plugins.md", "exec"), plugin.__dict__)  # noqa: S102
    pm = PluginManager().load_plugins(autoload=False)
    pm.add_plugin(plugin, "ema_kd")
    regs = pm.build_registries()

    # after_step by hand: t <- 0.75 t + 0.25 s, buffers copied; the teacher is a frozen target
    student = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    run = types.SimpleNamespace(student=student, teachers={})
    updater = regs.teacher_updaters.build("student_ema", {"decay": 0.75})
    updater.setup(run)
    teacher = run.teachers["ema"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student[0].weight.fill_(4.0)
        student[1].running_mean.fill_(3.0)
    before = teacher[0].weight.clone()
    updater.after_step(None)
    assert torch.allclose(teacher[0].weight, 0.75 * before + 0.25 * 4.0)
    assert teacher[1].running_mean.item() == 3.0

    def config(name: str, **kwargs):
        raw = {**tiny_raw(), "method": "ema_kd", "output_dir": str(tmp_path / name)}
        return resolve_config(raw, regs, overrides=[f"{k}={v}" for k, v in kwargs.items()])

    whole = train(config("whole"), regs=regs, pm=pm)
    assert train(config("resumed"), regs=regs, pm=pm, stop_after_epochs=1) == {"interrupted": True, "epoch": 1}
    resumed = train(config("resumed"), regs=regs, pm=pm)
    assert resumed["best_value"] == whole["best_value"]
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("whole", "resumed"))
    for key, value in a["parts"]["teacher_updater"]["teacher"].items():
        assert torch.equal(value, b["parts"]["teacher_updater"]["teacher"][key]), key
    with pytest.raises(ConfigError, match=r"teacher_updater: the teacher updater 'student_ema' of plugin 'ema_kd' "
                                          r".*decay must be in \[0, 1\], got 2"):
        config("bad", **{"teacher_updater.kwargs.decay": 2})
