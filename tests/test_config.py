"""Configuration: layering, ``--set`` overrides, and a clear error for each kind of bad config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robust_distill.config import load_config, resolve_config
from robust_distill.core.threat import ThreatModel, parse_fraction
from robust_distill.errors import ConfigError
from robust_distill.files.atomic import atomic_save


def problems(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    return "\n".join(excinfo.value.problems)


def test_method_defaults_fill_in_and_the_user_wins(tiny_raw, regs) -> None:
    raw = tiny_raw("rslad", teacher=True)
    del raw["optim"]
    cfg = resolve_config(raw, regs)
    assert cfg.optim.epochs == 300 and cfg.optim.schedule.kwargs["milestones"] == [215, 260, 285]
    assert cfg.inner_attack.key == "kl_pgd" and cfg.inner_attack.kwargs["target"] == "teacher_clean"
    cfg = resolve_config(raw, regs, overrides=["optim.epochs=7", "outer_loss.kwargs.alpha=0.5",
                                               "threat.eps=16/255"])
    assert cfg.optim.epochs == 7 and cfg.outer_loss.kwargs == {"alpha": 0.5, "scale": 1.0}
    assert cfg.threat.eps == pytest.approx(16 / 255)


def test_a_user_part_with_another_key_drops_the_method_kwargs(tiny_raw, regs) -> None:
    cfg = resolve_config(tiny_raw("rslad", teacher=True), regs, overrides=["inner_attack.key=pgd_ce"])
    assert cfg.inner_attack.key == "pgd_ce" and cfg.inner_attack.kwargs == {}


def test_a_bare_string_is_the_key_of_a_part_optim_schedule_included(tiny_raw, regs) -> None:
    raw = tiny_raw("rslad", teacher=True)
    raw["optim"]["schedule"] = "cosine"  # the method's multistep milestones do not apply to it
    cfg = resolve_config(raw, regs)
    assert cfg.optim.schedule.key == "cosine" and cfg.optim.schedule.kwargs == {}
    overrides = ["optim.schedule=constant", "outer_loss=rslad", "student=timm:convnet_s"]
    cfg = resolve_config(tiny_raw("rslad", teacher=True), regs, overrides=overrides)
    assert (cfg.optim.schedule.key, cfg.outer_loss.key, cfg.student.key) == ("constant", "rslad", "timm:convnet_s")
    assert cfg.optim.schedule.kwargs == {} and cfg.outer_loss.kwargs == {"alpha": 5 / 6, "scale": 1.0}


def test_unknown_key_is_named_with_a_suggestion(tiny_raw, regs) -> None:
    raw = tiny_raw()
    raw["optim"]["epochz"] = 3
    with pytest.raises(ConfigError) as e:
        resolve_config(raw, regs)
    assert "optim.epochz: unknown key. Did you mean 'epochs'?" in problems(e)


def test_wrong_types_are_reported_with_their_path(tiny_raw, regs) -> None:
    raw = tiny_raw()
    raw["optim"]["epochs"] = "many"
    raw["data"]["augment"] = "yes"
    raw["eval"]["attacks"] = "pgd20"
    with pytest.raises(ConfigError) as e:
        resolve_config(raw, regs)
    text = problems(e)
    assert "optim.epochs: expected an integer, got 'many'" in text
    assert "data.augment: expected true or false" in text
    assert "eval.attacks: expected a list" in text
    assert len(e.value.problems) >= 3  # every problem at once


@pytest.mark.parametrize("field,value", [("eps", 8), ("eps", 0), ("eps", "-1/255"), ("eps_end", 2.0)])
def test_epsilon_outside_the_unit_interval(tiny_raw, regs, field: str, value: object) -> None:
    raw = tiny_raw()
    raw["threat"][field] = value
    with pytest.raises(ConfigError) as e:
        resolve_config(raw, regs)
    assert "must be in (0, 1]" in problems(e)


def test_unknown_method_lists_the_registered_ones(tiny_raw, regs) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_config(tiny_raw("rsald"), regs)
    text = problems(e)
    assert "Unknown method 'rsald'. Did you mean 'rslad'?" in text and "pgd_at" in text


@pytest.mark.parametrize("override,expected", [
    ("student.key=timm:resnet19_cifar", "timm has no model 'resnet19_cifar'"),
    ("student.key=hub:resnet18", "Unknown student source 'hub'"),
    ("teachers.robust.key=zoo:x", "Unknown teacher source 'zoo'"),
    ("inner_attack.key=pgd_kl", "Unknown inner attack 'pgd_kl'"),
    ("outer_loss.key=rsald", "Did you mean 'rslad'?"),
    ("teacher_updater.key=frozn", "Unknown teacher updater 'frozn'"),
    ("optim.schedule.key=step", "Unknown lr schedule 'step'"),
    ("data.dataset=cifar11", "Unknown dataset 'cifar11'"),
    ("eval.attacks=[clean,pgd21]", "Unknown eval attack 'pgd21'"),
    ("eval.select=fgsm", "eval.select: 'fgsm' must be one of eval.attacks"),
    ("inner_attack.kwargs.start=unifrom", "must be one of 'uniform', 'gaussian', 'none'"),
    ("outer_loss.kwargs.tau=2", "outer_loss.kwargs.tau: not an option of RSLADLoss"),
])
def test_unknown_plugin_names_and_options(tiny_raw, regs, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_config(tiny_raw("rslad", teacher=True), regs, overrides=[override])
    assert expected in problems(e)


def test_teacher_roles_must_match_the_method(tiny_raw, regs) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_config(tiny_raw("rslad"), regs)
    assert "teachers.robust: method 'rslad' needs a 'robust' teacher" in problems(e)
    with pytest.raises(ConfigError) as e:
        resolve_config(tiny_raw("pgd_at", teacher=True), regs)
    assert "method 'pgd_at' does not use a 'robust' teacher" in problems(e)


def test_missing_files(tiny_raw, regs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError) as e:
        resolve_config(tiny_raw("rslad", teacher=True), regs,
                       overrides=[f"teachers.robust.key=checkpoint:{missing}", f"data.root={tmp_path / 'x'}"])
    text = problems(e)
    assert f"teacher checkpoint '{missing}' does not exist" in text
    assert "does not exist" in text.split("data.root")[1]
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "config.yaml", regs)


def test_load_config_from_yaml_with_fractions(tiny_raw, regs, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_raw("adaad", teacher=True)))
    cfg = load_config(path, regs, ["threat.step_size=1/255"])
    assert cfg.threat == ThreatModel(eps=8 / 255, step_size=1 / 255, steps=2)
    path.write_text("method: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, regs)


def test_checkpoint_teacher_spec_resolves(tiny_raw, regs, tmp_path: Path) -> None:
    from robust_distill.core.components import DatasetInfo
    from robust_distill.engine.run import build_student, model_spec

    ckpt = tmp_path / "t.pt"
    info = DatasetInfo("synthetic", 4, (3, 8, 8))
    atomic_save({"format": "robust-distill/1", "model": model_spec("timm:convnet_xs", {}, info),
                 "state_dict": build_student("timm:convnet_xs", {}, info, regs).state_dict()}, ckpt)
    cfg = resolve_config(tiny_raw("rslad", teacher=True), regs, overrides=[f"teachers.robust=checkpoint:{ckpt}"])
    assert cfg.teachers["robust"].key == f"checkpoint:{ckpt}"
    atomic_save({"state_dict": {}}, ckpt)  # weights without an architecture: found by the check, not in train
    with pytest.raises(ConfigError, match="so its architecture is unknown"):
        resolve_config(tiny_raw("rslad", teacher=True), regs, overrides=[f"teachers.robust=checkpoint:{ckpt}"])


def test_parse_fraction() -> None:
    assert parse_fraction("8/255") == pytest.approx(8 / 255)
    assert parse_fraction(0.031) == 0.031
    with pytest.raises(ValueError, match="fraction"):
        parse_fraction("eight")
    assert ThreatModel(eps=8 / 255, step_size=2 / 255, eps_end=16 / 255).at(0.5).eps == pytest.approx(12 / 255)
    assert ThreatModel(eps=8 / 255, step_size=2 / 255, eps_end=16 / 255).at(1.0).step_size == pytest.approx(4 / 255)


def test_eval_threat_is_eval_eps_else_the_training_radius(tiny_config) -> None:
    """The evaluation's ThreatModel: ``eval.eps`` when set, else ``threat.eps`` (the start of a growing radius)."""
    assert tiny_config("pgd_at", overrides=["eval.eps=4/255"]).eval_threat == ThreatModel(eps=4 / 255)
    grown = tiny_config("pgd_at", overrides=["threat.eps=6/255", "threat.eps_end=16/255"])
    assert grown.eval_threat == ThreatModel(eps=6 / 255)




def test_yaml_merge_keys_work_and_the_mappings_own_keys_win(tmp_path: Path, tiny_raw, regs) -> None:
    raw = tiny_raw()
    body = yaml.safe_dump({k: v for k, v in raw.items() if k != "optim"}, sort_keys=False)
    (tmp_path / "c.yaml").write_text(body + "optim: {<<: {epochs: 3, lr: 0.2}, lr: 0.05}\n")
    cfg = load_config(tmp_path / "c.yaml", regs)
    assert (cfg.optim.epochs, cfg.optim.lr) == (3, 0.05)


def test_a_duplicate_key_on_one_line_is_refused(tmp_path: Path) -> None:
    from robust_distill.config import read_yaml

    (tmp_path / "c.yaml").write_text("optim: {lr: 0.1, lr: 0.2}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' \(first at line 1\)"):
        read_yaml(tmp_path / "c.yaml")


def test_a_mapping_override_merges_into_the_mapping_there(tiny_raw, regs) -> None:
    cfg = resolve_config(tiny_raw(), regs, overrides=["optim.lr=0.5", "optim={epochs: 1}"])
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.schedule.kwargs["milestones"]) == (0.5, 1, [1])
    cfg = resolve_config(tiny_raw(), regs, overrides=["optim.schedule={kwargs: {gamma: 0.5}}"])
    assert cfg.optim.schedule.kwargs == {"milestones": [1], "gamma": 0.5}
    cfg = resolve_config(tiny_raw(), regs, overrides=["optim.schedule={key: cosine}"])  # another part: replaced
    assert (cfg.optim.schedule.key, cfg.optim.schedule.kwargs) == ("cosine", {})
    cfg = resolve_config(tiny_raw(), regs, overrides=["eval.attacks=[clean]", "eval.select=clean"])
    assert cfg.eval.attacks == ["clean"]  # a list replaces


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=.inf", "optim.lr: must be a finite number, got inf."),
    ("threat.eps=.nan", "threat.eps: must be a finite number, got nan."),
    ("eval.eps=-.inf", "eval.eps: must be a finite number, got -inf."),
    ("seed=4294967296", "seed must be an integer from 0 to 4294967295 (numpy's seed range), got 4294967296."),
    ("data.batch_size=9223372036854775808", "data.batch_size: 9223372036854775808 does not fit a 64-bit integer"),
    ("optim.schedule.kwargs.gamma=-2", "optim.schedule: 'multistep' gives the lr multiplier -2 at epoch 1; it must "
                                       "be a finite number >= 0."),
])
def test_numbers_are_range_checked_where_read(tiny_raw, regs, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_config(tiny_raw(), regs, overrides=[override])
    assert message in problems(exc)


def test_a_constructor_error_names_the_part_plugin_and_distribution(tiny_raw, regs) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_config(tiny_raw("rslad"), regs, overrides=["teacher_updater={key: self_ema, kwargs: {decay: 1.5}}"])
    assert problems(exc) == ("teacher_updater: the teacher updater 'self_ema' of plugin 'self_distill' (distribution "
                             f"{regs.teacher_updaters.entry('self_ema').distribution}) refuses its options "
                             "{'decay': 1.5}: ValueError: decay must be in [0, 1], got 1.5")


def test_plugins_summaries_are_one_plain_line() -> None:
    from robust_distill.cli.plugins import one_line

    assert one_line("``CE(S(x'), y)``, mean over the batch.") == "CE(S(x'), y), mean over the batch."
    assert one_line("Wraps :class:`~robust_distill.core.step.Step` and :func:`torch.compile`.") == (
        "Wraps Step and torch.compile.")
    assert one_line("word " * 20, width=22) == "word word word word..."
