"""YAML configuration: layered defaults, ``--set`` overrides, and validation before any work starts.

Layers, later wins key by key: the defaults below < the method's paper defaults < the YAML file <
``--set key=value`` overrides. The resolved configuration is validated as a whole (unknown keys, wrong
types, unknown plugin names, epsilon outside (0, 1], missing files) and every problem is reported at once.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .components import DatasetInfo, Method, Part
from .registry import UnknownNameError
from .threat import ThreatModel, parse_fraction

__all__ = ["Config", "ConfigError", "load_config", "resolve_config", "apply_overrides", "config_to_dict"]

SCHEMA_VERSION = 1


class ConfigError(ValueError):
    """The configuration cannot work; the message lists every problem found."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Invalid {source} ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n{lines}")


# -------------------------------------------------------------------------------------------------
# Schema
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartConfig:
    """A component: registry ``key`` and constructor ``kwargs``."""

    key: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    root: Union[str, None] = None
    options: dict[str, Any] = field(default_factory=dict)
    val_size: int = 5000  # held out of the training split for model selection; 0 disables
    split_seed: int = 0  # the validation split is the same for every run seed
    train_subset: Union[int, None] = None  # train on the first N training images (after the split)
    batch_size: int = 128
    eval_batch_size: int = 256
    augment: bool = True


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 200
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    schedule: PartConfig = PartConfig("multistep", {"milestones": [100, 150], "gamma": 0.1})
    amp: bool = False  # mixed precision (CUDA only)
    clip_grad_norm: Union[float, None] = None  # clip the student's gradient to this L2 norm before each step


@dataclass(frozen=True)
class EvalConfig:
    every: int = 1  # evaluate every N epochs (and always after the last one)
    split: Literal["val", "test"] = "val"  # model selection on a held-out split; "test" as the papers
    n_examples: Union[int, None] = 1000  # None: the whole split
    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd20"])
    select: str = "pgd20"  # metric that picks the best checkpoint
    eps: Union[float, None] = None  # evaluation radius; default: threat.eps
    final_attacks: list[str] = field(default_factory=list)  # on the test split after training
    final_n_examples: Union[int, None] = 1000
    train_records: int = 0  # per-sample PGD correctness on the first N training images, each eval


@dataclass(frozen=True)
class Config:
    method: str
    student: PartConfig
    teachers: dict[str, PartConfig] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/run"
    data: DataConfig = DataConfig()
    threat: ThreatModel = ThreatModel()
    inner_attack: PartConfig = PartConfig("")
    outer_loss: PartConfig = PartConfig("")
    teacher_updater: PartConfig = PartConfig("frozen")
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    channels_last: bool = False  # NHWC memory format (faster convolutions on CPU and recent GPUs)
    sync_bn: bool = False  # SyncBatchNorm under torchrun
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower)
    save_epochs: list[int] = field(default_factory=list)  # also keep the student of these epochs (epoch_N.pt)


_PART_FIELDS = ("inner_attack", "outer_loss", "teacher_updater")
#: engine defaults that are components (so that a method or user component with another key replaces them)
_BASE_LAYER: dict[str, Any] = {"optim": {"schedule": {"key": "multistep", "kwargs": {"milestones": [100, 150],
                                                                                   "gamma": 0.1}}}}
_EPS_FIELDS = {"eps", "step_size", "eps_end"}


# -------------------------------------------------------------------------------------------------
# Layering
# -------------------------------------------------------------------------------------------------


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``top`` over ``base`` key by key; a component (``{key, kwargs}``) with another key replaces
    the base one entirely, since the base component's options do not apply to it."""
    out = copy.deepcopy(dict(base))
    for k, v in top.items():
        if (isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and "key" in v and "key" in out[k]
                and v["key"] != out[k]["key"]):
            out[k] = copy.deepcopy(dict(v))
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    out = copy.deepcopy(dict(raw))
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected key=value, e.g. --set optim.epochs=5")
            continue
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = _normalise_shorthand(p, node.get(p))
            node = node[p]
        node[parts[-1]] = _parse_value(value)
    if problems:
        raise ConfigError(problems, "--set override")
    return out


def _normalise_shorthand(name: str, value: Any) -> Any:
    """``student: timm:resnet18`` -> ``{key: timm:resnet18, kwargs: {}}`` (same for teachers/parts)."""
    if isinstance(value, str):
        return {"key": value, "kwargs": {}}
    return value if value is not None else {}


def _normalise(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    for name in ("student", *_PART_FIELDS):
        if name in out:
            out[name] = _normalise_shorthand(name, out[name])
    if isinstance(out.get("teachers"), Mapping):
        out["teachers"] = {r: _normalise_shorthand(r, v) for r, v in out["teachers"].items()}
    return out


def _method_layer(method: Method) -> dict[str, Any]:
    """The method's defaults and parts, as a config layer."""
    layer = copy.deepcopy(dict(method.defaults))
    for name in _PART_FIELDS:
        part: Part = getattr(method, name)
        layer[name] = {"key": part.key, "kwargs": dict(part.kwargs)}
    return layer


# -------------------------------------------------------------------------------------------------
# Typed conversion
# -------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors: list[str] = []
        for a in args:
            if a is type(None):
                continue
            sub: list[str] = []
            out = _convert(value, a, path, sub)
            if not sub:
                return out
            errors.extend(sub)
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        if value not in args:
            problems.append(f"{path}: must be one of {', '.join(repr(a) for a in args)}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {value!r}")
            return []
        return [_convert(v, args[0] if args else Any, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return {}
        return {k: _convert(v, args[1] if args else Any, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        try:
            return parse_fraction(value, what=path)
        except ValueError as exc:
            problems.append(str(exc))
            return None
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        problems.append(f"{path or 'config'}: expected a mapping, got {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}: unknown key.{hint} Valid keys here: {', '.join(fields)}.")
            continue
        if cls is ThreatModel and key in _EPS_FIELDS and value is not None:
            try:
                kwargs[key] = parse_fraction(value, what=where)
            except ValueError as exc:
                problems.append(str(exc))
            continue
        kwargs[key] = _convert(value, hints[key], where, problems)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    for n in missing:
        if not any(p.startswith(f"{path}.{n}" if path else n) for p in problems):
            problems.append(f"{path + '.' if path else ''}{n}: required key is missing.")
    if missing or any(v is None and hints[k] in (int, float, str, bool) for k, v in kwargs.items()):
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{path or 'config'}: {exc}")
        return None


# -------------------------------------------------------------------------------------------------
# Semantic checks (plugin names, component kwargs, files)
# -------------------------------------------------------------------------------------------------


def _check_kwargs(factory: Any, kwargs: Mapping[str, Any], path: str, problems: list[str],
                  provided: tuple[str, ...] = ()) -> None:
    """Check ``kwargs`` against the factory's signature: unknown names, Literal choices, basic types."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = inspect.Signature()
    params = {n: p for n, p in sig.parameters.items() if n not in provided
              and p.kind not in (p.VAR_POSITIONAL,)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:
        hints = {}
    for key, value in kwargs.items():
        if key not in params:
            valid = ", ".join(n for n in params) or "(none)"
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"{path}.{key}: not an option of {getattr(factory, '__name__', factory)}.{hint} "
                            f"Valid options: {valid}.")
            continue
        if key in hints and value is not None:
            _convert(value, hints[key], f"{path}.{key}", problems)


def _check_part(registry: Any, part: PartConfig, path: str, problems: list[str],
                provided: tuple[str, ...] = ()) -> None:
    try:
        factory = registry.get(part.key)
    except UnknownNameError as exc:
        problems.append(f"{path}.key: {exc}")
        return
    _check_kwargs(factory, part.kwargs, f"{path}.kwargs", problems, provided)


def split_spec(spec: str) -> tuple[str, str]:
    source, sep, name = spec.partition(":")
    return (source, name) if sep else ("", spec)


def validate(cfg: Config, regs: Any, problems: list[str]) -> DatasetInfo | None:
    """Check plugin names, component options and files against the registries."""
    method = None
    try:
        method = regs.methods.get(cfg.method)
    except UnknownNameError as exc:
        problems.append(f"method: {exc}")
    info = None
    try:
        dataset = regs.datasets.get(cfg.data.dataset)
        _check_kwargs(dataset.load, {**cfg.data.options}, "data.options", problems, provided=("root",))
        info = dataset.info(**cfg.data.options)
        downloads = getattr(dataset, "downloads", False) and cfg.data.options.get("download", True)
        if cfg.data.root is not None and not downloads and not Path(cfg.data.root).expanduser().exists():
            problems.append(f"data.root: folder {cfg.data.root!r} does not exist.")
    except UnknownNameError as exc:
        problems.append(f"data.dataset: {exc}")
    except (TypeError, ValueError) as exc:
        problems.append(f"data.options: {exc}")

    _check_part(regs.inner_attacks, cfg.inner_attack, "inner_attack", problems)
    _check_part(regs.outer_losses, cfg.outer_loss, "outer_loss", problems)
    _check_part(regs.teacher_updaters, cfg.teacher_updater, "teacher_updater", problems)
    _check_part(regs.lr_schedules, cfg.optim.schedule, "optim.schedule", problems, provided=("epochs",))

    for name in [*cfg.eval.attacks, *cfg.eval.final_attacks]:
        if name not in regs.eval_attacks:
            problems.append(f"eval.attacks: {UnknownNameError('eval attack', name, regs.eval_attacks.names())}")
    if cfg.eval.select not in cfg.eval.attacks:
        problems.append(f"eval.select: {cfg.eval.select!r} must be one of eval.attacks "
                        f"({', '.join(cfg.eval.attacks)}).")
    if cfg.eval.split == "val" and cfg.data.val_size <= 0:
        problems.append("eval.split: 'val' needs data.val_size > 0 (or set eval.split: test).")
    if cfg.eval.eps is not None and not 0 < cfg.eval.eps <= 1:
        problems.append(f"eval.eps must be in (0, 1]; got {cfg.eval.eps:g}.")
    if cfg.optim.epochs < 1:
        problems.append(f"optim.epochs must be >= 1, got {cfg.optim.epochs}.")
    if cfg.optim.clip_grad_norm is not None and not cfg.optim.clip_grad_norm > 0:
        problems.append(f"optim.clip_grad_norm must be > 0 (or null for no clipping), got {cfg.optim.clip_grad_norm}.")
    bad = [e for e in cfg.save_epochs if not 1 <= e <= cfg.optim.epochs]
    if bad:
        problems.append(f"save_epochs: {bad} outside 1..{cfg.optim.epochs} (1-based epochs of this run).")
    if cfg.data.batch_size < 1:
        problems.append(f"data.batch_size must be >= 1, got {cfg.data.batch_size}.")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        problems.append(f"device: must be auto, cpu, cuda or cuda:N; got {cfg.device!r}.")

    # student and teachers
    source, name = split_spec(cfg.student.key)
    try:
        regs.student_sources.get(source).check(name, **cfg.student.kwargs)
    except UnknownNameError as exc:
        problems.append(f"student.key: {cfg.student.key!r} needs a source prefix: {exc}")
    except (TypeError, ValueError, FileNotFoundError) as exc:
        problems.append(f"student.key: {exc}")
    if method is not None:
        updater_roles = ()
        try:
            updater_roles = tuple(getattr(regs.teacher_updaters.get(cfg.teacher_updater.key), "provides", ()))
        except UnknownNameError:
            pass
        needed = [r for r in method.teachers if r not in updater_roles]
        for role in needed:
            if role not in cfg.teachers:
                problems.append(f"teachers.{role}: method {method.name!r} needs a {role!r} teacher, e.g. "
                                f"teachers: {{{role}: robustbench:Chen2021LTD_WRN34_10}}.")
        for role in cfg.teachers:
            if role not in method.teachers:
                problems.append(f"teachers.{role}: method {method.name!r} does not use a {role!r} teacher "
                                f"(it uses: {', '.join(method.teachers) or 'none'}).")
    for role, teacher in cfg.teachers.items():
        source, name = split_spec(teacher.key)
        try:
            src = regs.teacher_sources.get(source)
        except UnknownNameError as exc:
            problems.append(f"teachers.{role}.key: {teacher.key!r}: {exc}")
            continue
        if info is not None:
            try:
                src.check(name, dataset=info, **teacher.kwargs)
            except (TypeError, ValueError, FileNotFoundError) as exc:
                problems.append(f"teachers.{role}.key: {exc}")
    return info


# -------------------------------------------------------------------------------------------------
# Entry points
# -------------------------------------------------------------------------------------------------


def resolve_config(raw: Mapping[str, Any], regs: Any, *, overrides: list[str] = (),  # type: ignore[assignment]
                   source: str = "config", check: bool = True) -> Config:
    """Layer defaults, method defaults, ``raw`` and ``overrides``; validate; return a :class:`Config`."""
    user = _normalise(apply_overrides(raw, list(overrides)))
    problems: list[str] = []
    if not isinstance(user.get("method"), str):
        raise ConfigError(["method: required, e.g. method: adaad. Registered methods: "
                           + ", ".join(regs.methods.names())], source)
    try:
        method = regs.methods.get(user["method"])
        layered = _deep_merge(_deep_merge(_BASE_LAYER, _method_layer(method)), user)
    except UnknownNameError as exc:
        raise ConfigError([f"method: {exc}"], source) from None
    if layered.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
        problems.append(f"version: this robust-distill reads config version {SCHEMA_VERSION}, "
                        f"got {layered.get('version')!r}.")
    cfg = _build(Config, layered, "", problems)
    if cfg is not None and check and not problems:  # names and files are checked once types are right
        validate(cfg, regs, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_config(path: str | os.PathLike[str], regs: Any, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Read a YAML config file and resolve it (see :func:`resolve_config`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"config file {str(p)!r} does not exist."], str(p))
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(p)) from None
    if not isinstance(raw, Mapping):
        raise ConfigError(["the top level must be a mapping of keys (method:, student:, ...)."], str(p))
    return resolve_config(raw, regs, overrides=list(overrides), source=str(p))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data (for YAML/JSON and checkpoints)."""
    return dataclasses.asdict(cfg)
