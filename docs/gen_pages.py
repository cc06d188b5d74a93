"""The documentation's generated pages, written at build time (an MkDocs hook: ``hooks:`` in mkdocs.yml).

Each page is rendered from the code it documents, so that it cannot drift and a new method, option, hook or
command documents itself:

- ``reference/config.md``: every configuration key, from the schema dataclasses of :mod:`robust_distill.config`
  (type and default from the dataclass, the description from the class docstring's ``:param key:`` or the
  field's trailing comment);
- ``reference/methods.md``: every built-in method, from the method registry (paper, the parts with their
  equations and options, the paper's defaults);
- ``reference/hooks.md``: the hook specifications of :mod:`robust_distill.core.hookspecs` (rendered by mkdocstrings);
- ``reference/cli.md``: every ``robust-distill`` command's ``--help``, from the argument parsers.

The committed results under ``benchmarks/`` (reports, claims, figures) are added to the site as they are, at
their repository paths, so that the results page links and shows them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import os
import re
import tokenize
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: files under benchmarks/results/ that the site carries (the reports and figures the results page links or shows)
BENCHMARK_SUFFIXES = {".md", ".png", ".txt"}
BENCHMARK_MAX_BYTES = 1 << 20
#: arguments the engine passes to a part's factory itself (``Registry.build``'s ``provided``), not config options
ENGINE_PROVIDED = {"num_classes", "batch_size", "registries", "eps", "epochs"}


# -------------------------------------------------------------------------------------------------
# Docstrings (reST-flavoured, as the code writes them) to Markdown
# -------------------------------------------------------------------------------------------------


def rst_to_md(text: str) -> str:
    """``code`` -> `code`, :class:`~a.b.C` -> `C`, :mod:`a.b` -> `a.b`."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).split('.')[-1] if '~' in m.group(0) else m.group(1)}`",
                  text)
    return text.replace("``", "`")


def split_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The text of a docstring before its fields, and its ``:param name: text`` fields (whitespace collapsed)."""
    doc = inspect.cleandoc(doc or "")
    fields = re.search(r"^:\w", doc, re.M)
    body, rest = (doc[:fields.start()], doc[fields.start():]) if fields else (doc, "")
    params = {m.group(1): " ".join(m.group(2).split())
              for m in re.finditer(r":param (\w+):(.*?)(?=:param \w+:|^:\w|\Z)", rest, re.S | re.M)}
    return body.strip(), params


def option_docs(obj: Any) -> dict[str, str]:
    """The options a part takes (its signature's keyword arguments) and their ``:param`` descriptions, from its
    own docstring, else its base classes' (an option a subclass passes on is documented where it is defined)."""
    try:
        takes = [n for n, p in inspect.signature(obj).parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ENGINE_PROVIDED]
    except (TypeError, ValueError):
        takes = []
    docs: dict[str, str] = {}
    for cls in inspect.getmro(obj) if inspect.isclass(obj) else (obj,):
        for name, text in split_docstring(cls.__doc__)[1].items():
            docs.setdefault(name, text)
    return {name: docs.get(name, "") for name in takes}


def first_paragraph(doc: str | None) -> str:
    return split_docstring(doc)[0].split("\n\n")[0].replace("\n", " ").strip()


# -------------------------------------------------------------------------------------------------
# Configuration keys
# -------------------------------------------------------------------------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """A dataclass's trailing field comments (``name: type = default  # text``, continued on comment lines)."""
    source = inspect.getsource(cls)
    comments: dict[str, str] = {}
    current = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.line.strip().startswith(tok.string + ":"):
            current = tok.string
        elif tok.type == tokenize.COMMENT and current:  # trailing, or on the lines after the field (continued)
            text = tok.string.lstrip("#").strip()
            comments[current] = f"{comments[current]} {text}" if current in comments else text
        elif tok.type == tokenize.NAME and tok.start[1] == 4:
            current = None
    return comments


def own_doc(cls: type) -> str:
    """A class's own docstring ("" for the signature a dataclass writes when it has none)."""
    doc = cls.__dict__.get("__doc__") or ""
    return "" if doc.startswith(f"{cls.__name__}(") else doc


def field_descriptions(cls: type) -> dict[str, str]:
    """Every field's description: the class docstring's ``:param name:``, else the field's trailing comment."""
    params = split_docstring(own_doc(cls))[1]
    comments = field_comments(cls)
    return {f.name: rst_to_md(params.get(f.name) or comments.get(f.name, "")) for f in dataclasses.fields(cls)}


def plain(value: Any) -> Any:
    """A value as a config file would write it (radii of k/255 as ``k/255``, which configs accept)."""
    from robust_distill.config import plain_data
    from robust_distill.core.threat import format_eps

    def fractions(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fractions(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fractions(x) for x in v]
        if isinstance(v, float) and 0 < v < 1 and format_eps(v).endswith("/255"):
            return format_eps(v)
        return v

    return fractions(plain_data(value))


def yaml_inline(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def config_sections() -> list[tuple[str, type]]:
    """(prefix, dataclass) of every section of the config schema, top level first."""
    from robust_distill.config import Config

    sections = [("", Config)]
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and type(default).__name__ != "Part":
            sections.append((f.name, type(default)))
    return sections


def config_page() -> str:
    sections = config_sections()
    out = ["# Configuration keys", "",
           "Every key of a config file, generated from the schema (`robust_distill/config/schema.py`). Layers, "
           "later wins key by key: these defaults < the method's paper defaults ([methods](methods.md)) < your file < "
           "`--set key=value`. See [Configuration](../configuration.md) for how a config is written and checked.",
           ""]
    for prefix, cls in sections:
        title = f"`{prefix}`" if prefix else "Top level"
        out += [f"## {title}", ""]
        body = first_paragraph(own_doc(cls)) if prefix else ""
        if body:
            out += [rst_to_md(body), ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        nested = {p for p, _ in sections}
        descriptions = field_descriptions(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            if not prefix and f.name in nested:
                descriptions[f.name] = descriptions[f.name] or f"see [`{f.name}`](#{f.name})"
                default = "(section)"
            elif f.default is not dataclasses.MISSING:
                default = f"`{yaml_inline(plain(f.default))}`"
            elif f.default_factory is not dataclasses.MISSING:
                default = f"`{yaml_inline(plain(f.default_factory()))}`"
            else:
                default = "required"
            kind = str(f.type).replace("|", "\\|")
            desc = descriptions[f.name].replace("|", "\\|")
            out.append(f"| `{key}` | `{kind}` | {default} | {desc} |")
        out.append("")
    return "\n".join(out)


# -------------------------------------------------------------------------------------------------
# Methods
# -------------------------------------------------------------------------------------------------


def builtin_registries() -> Any:
    """The registries of the built-in plugins only (an installed third-party plugin is not documented here)."""
    from robust_distill.core.manager import PluginManager

    return PluginManager().load_plugins(autoload=False).build_registries()


def part_section(label: str, registry: Any, part: Any) -> list[str]:
    if not part.key or part.key not in registry:
        return [f"**{label}**: `{part.key or 'none'}`", ""]
    entry = registry.entry(part.key)
    summary, params = split_docstring(inspect.getdoc(entry.obj))[0], option_docs(entry.obj)
    equation = rst_to_md(summary.split("\n\n")[0]).replace("\n", " ")
    lines = [f"**{label}**: `{part.key}` ({entry.plugin}): {equation}", ""]
    if params or part.kwargs:
        lines += ["| option | this method | what it is |", "|---|---|---|"]
        for name in dict.fromkeys([*part.kwargs, *params]):
            value = f"`{yaml_inline(plain(part.kwargs[name]))}`" if name in part.kwargs else "(default)"
            what = rst_to_md(params.get(name, "")).replace("|", "\\|")
            lines.append(f"| `{name}` | {value} | {what} |")
        lines.append("")
    return lines


def methods_page() -> str:
    regs = builtin_registries()
    out = ["# Methods (reference)", "",
           "Every built-in method, generated from the method registry: its paper and official code, its parts "
           "with their equations and the options it sets, and the paper's defaults (the layer between the engine's "
           "defaults and your config). A plugin's method appears in `robust-distill plugins`; the overview with "
           "the equations side by side is [Methods](../methods.md).", ""]
    for entry in regs.methods.entries():
        m = entry.obj
        out += [f"## `{m.name}`", "", rst_to_md(m.summary), "",
                f"- **paper and code**: {rst_to_md(m.reference) or '-'}",
                f"- **teachers to configure**: {', '.join(f'`{t}`' for t in m.teachers) or 'none'}",
                f"- **plugin**: `{entry.plugin}` ({entry.distribution})", ""]
        out += part_section("Inner maximisation", regs.inner_attacks, m.inner_attack)
        out += part_section("Outer loss", regs.outer_losses, m.outer_loss)
        if m.teacher_updater.key != "frozen":
            out += part_section("Teacher updater", regs.teacher_updaters, m.teacher_updater)
        if m.defaults:
            out += ["Defaults (paper / official code):", "", "```yaml",
                    yaml.safe_dump(plain(dict(m.defaults)), sort_keys=False, default_flow_style=None).strip(), "```",
                    ""]
    return "\n".join(out)


# -------------------------------------------------------------------------------------------------
# Hooks and the command line
# -------------------------------------------------------------------------------------------------


def hooks_page() -> str:
    return "\n".join([
        "# Hook reference", "",
        "Every hook specification of `robust_distill/core/hookspecs.py`, rendered from its docstring. The "
        "[plugin author's guide](../plugins.md) shows them at work.", "",
        "::: robust_distill.core.hookspecs", "    options:", "      show_root_heading: false",
        "      show_root_toc_entry: false", "      heading_level: 2", ""])


def cli_page() -> str:
    from robust_distill.cli import build_commands
    from robust_distill.core.manager import PluginManager

    os.environ["COLUMNS"] = "110"  # argparse wraps --help at the terminal's width: one width for the page
    pm = PluginManager().load_plugins(autoload=False)
    out = ["# Command line (reference)", "",
           "The `--help` of every `robust-distill` command, generated from the argument parsers (the built-in "
           "plugins' commands; a plugin adds its own through `rd_register_commands`). The overview is "
           "[Command line](../cli.md).", ""]
    for entry in build_commands(pm).entries():
        cmd = entry.obj
        parser = argparse.ArgumentParser(prog=f"robust-distill {cmd.name}", description=cmd.help)
        cmd.setup(parser)
        out += [f"## `{cmd.name}`", "", rst_to_md(cmd.help), "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(out)


GENERATED = {
    "reference/config.md": config_page,
    "reference/methods.md": methods_page,
    "reference/hooks.md": hooks_page,
    "reference/cli.md": cli_page,
}


def benchmark_files() -> list[Path]:
    """The committed benchmark files the site carries (reports, claims, figures, configs, scripts)."""
    return sorted(p for p in (ROOT / "benchmarks" / "results").rglob("*")
                  if p.is_file() and p.suffix in BENCHMARK_SUFFIXES and p.stat().st_size <= BENCHMARK_MAX_BYTES
                  and "__pycache__" not in p.parts)


# -------------------------------------------------------------------------------------------------
# The MkDocs hook
# -------------------------------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages and the committed benchmark results to the site."""
    from mkdocs.structure.files import File, InclusionLevel

    os.environ.setdefault("RD_DISABLE_PLUGIN_AUTOLOAD", "1")
    for path, render in GENERATED.items():
        files.append(File.generated(config, path, content=render()))
    for path in benchmark_files():
        files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path),
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    return files
