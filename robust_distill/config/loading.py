"""Reading configurations: strict YAML (no duplicate keys, merge keys resolved), ``--set key=value`` overrides,
shorthand normalisation, and the layers a run's config is merged from (engine defaults < the method's paper
defaults < the file < overrides).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from robust_distill.core.components import Method, Part
from robust_distill.core.preflight import (
    check_input_file,
)
from robust_distill.errors import ConfigError

_PART_FIELDS = ("inner_attack", "outer_loss", "teacher_updater")


#: engine defaults that are components (so that a method or user component with another key replaces them)
BASE_LAYER: dict[str, Any] = {"optim": {"schedule": {"key": "multistep", "kwargs": {"milestones": [100, 150],
                                                                                   "gamma": 0.1}}}}


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``top`` over ``base`` key by key; a component (``{key, kwargs}``) with another key replaces
    the base one entirely, since the base component's options do not apply to it."""
    out = copy.deepcopy(dict(base))
    for k, v in top.items():
        if (isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and "key" in v and "key" in out[k]
                and v["key"] != out[k]["key"]):
            out[k] = copy.deepcopy(dict(v))
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class DuplicateKeyError(yaml.constructor.ConstructorError, ConfigError):
    """A YAML mapping with the same key twice (plain YAML keeps the last one silently); :func:`read_yaml` reports
    it as the file's problem."""

    @property
    def problems(self) -> list[str]:  # type: ignore[override]
        """The one problem (a :class:`ConfigError` lists its problems)."""
        return [str(self)]


MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys, naming the key and both lines. Merge keys
    (``<<: *defaults``) work as in YAML 1.1: the mapping's own keys override the merged ones."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *anchor`: its keys are defaults the mapping's own keys override
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not key_node:
                raise DuplicateKeyError(
                    None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1}): YAML would keep "
                    "only the "
                    "last value, so robust-distill refuses; remove one of them", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """Parse a YAML file with :class:`StrictLoader`; every problem is a :class:`ConfigError` naming the file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError([f"{what} {str(p)!r} is a folder, not a YAML file."], str(p))
    problem = check_input_file(p, what)
    if problem:
        raise ConfigError([problem], str(p))
    try:
        return yaml.load(p.read_text(), Loader=StrictLoader)  # noqa: S506  (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read it: {exc}"], str(p)) from None


def parse_value(text: str) -> Any:
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506
    except yaml.YAMLError:
        return text


def apply_overrides(raw: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping, in order.

    A mapping value merges into the mapping already there, key by key (``--set optim.lr=0.5 --set
    'optim={epochs: 1}'`` keeps both; a component with another ``key`` replaces the old one, as in layering);
    any other value replaces what was there.
    """
    out = copy.deepcopy(dict(raw))
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected key=value, e.g. --set optim.epochs=5")
            continue
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            problems.append(f"--set {item!r}: {key.strip()!r} is not a dotted key, e.g. --set optim.epochs=5")
            continue
        node = out
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node.get(p), dict):
                node[p] = _normalise_shorthand(p, node.get(p))
            if not isinstance(node[p], dict):
                where = ".".join(parts[:i + 1])
                problems.append(f"--set {item!r}: {where} is {node[p]!r}, not a mapping with keys below it.")
                break
            node = node[p]
        else:
            _override(node, parts[-1], parse_value(value))
    if problems:
        raise ConfigError(problems, "--set override")
    return out


def _override(node: dict[str, Any], key: str, value: Any) -> None:
    """``node[key] = value``; a mapping merges into the mapping already there (see :func:`apply_overrides`)."""
    if isinstance(value, Mapping) and isinstance(node.get(key), Mapping):
        value = deep_merge({key: node[key]}, {key: value})[key]  # (a part with another key replaces the old one)
    node[key] = value


def _normalise_shorthand(name: str, value: Any) -> Any:
    """``student: timm:resnet18`` -> ``{key: timm:resnet18, kwargs: {}}`` (same for teachers, parts and
    ``optim.schedule``)."""
    if isinstance(value, str):
        return {"key": value, "kwargs": {}}
    return value if value is not None else {}


def normalise(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    for name in ("student", *_PART_FIELDS):
        if name in out:
            out[name] = _normalise_shorthand(name, out[name])
    if isinstance(out.get("teachers"), Mapping):
        out["teachers"] = {r: _normalise_shorthand(r, v) for r, v in out["teachers"].items()}
    if isinstance(out.get("optim"), Mapping) and "schedule" in out["optim"]:
        out["optim"] = {**out["optim"], "schedule": _normalise_shorthand("schedule", out["optim"]["schedule"])}
    if isinstance(out.get("logging"), (str, Mapping)):  # `logging: tensorboard`: one logger
        out["logging"] = [out["logging"]]
    if isinstance(out.get("logging"), list):
        out["logging"] = [_normalise_shorthand("logging", v) for v in out["logging"]]
    return out


def method_layer(method: Method) -> dict[str, Any]:
    """The method's defaults and parts, as a config layer."""
    layer = copy.deepcopy(dict(method.defaults))
    for name in _PART_FIELDS:
        part: Part = getattr(method, name)
        layer[name] = {"key": part.key, "kwargs": dict(part.kwargs)}
    return layer
