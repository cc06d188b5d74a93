"""Documentation cannot drift: every hook is documented and tested; documented code is the tested code.

The README and every page of the site (``docs/*.md``) are read here: Python blocks run, YAML blocks validate as
configs, grids or config fragments, every command (shell blocks, ``$ `` lines of output blocks, inline
``robust-distill ...`` spans) parses with the real argument parser and the files it names exist and validate,
and the site builds with ``mkdocs build --strict`` (broken links fail it). Pages under ``docs/reference/`` are
generated from the code at build time (``docs/gen_pages.py``); their completeness is checked here too.
"""

from __future__ import annotations

import configparser
import inspect
import os
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import robust_distill
from robust_distill.core.manager import PluginManager

from .conftest import _installed
from .scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = sorted(n for n in dir(PluginManager().hook) if n.startswith("rd_"))
#: the README and every hand-written page of the site, by repository path
DOCS = {"README.md": README, **{f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}}
#: a fenced block, with the HTML comment right above it (a marker) if any
BLOCK = re.compile(r"^(?:<!-- (?P<marker>[^>]*?) -->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)^```\s*$", re.S | re.M)


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

    from robust_distill.cli import build_parser
    from robust_distill.config import resolve_config
    from robust_distill.core.attacks import InnerPGD
    from robust_distill.engine.trainer import train

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


def test_every_builtin_method_is_in_the_methods_page(regs) -> None:
    for entry in regs.methods.entries():
        if entry.distribution.startswith("robust-distill"):
            assert f"| `{entry.name}` |" in DOCS["docs/methods.md"], entry.name


def test_the_readme_fits_on_two_screens() -> None:
    """The README is what a newcomer needs (issue 22: under 250 lines); the rest is in the site's pages."""
    assert len(README.splitlines()) < 250
    for page in ("getting-started", "configuration", "methods", "plugins", "results"):
        assert f"](docs/{page}.md)" in README, page


def test_the_readmes_links_resolve() -> None:
    """The README is not part of the site (whose links the strict build checks): its links are checked here."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert len(links) >= 15
    assert not [link for link in links if "://" not in link and not (ROOT / link).exists()]


def test_readme_commands_exist() -> None:
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert script in README and (ROOT / script).is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_test_the_docs_name_exists() -> None:
    """The docs back each guarantee with a named test (``test_x.py::test_name``): those tests exist."""
    named = set(re.findall(r"`(?:tests/)?(test_\w+\.py)::(test_\w+)`", "".join(DOCS.values())))
    assert len(named) >= 15
    for module, name in sorted(named):
        assert re.search(rf"^def {name}\(", (ROOT / "tests" / module).read_text(), re.M), f"{module}::{name}"


def test_the_guides_teacher_updater_is_an_ema_of_the_student_that_resumes_exactly(tmp_path: Path, tiny_raw) -> None:
    """The guide's ``student_ema`` updater, from its code block: the EMA by hand, a frozen teacher, setup before
    load_state_dict on resume (a resumed run equals an uninterrupted one), its constructor error at --check."""
    import torch

    from robust_distill.config import resolve_config
    from robust_distill.engine.trainer import train
    from robust_distill.errors import ConfigError

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


# -------------------------------------------------------------------------------------------------
# Every code block and command of the README and the site's pages
# -------------------------------------------------------------------------------------------------

#: languages a block may have, each checked below (a block in another language fails: add its check)
CHECKED_LANGUAGES = {"python", "yaml", "bash", "text", "ini", "toml"}
#: programs a documented command may start with besides robust-distill and the project's scripts
EXTERNAL_PROGRAMS = {"pip", "tox", "mkdocs", "pytest", "tensorboard", "wandb", "grep", "head", "tee"}
#: marks of a usage synopsis (`robust-distill eval MODEL [--attacks ...]`, `<name>`): not a command to parse
SYNOPSIS = re.compile(r"[\[\](){}|<>]|\.\.\.|\b[A-Z][A-Z_]+\b")


def doc_blocks(lang: str | None = None) -> Iterator[tuple[str, str, str, str]]:
    """(file, marker, language, body) of every fenced block of the README and the pages."""
    for name, text in DOCS.items():
        for m in BLOCK.finditer(text):
            if lang is None or m.group("lang") == lang:
                yield name, m.group("marker") or "", m.group("lang"), m.group("body")


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) of every shell line, every ``$ `` line of an output block and every inline command."""
    out: list[tuple[str, str]] = []
    for name, _, lang, body in doc_blocks():
        if lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    out += [(name, part.strip()) for part in re.split(r"\|(?!\|)|&&", line) if part.strip()]
        elif lang == "text":
            out += [(name, line[2:].split(" | ")[0].strip())
                    for line in body.replace("\\\n", " ").splitlines() if line.startswith("$ ")]
    for name, text in DOCS.items():
        prose = BLOCK.sub("", text)
        out += [(name, cmd) for cmd in re.findall(r"`((?:robust-distill|torchrun) [^`]+)`", prose)
                if not SYNOPSIS.search(cmd)]
    return out


def guide_plugin_module() -> types.ModuleType:
    """The plugin guide's ``margin_kd`` plugin, built from the guide's code blocks (as ``rd_margin.plugin``)."""
    plugin = types.ModuleType("rd_margin.plugin")
    exec(compile("\n\n".join(guide_blocks("guide-plugin", "python")), "docs/plugins.md", "exec"),  # noqa: S102
         plugin.__dict__)
    return plugin


@pytest.fixture(scope="module")
def docs_pm() -> PluginManager:
    """The built-in plugins plus the guide's plugin (its command and method appear in the guide's commands)."""
    pm = PluginManager().load_plugins(autoload=False)
    pm.add_plugin(guide_plugin_module(), "margin_kd")
    return pm


def test_every_code_block_is_in_a_checked_language() -> None:
    found = {(name, lang) for name, _, lang, _ in doc_blocks()}
    assert len(found) >= 10
    assert not {(n, lang) for n, lang in found if lang not in CHECKED_LANGUAGES}, "add a check for this language"


def python_blocks() -> list[tuple[str, str, str]]:
    return [(name, marker, body) for name, marker, _, body in doc_blocks("python")]


def test_every_python_block_is_run() -> None:
    """Each Python block is run by a test: the guide's plugin (and its shipped example), its teacher updater
    (test_the_guides_teacher_updater_is_an_ema_of_the_student_that_resumes_exactly), and those below (the API
    page's example: its calls checked against the API, its cheap lines run)."""
    named = {"guide-plugin": "guide", "example-plugin:start": "shipped", "guide-updater": "updater"}
    kinds = [named.get(marker, name) for name, marker, body in python_blocks()]
    assert sorted(kinds) == sorted(["README.md", "docs/plugins.md", "docs/api.md", "shipped", "updater"]
                                   + ["guide"] * 7)


def test_the_api_pages_example_calls_the_api_as_it_is(regs) -> None:
    """The API page's example trains, then attacks CIFAR-10 with AutoAttack: too long for the suite, and
    ``tests/test_api.py`` runs these calls on tiny data. Here every ``rd.<name>(...)`` is a public function its
    arguments bind to, the overrides are config keys, the dataset and attacks are registered, and the two lines
    that cost nothing run: the results line on an ``Evaluation`` of known correctness (values by hand), and the
    listings line."""
    import ast
    import dataclasses

    import torch

    from robust_distill.api import Evaluation, _override_list
    from robust_distill.config import resolve_config
    from robust_distill.engine.evaluation import EvalResult

    (body,) = [b for name, _, b in python_blocks() if name == "docs/api.md"]
    tree = ast.parse(body)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and getattr(node.func.value, "id", None) == "rd"]
    assert sorted(c.func.attr for c in calls) == sorted(  # type: ignore[attr-defined]
        ["train", "load_model", "evaluate", "list_methods", "list_attacks", "registries"])

    def value(node: ast.expr) -> Any:
        try:
            return ast.literal_eval(node)
        except ValueError:
            return object()  # a name the block defines (the model)

    kwargs = {}
    for call in calls:
        name = call.func.attr  # type: ignore[attr-defined]
        assert name in robust_distill.__all__, name
        kwargs[name] = {k.arg: value(k.value) for k in call.keywords}
        inspect.signature(getattr(robust_distill, name)).bind(*map(value, call.args), **kwargs[name])
    resolve_config(FRAGMENT_BASE, regs, overrides=_override_list(kwargs["train"]["overrides"]), check=False)
    attacks = kwargs["evaluate"]["attacks"]
    assert kwargs["evaluate"]["dataset"] in regs.datasets and all(a in regs.eval_attacks for a in attacks)

    # the results line: example 0 survives every attack, 1 only clean, 2 none, 3 all but autoattack
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "ev"}
    assert used <= {f.name for f in dataclasses.fields(Evaluation)} | set(dir(Evaluation))
    correct = dict(zip(attacks, ([1, 1, 0, 1], [1, 0, 0, 1], [1, 0, 0, 0]), strict=True))
    ev = Evaluation("m", "cifar10", "test", 8 / 255, 0, torch.arange(4), torch.zeros(4),
                    EvalResult(4, {k: torch.tensor(v, dtype=torch.bool) for k, v in correct.items()}), {})
    results, listings = (compile(ast.Expression(stmt.value), "docs/api.md", "eval") for stmt in tree.body[-2:])
    accuracy, survivors, worst = eval(results, {"ev": ev})  # noqa: S307
    assert accuracy == {"clean": 0.75, "pgd20": 0.5, "autoattack": 0.25} and worst == 0.25
    assert survivors.tolist() == [True, False, False, False]
    methods, attack_names, reference = eval(listings, {"rd": robust_distill})  # noqa: S307
    assert methods == regs.methods.names("*ard*") and "rslad" not in methods and "ard" in methods
    assert set(attacks) <= set(attack_names) and reference.startswith("Zi et al., ICCV 2021")



def package_docstring_plugin() -> str:
    """The plugin of ``robust_distill``'s own docstring (the API page's first example)."""
    block = robust_distill.__doc__.split("Write a plugin in a few lines::\n")[1].split("\nand declare")[0]
    return inspect.cleandoc(block)


@pytest.mark.parametrize("source", ["README.md", "robust_distill/__init__.py"])
def test_the_short_plugin_example_registers_a_working_method(source: str, tmp_path: Path) -> None:
    """The 10-line plugin of the README and of the package docstring, run: its method resolves with the parts and
    options it names."""
    from robust_distill.config import resolve_config

    if source == "README.md":
        (body,) = [b for name, _, b in python_blocks() if name == "README.md"]
    else:
        body = package_docstring_plugin()
    plugin = types.ModuleType("short_plugin")
    exec(compile(body, source, "exec"), plugin.__dict__)  # noqa: S102
    pm = PluginManager().load_plugins(autoload=False)
    pm.add_plugin(plugin, "short_plugin")
    cfg = resolve_config({"method": "rslad_t2", "student": "timm:convnet_xs", "teachers": {"robust": "timm:convnet_xs"},
                          "data": {"dataset": "synthetic", "val_size": 32}, "output_dir": str(tmp_path / "run")},
                         pm.build_registries())
    assert (cfg.inner_attack.key, cfg.inner_attack.kwargs["temperature"], cfg.inner_attack.kwargs["target"]) == (
        "kl_pgd", 2.0, "teacher_clean")
    assert (cfg.outer_loss.key, cfg.outer_loss.kwargs) == ("rslad", {"alpha": 5 / 6})


@pytest.mark.slow
def test_the_guides_testing_block_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's "Testing a plugin" block, run as written, with the guide's plugin and config (1 epoch)."""
    (body,) = [b for name, marker, b in python_blocks() if name == "docs/plugins.md" and not marker]
    package = types.ModuleType("rd_margin")
    package.plugin = guide_plugin_module()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rd_margin", package)
    monkeypatch.setitem(sys.modules, "rd_margin.plugin", package.plugin)  # type: ignore[attr-defined]
    (config,) = guide_blocks("guide-config", "yaml")
    raw = {**yaml.safe_load(config), "output_dir": str(tmp_path / "run")}
    raw["optim"] = {**raw["optim"], "epochs": 1}
    namespace: dict[str, Any] = {"raw_config_dict": raw}
    exec(compile(body, "docs/plugins.md", "exec"), namespace)  # noqa: S102
    assert namespace["summary"]["best_epoch"] == 0 and (tmp_path / "run" / "best.pt").is_file()


#: the smallest config a fragment of the docs (``data: {...}``, ``optim: {...}``) is merged into
FRAGMENT_BASE = {"method": "pgd_at", "student": "timm:convnet_xs", "data": {"dataset": "synthetic", "val_size": 32}}


def merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def yaml_blocks() -> list[tuple[str, str, str]]:
    return [(name, marker, body) for name, marker, _, body in doc_blocks("yaml")]


@pytest.mark.parametrize("name,marker,body", yaml_blocks(),
                         ids=[f"{n}:{i}" for i, (n, _, _) in enumerate(yaml_blocks())])
def test_yaml_blocks_validate(name: str, marker: str, body: str, regs, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A config validates whole (names, files, ranges; where the robustbench extra is not installed, one naming a
    ``robustbench:`` teacher validates its keys and types only); a grid's own keys and every run it expands to
    validate; a fragment validates merged into the smallest config. The guide's config is trained by its own test."""
    from robust_distill.analysis.bench import GRID_KEYS, check_grid, expand_grid
    from robust_distill.config import resolve_config

    monkeypatch.chdir(ROOT)
    raw = yaml.safe_load(body)
    assert isinstance(raw, dict) and raw
    if marker == "guide-config":
        return
    if "grid" not in raw and set(raw) <= GRID_KEYS - {"output_dir"}:  # a grid file's fragment (a launcher)
        raw = {"base": "fragment", "grid": {"seed": [0]}, **raw}
    if "grid" in raw:
        grid = {**raw, "output_dir": str(tmp_path / "grid")}
        grid["base"] = FRAGMENT_BASE if isinstance(raw.get("base"), str) else raw.get("base", {})
        check_grid(grid)
        runs = expand_grid(grid)
        assert runs
        for run in runs:
            resolve_config(run.raw, regs, check=False)
        return
    full = "method" in raw
    cfg = resolve_config({**(raw if full else merged(FRAGMENT_BASE, raw)), "output_dir": str(tmp_path / "run")}, regs,
                         check=full and (_installed("robustbench") or "robustbench:" not in body))
    assert cfg.method == raw.get("method", "pgd_at")


def test_ini_and_toml_blocks_declare_the_entry_point_group() -> None:
    blocks = [(lang, body) for _, _, lang, body in doc_blocks() if lang in ("ini", "toml")]
    assert len(blocks) >= 2
    for lang, body in blocks:
        if lang == "ini":
            parser = configparser.ConfigParser()
            parser.read_string(body)
            assert parser["options.entry_points"]["robust_distill"].strip()
        else:  # (tomllib is Python 3.11+; the project supports 3.10)
            assert re.search(r"^\[project\.entry-points\.robust_distill\]\n\w+ = \"[\w.]+\"$", body, re.M), body


def check_command(words: list[str], parser: Any, regs: Any, tmp_path: Path) -> None:
    """One documented command: it parses, and the repository files it names exist (configs and grids validate)."""
    from robust_distill.analysis.bench import expand_grid, load_grid
    from robust_distill.config import load_config

    program = words[0]
    if program == "torchrun":
        words = ["robust-distill", *words[words.index("robust_distill") + 1:]]
        program = "robust-distill"
    if program == "robust-distill" and len(words) == 2 and not words[1].startswith("-"):
        commands = next(a for a in parser._actions if a.dest == "command").choices
        assert words[1] in commands, f"no command {words[1]!r}"  # prose naming a command (`robust-distill export`)
    elif program == "robust-distill":
        try:
            ns = parser.parse_args(words[1:])
        except SystemExit as exc:
            raise AssertionError(f"does not parse: {shlex.join(words)}") from exc
        for word in words[2:]:
            if word.endswith(".yaml") and "/" in word:
                assert (ROOT / word).is_file(), word
                if ns.command == "bench":
                    for run in expand_grid(load_grid(ROOT / word)):
                        from robust_distill.config import resolve_config

                        resolve_config(run.raw, regs, check=False)
                else:
                    load_config(ROOT / word, regs, overrides=[f"output_dir={tmp_path / 'run'}"])
            elif re.fullmatch(r"(robust_distill|benchmarks|plugins)/[\w./-]+\.\w+", word):
                assert (ROOT / word).is_file(), word
    elif program in ("python", "python3"):
        assert (ROOT / words[1]).is_file(), words[1]
    elif program.startswith(("scripts/", "benchmarks/")):
        assert (ROOT / program).is_file() and (ROOT / program).stat().st_mode & 0o111, program
    elif program == "pip":
        target = words[-1]
        extras = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
        if extras:
            cfg = configparser.ConfigParser()
            cfg.read(ROOT / "setup.cfg")
            known = set(cfg["options.extras_require"])
            assert set(filter(None, (extras.group(1) or "").split(","))) <= known, target
        elif target.startswith("./"):
            assert (ROOT / target).is_dir(), target
    else:
        assert program in EXTERNAL_PROGRAMS, f"no check for {program!r}: {shlex.join(words)}"


def test_every_documented_command_parses_and_its_files_validate(docs_pm: PluginManager, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from robust_distill.cli import build_parser

    monkeypatch.chdir(ROOT)
    parser, regs = build_parser(docs_pm), docs_pm.build_registries()
    commands = documented_commands()
    assert len(commands) >= 60
    assert {"scripts/demo.sh", "scripts/test.sh"} <= {c for _, c in commands}
    for name, command in commands:
        words = [w for w in shlex.split(command.replace('\\"', '"')) if not re.fullmatch(r"[A-Z_]+=\S*", w)]
        try:
            check_command(words, parser, regs, tmp_path)
        except Exception as exc:
            raise AssertionError(f"{name}: {command}: {exc}") from exc


def test_the_plugins_command_the_docs_show_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from robust_distill.cli import main

    assert main(["plugins", "--names"]) == 0
    assert "rslad" in capsys.readouterr().out


# -------------------------------------------------------------------------------------------------
# The site: generated pages complete, results linked, built strictly
# -------------------------------------------------------------------------------------------------


def load_gen_pages() -> types.ModuleType:
    return load_script("docs/gen_pages.py")


def test_every_config_key_has_a_description() -> None:
    """The generated configuration reference describes every key of the schema (a new key needs a docstring)."""
    gen = load_gen_pages()
    sections = gen.config_sections()
    assert [p for p, _ in sections] == ["", "data", "threat", "optim", "eval", "swa"]
    for prefix, cls in sections:
        missing = [k for k, text in gen.field_descriptions(cls).items() if not text and not (prefix == "" and k in
                                                                                           dict(sections))]
        assert not missing, f"{prefix or 'top level'}: no :param: or comment for {missing}"
    page = gen.config_page()
    assert "| `optim.precision` | `Literal['fp32', 'bf16', 'fp16']` | `fp32` |" in page
    assert "| `threat.eps` | `float` | `8/255` |" in page


def test_the_methods_reference_documents_every_method(regs) -> None:
    gen = load_gen_pages()
    page = gen.methods_page()
    for entry in regs.methods.entries():
        assert f"## `{entry.name}`" in page
    # RSLAD: paper, its parts' equations and options with this method's values, its defaults
    rslad = page.split("## `rslad`")[1].split("\n## ")[0]
    assert "Zi et al., ICCV 2021, Eq. 6-7" in rslad
    assert "`x' = argmax KL(S(x') || target)`" in rslad and "| `target` | `teacher_clean` |" in rslad
    assert "| `alpha` | `0.8333333333333334` |" in rslad and "milestones: [215, 260, 285]" in rslad
    assert "threat: {eps: 8/255, step_size: 2/255, steps: 10}" in rslad


def test_the_cli_reference_has_every_commands_help(docs_pm: PluginManager) -> None:
    from robust_distill.cli import build_commands

    page = load_gen_pages().cli_page()
    for entry in build_commands(PluginManager().load_plugins(autoload=False)).entries():
        assert f"## `{entry.name}`" in page and f"usage: robust-distill {entry.name} " in page


def test_every_public_name_has_a_docstring() -> None:
    """What the API page renders (``robust_distill.__all__`` and their public members) is documented."""
    gen = load_gen_pages()
    missing = []
    for name in robust_distill.__all__:
        obj = getattr(robust_distill, name)
        if name == "__version__":
            continue
        if not (gen.own_doc(obj) if inspect.isclass(obj) else obj.__doc__ or "").strip():
            missing.append(name)
        for member, value in (vars(obj).items() if inspect.isclass(obj) else ()):
            func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if not member.startswith("_") and (callable(func) or isinstance(value, property)) and not func.__doc__:
                missing.append(f"{name}.{member}")
    assert not missing


def test_the_results_page_links_every_committed_result() -> None:
    results = DOCS["docs/results.md"]
    for path in sorted((ROOT / "benchmarks" / "results").rglob("*.md")):
        assert f"]({path.relative_to(ROOT).as_posix()})" in results, path


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken link or anchor, a page missing from the navigation, or a reference that
    mkdocstrings cannot resolve fails the build."""
    pytest.importorskip("mkdocstrings", reason="the docs extra (pip install -e '.[docs]') builds the site")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr
    for page in ("reference/config", "reference/methods", "reference/hooks", "reference/cli", "api", "results"):
        assert (site / page / "index.html").is_file(), page
    hooks = (site / "reference" / "hooks" / "index.html").read_text()
    assert all(f'id="robust_distill.core.hookspecs.{hook}"' in hooks for hook in HOOKS)
    assert (site / "benchmarks" / "results" / "fashion_mnist" / "zoo" / "clean_vs_robust.png").is_file()
