"""YAML configuration: layered defaults, ``--set`` overrides, and validation before any work starts.

Layers, later wins key by key: the defaults below < the method's paper defaults < the YAML file <
``--set key=value`` overrides. The resolved configuration is validated as a whole (unknown keys, wrong
types, unknown plugin names, epsilon outside (0, 1], non-finite floats, integers beyond 64 bits, missing files)
and every problem is reported at once. Validation builds the run without training it: every part is constructed
with its options, the lr schedule evaluated at every epoch, the student and teachers built on the ``meta``
device (:func:`validate`), so whatever ``train`` would refuse in its first second is refused here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import math
import os
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from robust_distill.core.components import DatasetInfo, Method, Part, split_spec
from robust_distill.core.preflight import (
    check_device,
    check_input_file,
    check_input_shape,
    check_output_dir,
    check_sync_bn,
    on_meta,
    path_kind,
)
from robust_distill.core.registry import UnknownNameError
from robust_distill.core.threat import ThreatModel, parse_fraction
from robust_distill.data.memory import dataset_info
from robust_distill.errors import ConfigError, RegistryError

__all__ = ["Config", "ConfigError", "load_config", "resolve_config", "apply_overrides", "config_to_dict", "read_yaml",
           "StrictLoader", "config_differences", "RESUME_MAY_DIFFER", "ResumeMismatchError", "plain_data",
           "effective_config", "stored_eval_eps"]

SCHEMA_VERSION = 1
#: ``optim.compile`` values besides true/false: ``torch.compile`` modes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# -------------------------------------------------------------------------------------------------
# Schema
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """``data:``, the dataset and how it is batched.

    :param dataset: a registered dataset (``cifar10``, ``cifar100``, ``fashion_mnist``, ``image_folder``,
        ``tiny_imagenet``, ``imagenet``, ``synthetic``, or a plugin's).
    :param root: where the dataset's files are (``null``: the dataset's default).
    :param options: keyword arguments of the dataset's ``load`` and ``info`` (``{n_train: 96}`` for ``synthetic``).
    :param batch_size: the global training batch (divided among processes under torchrun).
    :param eval_batch_size: the batch of evaluation attacks.
    :param augment: the random crop and flip the dataset asks for (``false``: none).
    """
    dataset: str = "cifar10"
    root: Union[str, None] = None
    options: dict[str, Any] = field(default_factory=dict)
    val_size: int = 5000  # held out of the training split for model selection; 0 disables
    split_seed: int = 0  # the validation split is the same for every run seed
    train_subset: Union[int, None] = None  # train on the first N training images (after the split)
    batch_size: int = 128
    eval_batch_size: int = 256
    augment: bool = True
    on_device: Union[bool, Literal["auto"]] = "auto"  # keep the in-memory dataset on the GPU (auto: if it fits)
    workers: Union[int, None] = None  # DataLoader processes of streamed datasets; null: min(4, cores)
    prefetch_factor: int = 2  # batches each worker prepares ahead (streamed datasets)


@dataclass(frozen=True)
class OptimConfig:
    """``optim:``, the student's optimiser (SGD) and learning-rate schedule.

    :param epochs: training epochs.
    :param lr: the initial learning rate.
    :param momentum: SGD momentum.
    :param weight_decay: SGD weight decay.
    :param nesterov: Nesterov momentum.
    :param schedule: a registered lr schedule (``multistep``, ``cosine``, ``constant``, ...) with its options.
    """
    epochs: int = 200
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    schedule: Part = Part("multistep", {"milestones": [100, 150], "gamma": 0.1})
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of training (robust_distill.core.precision)
    compile: Union[bool, Literal[COMPILE_MODES]] = False  # torch.compile the student and teacher forwards
    fold_bn: Union[bool, Literal["auto"]] = "auto"  # fold BatchNorm into convolutions (robust_distill.engine.fastpath)
    log_every: int = 50  # steps between reads of the per-step diagnostics (one host sync each) on CUDA
    amp: bool = False  # deprecated alias of precision: fp16
    clip_grad_norm: Union[float, None] = None  # clip the student's gradient to this L2 norm before each step


@dataclass(frozen=True)
class EvalConfig:
    """``eval:``, the evaluation after every ``every`` epochs and after training.

    :param attacks: evaluation attacks run every ``every`` epochs on ``split`` (``clean``, ``pgd20``, ...).
    :param final_n_examples: test images of the final evaluation (``null``: the whole test split).
    """
    every: int = 1  # evaluate every N epochs (and always after the last one)
    split: Literal["val", "test"] = "val"  # model selection on a held-out split; "test" as the papers
    n_examples: Union[int, None] = 1000  # None: the whole split
    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd20"])
    select: str = "pgd20"  # metric that picks the best checkpoint
    eps: Union[float, None] = None  # evaluation radius; default: threat.eps
    final_attacks: list[str] = field(default_factory=list)  # on the test split after training
    final_n_examples: Union[int, None] = 1000
    train_records: int = 0  # per-sample PGD correctness on the first N training images, each eval
    precision: Literal["fp32", "bf16"] = "fp32"  # evaluation attacks in fp32 unless asked (comparable numbers)
    concurrency: Union[int, Literal["auto"]] = "auto"  # AutoAttack chunks attacked at once (auto: several on CUDA)


@dataclass(frozen=True)
class SWAConfig:
    """``swa:``, stochastic weight averaging of the student (``output_dir/swa.pt``)."""
    start: Union[float, None] = None  # SWA of the student from this epoch (0-based; < 1: a fraction of the run;
    # at or after optim.epochs: never, as PeerAiD's default 214 in a short run)


@dataclass(frozen=True)
class Config:
    """A resolved configuration (one YAML file per experiment).

    :param method: a registered method; its parts and paper defaults come with it.
    :param student: the student network, ``<source>:<name>`` (``timm:resnet18_cifar``) with options.
    :param teachers: teacher role (``robust``, ``natural``, ...) -> ``<source>:<name>`` with options.
    :param version: the config schema's version.
    :param seed: every random draw of the run derives from it (and the epoch).
    :param device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    :param output_dir: the run's folder (config, metrics, checkpoints; resumed from its ``last.pt``).
    :param inner_attack: the inner maximisation (default: the method's) and its options.
    :param outer_loss: the outer loss (default: the method's) and its options.
    :param teacher_updater: how teachers change during training (``frozen``: never).
    """
    method: str
    student: Part
    teachers: dict[str, Part] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/run"
    data: DataConfig = DataConfig()
    threat: ThreatModel = ThreatModel()
    inner_attack: Part = Part("")
    outer_loss: Part = Part("")
    teacher_updater: Part = Part("frozen")
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    swa: SWAConfig = SWAConfig()
    logging: list[Part] = field(default_factory=list)  # experiment trackers: [tensorboard, wandb] (rd_register_loggers)
    channels_last: bool = False  # NHWC memory format (faster convolutions on CPU and recent GPUs)
    sync_bn: bool = False  # SyncBatchNorm under torchrun
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower)
    save_epochs: list[int] = field(default_factory=list)  # also keep the student of these epochs (epoch_N.pt)

    @property
    def eval_threat(self) -> ThreatModel:
        """The evaluation's L-inf ball: radius ``eval.eps``, else ``threat.eps`` (the starting radius when
        ``threat.eps_end`` grows it). Only the ball is used: each evaluation attack has its own steps."""
        return ThreatModel(eps=self.eval.eps if self.eval.eps is not None else self.threat.eps)


def stored_eval_eps(stored: Mapping[str, Any] | None, default: Any = None) -> Any:
    """:attr:`Config.eval_threat`'s rule on a config stored as plain data (a checkpoint's ``config``): its
    ``eval.eps``, else its ``threat.eps``, else ``default`` (as written there: a number or ``"8/255"``)."""
    stored = stored or {}
    eps = (stored.get("eval") or {}).get("eps")
    return eps if eps is not None else (stored.get("threat") or {}).get("eps", default)


_PART_FIELDS = ("inner_attack", "outer_loss", "teacher_updater")
#: engine defaults that are components (so that a method or user component with another key replaces them)
_BASE_LAYER: dict[str, Any] = {"optim": {"schedule": {"key": "multistep", "kwargs": {"milestones": [100, 150],
                                                                                   "gamma": 0.1}}}}
_EPS_FIELDS = {"eps", "step_size", "eps_end"}
#: integers are 64-bit in torch: every integer of a config fits one
INT_LIMIT = 2**63
#: seeds seed Python's, numpy's (32-bit) and torch's generators
SEED_RANGE = (0, 2**32 - 1)


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


class DuplicateKeyError(yaml.constructor.ConstructorError, ConfigError):
    """A YAML mapping with the same key twice (plain YAML keeps the last one silently)."""


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


def _parse_value(text: str) -> Any:
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
            _override(node, parts[-1], _parse_value(value))
    if problems:
        raise ConfigError(problems, "--set override")
    return out


def _override(node: dict[str, Any], key: str, value: Any) -> None:
    """``node[key] = value``; a mapping merges into the mapping already there (see :func:`apply_overrides`)."""
    if isinstance(value, Mapping) and isinstance(node.get(key), Mapping):
        value = _deep_merge({key: node[key]}, {key: value})[key]  # (a part with another key replaces the old one)
    node[key] = value


def _normalise_shorthand(name: str, value: Any) -> Any:
    """``student: timm:resnet18`` -> ``{key: timm:resnet18, kwargs: {}}`` (same for teachers, parts and
    ``optim.schedule``)."""
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
    if isinstance(out.get("optim"), Mapping) and "schedule" in out["optim"]:
        out["optim"] = {**out["optim"], "schedule": _normalise_shorthand("schedule", out["optim"]["schedule"])}
    if isinstance(out.get("logging"), (str, Mapping)):  # `logging: tensorboard`: one logger
        out["logging"] = [out["logging"]]
    if isinstance(out.get("logging"), list):
        out["logging"] = [_normalise_shorthand("logging", v) for v in out["logging"]]
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
        choices = [a for a in args if a is not type(None)]
        if len(choices) == 1 and errors:  # `float | None`: the number's own problem, which names its range
            problems.extend(errors)
        else:
            problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        if value not in args:
            problems.append(f"{path}: must be one of {', '.join(repr(a) for a in args)}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin in (list, Sequence):
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
        elif not -INT_LIMIT <= value < INT_LIMIT:
            problems.append(f"{path}: {value} does not fit a 64-bit integer (valid: {-INT_LIMIT} to {INT_LIMIT - 1}).")
        return value
    if tp is float:
        return _number(value, path, problems)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _number(value: Any, path: str, problems: list[str]) -> float | None:
    """A finite float from ``0.1``, ``8/255`` or ``"1e-3"``; else a problem naming ``path`` (None)."""
    try:
        number = parse_fraction(value, what=path)
    except ValueError as exc:
        problems.append(str(exc))
        return None
    if not math.isfinite(number):
        problems.append(f"{path}: must be a finite number, got {value!r}.")
        return None
    return number


def _nonfinite(value: Any, path: str, problems: list[str]) -> None:
    """A problem for every NaN or infinite float inside ``value`` (options without a declared type)."""
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{path}: must be a finite number, got {value!r}.")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _nonfinite(v, f"{path}.{k}", problems)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _nonfinite(v, f"{path}[{i}]", problems)


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
            number = _number(value, where, problems)
            if number is not None:
                kwargs[key] = number
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


def _check_part(registry: Any, part: Part, path: str, problems: list[str],
                provided: tuple[str, ...] = ()) -> None:
    try:
        factory = registry.get(part.key)
    except UnknownNameError as exc:
        problems.append(f"{path}.key: {exc}")
        return
    _nonfinite(part.kwargs, f"{path}.kwargs", problems)
    _check_kwargs(factory, part.kwargs, f"{path}.kwargs", problems, provided)


def _construct(registry: Any, part: Part, path: str, problems: list[str], **provided: Any) -> Any:
    """``registry.build(part.key, part.kwargs, **provided)`` as the engine calls it; a constructor that refuses
    its options is a problem naming the key, the part and the plugin and distribution that provide it."""
    try:
        return registry.build(part.key, part.kwargs, **provided)
    except Exception as exc:  # whatever it raises, train would raise the same in its first second
        entry = registry.entry(part.key)
        problems.append(f"{path}: the {registry.kind} {part.key!r} of {entry.describe_source()} refuses its "
                        f"options {dict(part.kwargs)}: {type(exc).__name__}: {exc}")
        return None


def _construct_parts(cfg: Config, regs: Any, info: DatasetInfo, problems: list[str]) -> None:
    """Build every part with its arguments as the run does (nothing is trained) and evaluate the learning-rate
    schedule at every epoch: what a constructor or the schedule would refuse in ``train``, is refused now."""
    _construct(regs.inner_attacks, cfg.inner_attack, "inner_attack", problems)
    _construct(regs.outer_losses, cfg.outer_loss, "outer_loss", problems, num_classes=info.num_classes,
               registries=regs, batch_size=cfg.data.batch_size)
    _construct(regs.teacher_updaters, cfg.teacher_updater, "teacher_updater", problems)
    schedule = _construct(regs.lr_schedules, cfg.optim.schedule, "optim.schedule", problems, epochs=cfg.optim.epochs)
    if schedule is not None:
        _check_schedule(schedule, cfg, problems)
    try:
        eps = cfg.eval_threat.eps
    except ValueError:  # eval.eps out of (0, 1]: reported by validate
        return
    for name in dict.fromkeys(n for n in (*cfg.eval.attacks, *cfg.eval.final_attacks) if n in regs.eval_attacks):
        _construct(regs.eval_attacks, Part(name), f"eval attack {name!r}", problems, eps=eps,
                   num_classes=info.num_classes)


def _check_schedule(schedule: Any, cfg: Config, problems: list[str]) -> None:
    """The schedule's multiplier at the start and middle of every epoch: a finite number >= 0."""
    for epoch in (e / 2 for e in range(2 * cfg.optim.epochs)):
        try:
            value = schedule(epoch)
            bad = (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                   or value < 0)
        except Exception as exc:
            problems.append(f"optim.schedule: {cfg.optim.schedule.key!r} fails at epoch {epoch:g}: "
                            f"{type(exc).__name__}: {exc}")
            return
        if bad:
            problems.append(f"optim.schedule: {cfg.optim.schedule.key!r} gives the lr multiplier {value!r} at epoch "
                            f"{epoch:g}; it must be a finite number >= 0.")
            return


def validate(cfg: Config, regs: Any, problems: list[str]) -> DatasetInfo | None:
    """Check plugin names, component options and files against the registries."""
    for path, options in (("data.options", cfg.data.options), ("student.kwargs", cfg.student.kwargs),
                          *((f"teachers.{role}.kwargs", t.kwargs) for role, t in cfg.teachers.items())):
        _nonfinite(options, path, problems)
    method = None
    try:
        method = regs.methods.get(cfg.method)
    except UnknownNameError as exc:
        problems.append(f"method: {exc}")
    info = None
    try:
        dataset = regs.datasets.get(cfg.data.dataset)
        n_problems = len(problems)
        _check_kwargs(dataset.load, {**cfg.data.options}, "data.options", problems, provided=("root", "registries"))
        downloads = getattr(dataset, "downloads", False) and cfg.data.options.get("download", True)
        root_kind = None if cfg.data.root is None else path_kind(Path(cfg.data.root).expanduser())
        root_missing = root_kind is not None and not downloads and root_kind == "nothing"
        if root_missing:
            problems.append(f"data.root: folder {cfg.data.root!r} does not exist.")
        elif root_kind not in (None, "nothing", "a folder", "a file"):  # a dataset plugin may read one file
            problems.append(f"data.root: {cfg.data.root!r} is {root_kind}, not a folder or a file.")
        if len(problems) == n_problems + root_missing:  # image datasets read their folders: bad files fail now
            try:
                info = dataset_info(dataset, cfg.data.root, cfg.data.options, regs)
            except (OSError, TypeError, ValueError) as exc:
                if not root_missing:
                    problems.append(f"data: {exc}")
    except UnknownNameError as exc:
        problems.append(f"data.dataset: {exc}")
    except (TypeError, ValueError) as exc:
        problems.append(f"data.options: {exc}")
    if cfg.data.workers is not None and cfg.data.workers < 0:
        problems.append(f"data.workers must be >= 0 (0: read files in the training process), got {cfg.data.workers}.")
    if cfg.data.prefetch_factor < 1:
        problems.append(f"data.prefetch_factor must be >= 1, got {cfg.data.prefetch_factor}.")

    parts_ok = len(problems)
    _check_part(regs.inner_attacks, cfg.inner_attack, "inner_attack", problems)
    _check_part(regs.outer_losses, cfg.outer_loss, "outer_loss", problems)
    _check_part(regs.teacher_updaters, cfg.teacher_updater, "teacher_updater", problems)
    _check_part(regs.lr_schedules, cfg.optim.schedule, "optim.schedule", problems, provided=("epochs",))
    parts_ok = len(problems) == parts_ok

    for i, part in enumerate(cfg.logging):
        _check_part(regs.loggers, part, f"logging[{i}]", problems, provided=("output_dir",))
        check = getattr(regs.loggers.get(part.key), "check", None) if part.key in regs.loggers else None
        if check is not None:
            try:
                check(**part.kwargs)
            except (ImportError, TypeError, ValueError) as exc:
                problems.append(f"logging[{i}]: {exc}")
    for key in ("attacks", "final_attacks"):
        for name in getattr(cfg.eval, key):
            if name not in regs.eval_attacks:
                problems.append(f"eval.{key}: {UnknownNameError('eval attack', name, regs.eval_attacks.names())}")
    if cfg.eval.select not in cfg.eval.attacks:
        problems.append(f"eval.select: {cfg.eval.select!r} must be one of eval.attacks "
                        f"({', '.join(cfg.eval.attacks)}).")
    if cfg.eval.split == "val" and cfg.data.val_size <= 0:
        problems.append("eval.split: 'val' needs data.val_size > 0 (or set eval.split: test).")
    if cfg.eval.eps is not None and not 0 < cfg.eval.eps <= 1:
        problems.append(f"eval.eps must be in (0, 1]; got {cfg.eval.eps:g}.")
    if cfg.swa.start is not None and cfg.swa.start < 0:
        problems.append(f"swa.start must be a 0-based epoch (or a fraction of the run below 1), or null; "
                        f"got {cfg.swa.start:g}.")
    if cfg.optim.log_every < 1:
        problems.append(f"optim.log_every must be >= 1, got {cfg.optim.log_every}.")
    if not cfg.eval.attacks:
        problems.append("eval.attacks: empty; list at least the attack eval.select names, e.g. [clean, pgd20]. "
                        f"Registered eval attacks: {', '.join(regs.eval_attacks.names())}.")
    _check_ranges(cfg, info, problems)
    if parts_ok and info is not None and not any(p.startswith(("optim.epochs", "data.batch_size")) for p in problems):
        _construct_parts(cfg, regs, info, problems)
    for key, problem in (("device", check_device(cfg.device)),
                         ("sync_bn", check_sync_bn(cfg.device) if cfg.sync_bn else None),
                         ("output_dir", check_output_dir(cfg.output_dir))):
        if problem:
            problems.append(f"{key}: {problem}")
    if cfg.optim.clip_grad_norm is not None and not cfg.optim.clip_grad_norm > 0:
        problems.append(f"optim.clip_grad_norm must be > 0 (or null for no clipping), got {cfg.optim.clip_grad_norm}.")
    bad = [e for e in cfg.save_epochs if not 1 <= e <= cfg.optim.epochs]
    if bad:
        problems.append(f"save_epochs: {bad} outside 1..{cfg.optim.epochs} (1-based epochs of this run).")

    # student and teachers
    source, name = split_spec(cfg.student.key)
    try:
        student_source = regs.student_sources.get(source)
        student_source.check(name, **cfg.student.kwargs)
    except UnknownNameError as exc:
        problems.append(f"student.key: {cfg.student.key!r} needs a source prefix: {exc}")
    except (TypeError, ValueError, FileNotFoundError, ImportError) as exc:
        problems.append(f"student.key: {exc}")
    else:
        if info is not None and not cfg.student.kwargs.get("pretrained"):  # (a download: not a check's work)
            problems += _memo(("student", source), name, cfg.student.kwargs, info,
                              functools.partial(_student_shape_problems, student_source, name, cfg.student.kwargs,
                                                info))
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
            if role in updater_roles:
                problems.append(f"teachers.{role}: teacher_updater {cfg.teacher_updater.key!r} creates the {role!r} "
                                f"teacher itself; remove teachers.{role} (or choose another teacher_updater).")
            elif role not in method.teachers:
                problems.append(f"teachers.{role}: method {method.name!r} does not use a {role!r} teacher "
                                f"(it uses: {', '.join(method.teachers) or 'none'}).")
    for role, teacher in cfg.teachers.items():
        source, name = split_spec(teacher.key)
        try:
            src = regs.teacher_sources.get(source)
        except UnknownNameError as exc:
            problems.append(f"teachers.{role}.key: {teacher.key!r}: {exc}")
            continue
        before = len(problems)
        _check_kwargs(src.load, teacher.kwargs, f"teachers.{role}.kwargs", problems,
                      provided=("name", "dataset", "registries"))
        if info is not None and len(problems) == before:
            found = _memo(("teacher", source), name, teacher.kwargs, info,
                          functools.partial(_teacher_problems, src, name, teacher.kwargs, info, teacher.key, regs))
            problems += [f"teachers.{role}.key: {p}" for p in found]
    return info


_MEMO: dict[tuple[Any, ...], list[str]] = {}


def _memo(kind: tuple[str, str], name: str, kwargs: Mapping[str, Any], info: DatasetInfo,
          check: Any) -> list[str]:
    """The problems ``check()`` finds, remembered for the same spec, dataset and files (a grid validates many
    runs with the same teacher and student: each is read and built on ``meta`` once)."""
    stamps = []
    for value in (name, *kwargs.values()):
        if isinstance(value, str) and os.path.isfile(os.path.expanduser(value)):
            st = os.stat(os.path.expanduser(value))
            stamps.append((value, st.st_mtime_ns, st.st_size, st.st_ino))
    key = (kind, name, repr(sorted(kwargs.items())), repr(info), tuple(stamps))
    if key not in _MEMO:
        if len(_MEMO) > 256:
            _MEMO.clear()
        _MEMO[key] = check()
    return list(_MEMO[key])


def _teacher_problems(src: Any, name: str, kwargs: Mapping[str, Any], info: DatasetInfo, key: str,
                      regs: Any) -> list[str]:
    try:
        regs.call(src.check, name, dataset=info, **kwargs)
    except (TypeError, ValueError, OSError, ImportError, RegistryError) as exc:
        return [str(exc)]
    except Exception as exc:  # the source's check itself failed: it would fail in train too
        return [f"checking {key!r} fails: {type(exc).__name__}: {exc}"]
    return []


def _check_ranges(cfg: Config, info: DatasetInfo | None, problems: list[str]) -> None:
    """Numbers that type-check but cannot work (a negative lr, more validation images than data, ...)."""
    def at_least(key: str, value: Any, low: int, none_ok: bool = False) -> None:
        if (value is None and none_ok) or (isinstance(value, int) and value >= low):
            return
        problems.append(f"{key} must be {'null or ' if none_ok else ''}an integer >= {low}, got {value!r}.")

    o, d, e = cfg.optim, cfg.data, cfg.eval
    for key, seed in (("seed", cfg.seed), ("data.split_seed", d.split_seed)):
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            problems.append(f"{key} must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]} (numpy's seed range), "
                            f"got {seed}.")
    at_least("optim.epochs", o.epochs, 1)
    if not o.lr > 0:
        problems.append(f"optim.lr must be > 0, got {o.lr:g}.")
    if not 0 <= o.momentum < 1:
        problems.append(f"optim.momentum must be in [0, 1), got {o.momentum:g}.")
    if not o.weight_decay >= 0:
        problems.append(f"optim.weight_decay must be >= 0, got {o.weight_decay:g}.")
    if o.nesterov and o.momentum == 0:
        problems.append("optim.nesterov: Nesterov momentum needs optim.momentum > 0.")
    at_least("data.batch_size", d.batch_size, 1)
    at_least("data.eval_batch_size", d.eval_batch_size, 1)
    at_least("data.val_size", d.val_size, 0)
    at_least("data.train_subset", d.train_subset, 1, none_ok=True)
    if info is not None and info.train_size is not None and d.val_size >= info.train_size:
        problems.append(f"data.val_size={d.val_size} leaves no training data: {info.name} has {info.train_size} "
                        f"training images (data.val_size must be below {info.train_size}).")
    at_least("eval.every", e.every, 1)
    at_least("eval.n_examples", e.n_examples, 1, none_ok=True)
    at_least("eval.final_n_examples", e.final_n_examples, 1, none_ok=True)
    at_least("eval.train_records", e.train_records, 0)
    if isinstance(e.concurrency, int) and e.concurrency < 1:  # "auto" or an integer, type-checked already
        problems.append(f"eval.concurrency must be 'auto' or an integer >= 1 (AutoAttack chunks attacked at once, "
                        f"each by its own process), got {e.concurrency}.")


def _student_shape_problems(source: Any, name: str, kwargs: Mapping[str, Any], info: DatasetInfo) -> list[str]:
    """Build the student on the ``meta`` device (no memory) and run it on the data's input shape."""
    try:
        model = on_meta(lambda: source.build(name, input_shape=tuple(info.input_shape),
                                             num_classes=info.num_classes, **kwargs))
    except (TypeError, ValueError) as exc:  # an option the network does not take, or a bad value of one
        return [f"student.kwargs: {exc}"]
    except Exception as exc:  # the plugin fails to build it: it would in train too
        return [f"student.key: building {name!r} fails: {type(exc).__name__}: {exc}"]
    problem = check_input_shape(model, tuple(info.input_shape), info.num_classes) if model is not None else None
    return [f"student.key: {name!r} {problem}"] if problem else []


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
    if cfg is not None and getattr(cfg.optim, "amp", False):  # (optim is None when it has errors)
        cfg = _amp_alias(cfg, problems)
    if cfg is not None and check and not problems:  # names and files are checked once types are right
        validate(cfg, regs, problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    return cfg


def _amp_alias(cfg: Config, problems: list[str]) -> Config:
    """``optim.amp: true`` is the deprecated spelling of ``optim.precision: fp16``."""
    if cfg.optim.precision == "bf16":
        problems.append("optim.amp: true is the deprecated alias of optim.precision: fp16 and conflicts with "
                        "optim.precision: bf16; remove optim.amp.")
        return cfg
    warnings.warn("optim.amp is deprecated: write optim.precision: fp16 (or bf16 on GPUs that have it: "
                  "Ampere and later).", FutureWarning, stacklevel=3)
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, precision="fp16", amp=False))


def load_config(path: str | os.PathLike[str], regs: Any, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Read a YAML config file and resolve it (see :func:`resolve_config`)."""
    p = Path(path)
    raw = read_yaml(p) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(["the top level must be a mapping of keys (method:, student:, ...)."], str(p))
    return resolve_config(raw, regs, overrides=list(overrides), source=str(p))


#: Config keys that may differ between a run and the ``last.pt`` it resumes from (``*``: any key below): the
#: training itself stays the one that was started. ``optim.epochs`` extends (or shortens) the run, with its lr
#: schedule as written (a schedule defined by fractions of the epochs stretches with it); ``eval.*`` changes
#: what is measured and which checkpoint is called best (with a ``self_best`` teacher updater this is the
#: teacher); ``device``, ``channels_last`` and ``deterministic`` change where and how fast it runs (not
#: bit-for-bit); ``output_dir`` and ``data.root`` are where files are; ``data.eval_batch_size`` only batches
#: evaluation. Everything else (seed, data, model, method, threat, optimiser) must match.
RESUME_MAY_DIFFER = ("optim.epochs", "eval.*", "device", "channels_last", "deterministic", "output_dir", "data.root",
                     "data.eval_batch_size")

class ResumeMismatchError(ConfigError):
    """``last.pt`` in the output folder was written by another configuration."""

    def __init__(self, path: str | os.PathLike[str], differences: list[str]) -> None:
        super().__init__(differences, f"resume from {str(path)!r}")
        self.args = (f"{self.args[0]}\n{str(path)!r} was written by another configuration, so resuming it would "
                     "continue that run under this config's name. Start over with --no-resume (the folder's "
                     "checkpoints and metrics are overwritten), or set another output_dir. Keys that may change on "
                     f"resume: {', '.join(RESUME_MAY_DIFFER)}.",)


_UNSET: Any = object()


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any],
                       may_differ: tuple[str, ...] = RESUME_MAY_DIFFER) -> list[str]:
    """``key: old -> new`` for every key whose value differs between two plain config dicts, except
    ``may_differ`` (dotted keys; ``"eval.*"`` covers a whole section)."""
    a, b = _renamed_options(_flat(old)), _flat(new)
    defaults = _flat(plain_data(_field_defaults(Config)))

    def free(key: str) -> bool:
        return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in may_differ)

    def added_at_default(key: str) -> bool:
        """A key the stored config predates (a newer version added it), set to its default: the old behaviour."""
        return key not in a and key in defaults and plain_data(b.get(key)) == defaults[key]

    def show(v: Any) -> str:
        return "(unset)" if v is _UNSET else repr(v)

    return [f"{k}: {show(a.get(k, _UNSET))} -> {show(b.get(k, _UNSET))}" for k in sorted(a.keys() | b.keys())
            if not free(k) and not added_at_default(k) and a.get(k, _UNSET) != b.get(k, _UNSET)]


#: outer-loss options renamed since a stored config was written: (loss key, old name) -> new name
RENAMED_OPTIONS = {("ard", "reduction"): "kl_reduction", ("adaad", "reduction"): "kl_reduction"}


def _renamed_options(flat: dict[str, Any]) -> dict[str, Any]:
    """A stored flat config with its renamed outer-loss options under their new names (the loss's own kwargs,
    or a wrapper's ``base_kwargs`` such as IGDM's), so that a run started before a rename still resumes."""
    prefixes = {"outer_loss.kwargs.": flat.get("outer_loss.key"),
                "outer_loss.kwargs.base_kwargs.": flat.get("outer_loss.kwargs.base")}
    out = {}
    for key, value in flat.items():
        prefix, _, name = key.rpartition(".")
        new = RENAMED_OPTIONS.get((prefixes.get(prefix + "."), name))
        out[f"{prefix}.{new}" if new else key] = value
    return out


def _field_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a config dataclass that has one, nested sections as dicts."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = value
    return out


def plain_data(obj: Any) -> Any:
    """Containers of str/int/float/bool/None only, tuples as lists: a config as it reads back from YAML or a
    checkpoint (safe for ``weights_only`` loading and YAML)."""
    if dataclasses.is_dataclass(obj):
        return plain_data(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    return obj


#: constructor arguments the engine passes itself (``Registry.build``'s ``provided``): not user options
ENGINE_ARGUMENTS = frozenset({"epochs", "num_classes", "registries", "batch_size", "output_dir", "eps"})


def effective_config(cfg: Config, regs: Any) -> dict[str, Any]:
    """The config as plain data, each part's ``kwargs`` completed with its constructor's defaults: every value
    the run uses (what ``train --check`` prints)."""
    out = plain_data(config_to_dict(cfg))
    parts = [(regs.inner_attacks, out["inner_attack"]), (regs.outer_losses, out["outer_loss"]),
             (regs.teacher_updaters, out["teacher_updater"]), (regs.lr_schedules, out["optim"]["schedule"]),
             *((regs.loggers, part) for part in out["logging"])]
    for registry, part in parts:
        try:
            params = inspect.signature(registry.get(part["key"])).parameters.values()
        except (TypeError, ValueError, UnknownNameError):
            continue
        defaults = {p.name: p.default for p in params if p.default is not p.empty
                    and p.name not in part["kwargs"] and p.name not in ENGINE_ARGUMENTS}
        part["kwargs"] = {**part["kwargs"], **{k: _plain_value(v) for k, v in defaults.items()}}
    return out


def _plain_value(value: Any) -> Any:
    """``value`` as YAML can write it safely (an object that is not plain data as its repr)."""
    plain = plain_data(value)
    try:
        yaml.safe_dump(plain)
    except yaml.YAMLError:
        return repr(value)
    return plain


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data (for YAML/JSON and checkpoints)."""
    return dataclasses.asdict(cfg)
